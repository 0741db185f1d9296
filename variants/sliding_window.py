"""sliding_window: causal softmax attention over the ``window`` most recent keys.

    O_i = sum_{j = i-w+1}^{i} softmax_j(q_i . k_j / sqrt(D)) v_j   (query i sees keys i-w+1 .. i)

- ``masked``: SDPA with the dense (N, N) mask: quadratic cost, the strawman.
- ``blocked``: our block-sparse PyTorch (``attnbench.attention.blocksparse``): linear in N.
- ``banded``: ours: each query block's keys as one band, all bands in one fused SDPA call.
- ``flex``: FlexAttention with the window as a BlockMask (no CPU backward in torch 2.13).
- ``flash_attn``: flash-attn with ``window_size=(window - 1, 0)``.
- ``xformers``: ``memory_efficient_attention`` with a
  ``LowerTriangularFromBottomRightLocalAttentionMask``.
- ``triton``: our Triton kernel (forward), run on the CPU only under ``TRITON_INTERPRET=1``.

Decoding keeps a ring buffer of the last ``window`` keys and values (SDPA over it); the flex,
flash-attn and xformers variants decode with their own kernels over a KV cache.
"""

from __future__ import annotations

import os

import torch

from attnbench.attention.backends import FLASH_CAPS, import_quietly, xformers_probe
from attnbench.attention.blocksparse import banded_attention, block_sparse_attention
from attnbench.attention.decode import (
    FlashKVDecoder,
    FlexKVDecoder,
    RingBufferDecoder,
    XformersKVDecoder,
)
from attnbench.attention.masked import (
    flex,
    masked_sdpa,
    prepare_banded,
    prepare_blocked,
    prepare_dense,
    prepare_flex,
)
from attnbench.attention.patterns import SlidingWindow
from attnbench.case import Capabilities
from attnbench.registry import positive, register_variant

SW = "sliding_window"


@register_variant(
    "sliding_window.masked",
    family=SW,
    prepare=prepare_dense,
    supports=Capabilities(gqa=True),
    decoder=RingBufferDecoder,
)
def masked(q, k, v, *, window: int = 256):
    """Dense masked SDPA (quadratic cost): the strawman."""
    return masked_sdpa(q, k, v, SlidingWindow(window))


@register_variant(
    "sliding_window.blocked",
    family=SW,
    validate=positive("block"),
    prepare=prepare_blocked,
    decoder=RingBufferDecoder,
)
def blocked(q, k, v, *, window: int = 256, block: int = 64):
    """Block-sparse PyTorch over the key blocks each query block's window touches (linear in N)."""
    return block_sparse_attention(q, k, v, SlidingWindow(window), block)


@register_variant(
    "sliding_window.banded",
    family=SW,
    validate=positive("block"),
    prepare=prepare_banded,
    decoder=RingBufferDecoder,
)
def banded(q, k, v, *, window: int = 256, block: int = 32):
    """Each query block's keys as one band (a strided view), all bands in one fused SDPA call with
    the band's mask (linear in N; the fused kernel's softmax)."""
    return banded_attention(q, k, v, SlidingWindow(window), block)


@register_variant(
    "sliding_window.flex",
    family=SW,
    supports=Capabilities(
        gqa=True, cpu={"backward": False, "dtypes": (torch.float32, torch.bfloat16)}
    ),
    prepare=prepare_flex,
    decoder=FlexKVDecoder,
)
def flex_window(q, k, v, *, window: int = 256):
    """FlexAttention with a sliding-window BlockMask."""
    return flex(q, k, v, SlidingWindow(window))


@register_variant(
    "sliding_window.flash_attn", family=SW, supports=FLASH_CAPS, decoder=FlashKVDecoder
)
def flash_attn_window(q, k, v, *, window: int = 256):
    """flash-attn flash_attn_func with window_size=(window-1, 0)."""
    from flash_attn import flash_attn_func

    return flash_attn_func(q, k, v, causal=True, window_size=(window - 1, 0))


def _local_bias(xops, params):
    from xformers.ops.fmha.attn_bias import LowerTriangularFromBottomRightLocalAttentionMask

    return LowerTriangularFromBottomRightLocalAttentionMask(params["window"])


class XformersWindowDecoder(XformersKVDecoder):
    """xformers' kernel over the last ``window`` keys of the KV cache."""

    def read_bytes(self) -> int:
        return min(self.position + 1, self.variant.params["window"]) * self._per_token()

    def first_key(self, t: int) -> int:
        return max(0, t + 1 - self.variant.params["window"])


@register_variant(
    "sliding_window.xformers",
    family=SW,
    supports=Capabilities(requires=("xformers",)),
    probe=xformers_probe(_local_bias),
    decoder=XformersWindowDecoder,
)
def xformers_window(q, k, v, *, window: int = 256):
    """xformers memory_efficient_attention with a local (sliding-window) causal bias."""
    xops = import_quietly("xformers.ops")
    return xops.memory_efficient_attention(q, k, v, attn_bias=_local_bias(xops, {"window": window}))


def _triton_reasons(case, params):
    if torch.device(case.device).type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return [
            "Triton runs on the CPU only under its interpreter: set TRITON_INTERPRET=1 "
            "(correctness only, very slow)"
        ]
    return []


@register_variant(
    "sliding_window.triton",
    family=SW,
    supports=Capabilities(
        requires=("triton",),
        backward=False,
        head_dims=(16, 32, 64, 128, 256),
        # the interpreter mishandles bfloat16 loads and stores on the CPU
        cpu={"dtypes": (torch.float32,)},
    ),
    reasons=_triton_reasons,
    decoder=RingBufferDecoder,
)
def triton_window(q, k, v, *, window: int = 256):
    "Our Triton kernel: online softmax over the key blocks of each query block's window (forward)."
    from ._triton_sliding_window import sliding_window_forward

    return sliding_window_forward(q, k, v, window)
