"""fused: exact softmax attention that never materialises the (N, N) scores.

    O = softmax(Q K^T / sqrt(D) + causal mask) V      (the same math as ``naive``)

- ``fused.sdpa``: PyTorch ``scaled_dot_product_attention`` with its default dispatch;
  ``fused.sdpa_math`` / ``sdpa_flash`` / ``sdpa_efficient`` / ``sdpa_cudnn`` force one backend
  (SDPA's flash backend also has a CPU kernel; efficient and cuDNN are CUDA-only). SDPA says why
  a forced backend cannot take an input only by failing, so those variants *probe* it (in the
  benchmark's worker process).
- ``fused.flex``: FlexAttention, compiled, with a causal BlockMask (no CPU backward in torch 2.13).
- ``fused.flash_attn``: the flash-attn package (FlashAttention-2); ``fused.flash_attn3``: its
  FlashAttention-3 interface (``flash_attn_interface``, built from flash-attention's ``hopper/``).
- ``fused.xformers``: ``xformers.ops.memory_efficient_attention`` with a causal bias.

Each decodes with its own kernel over a KV cache (``attnbench.attention.decode``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnbench.attention.backends import (
    FLASH3_CAPS,
    FLASH_CAPS,
    HALF,
    import_quietly,
    probe,
    sdpa_choice,
    xformers_probe,
)
from attnbench.attention.decode import (
    FlashKVDecoder,
    FlexKVDecoder,
    SdpaKVDecoder,
    XformersKVDecoder,
    sdpa_one,
)
from attnbench.attention.masked import flex, prepare_flex
from attnbench.attention.patterns import Full
from attnbench.case import Capabilities
from attnbench.registry import register_variant


def _sdpa(q, k, v, causal, backend=None):
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (B, H, N, D)
    gqa = k.shape[1] != q.shape[1]
    if backend is None:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
    else:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([getattr(SDPBackend, backend)]):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
    return out.transpose(1, 2)


@register_variant(
    "fused.sdpa",
    family="fused",
    decoder=SdpaKVDecoder,
    supports=Capabilities(noncausal=True, gqa=True),
    kernel=sdpa_choice,
)
def sdpa(q, k, v, *, causal: bool = True):
    """PyTorch scaled_dot_product_attention, default backend dispatch."""
    return _sdpa(q, k, v, causal)


def _backend_probe(backend: str):
    """A forced SDPA backend's reasons: run it on a tiny input of the case's kind."""

    def reasons(case, params):
        return probe(
            ("sdpa", backend, case.causal),
            lambda q, k, v: _sdpa(q, k, v, case.causal, backend),
            case.device,
            case.dtype,
            case.head_dim,
            case.attention_pass == "fwd_bwd",
        )

    return reasons


def _backend_decoder(backend: str, short: str) -> type[SdpaKVDecoder]:
    """SDPA over the KV cache, forced to the same backend as the variant."""

    class BackendKVDecoder(SdpaKVDecoder):
        name = f"kv_cache.sdpa_{short}"

        def kernel(self, q) -> str:
            return short  # forced, not dispatched

        def _step(self, q, k, v):
            from torch.nn.attention import SDPBackend, sdpa_kernel

            t = self._write(k, v)
            with sdpa_kernel([getattr(SDPBackend, backend)]):
                return sdpa_one(q, self.k[:, : t + 1], self.v[:, : t + 1])

    return BackendKVDecoder


@register_variant(
    "fused.sdpa_math",
    family="fused",
    supports=Capabilities(noncausal=True, gqa=True),
    probe=_backend_probe("MATH"),
    decoder=_backend_decoder("MATH", "math"),
)
def sdpa_math(q, k, v, *, causal: bool = True):
    """PyTorch SDPA forced to its math backend (materialises scores in C++)."""
    return _sdpa(q, k, v, causal, "MATH")


@register_variant(
    "fused.sdpa_flash",
    family="fused",
    supports=Capabilities(noncausal=True, gqa=True),
    probe=_backend_probe("FLASH_ATTENTION"),
    decoder=_backend_decoder("FLASH_ATTENTION", "flash"),
)
def sdpa_flash(q, k, v, *, causal: bool = True):
    """PyTorch SDPA forced to its flash backend (CPU and CUDA)."""
    return _sdpa(q, k, v, causal, "FLASH_ATTENTION")


@register_variant(
    "fused.sdpa_efficient",
    family="fused",
    supports=Capabilities(devices=("cuda",), noncausal=True),
    probe=_backend_probe("EFFICIENT_ATTENTION"),
    decoder=_backend_decoder("EFFICIENT_ATTENTION", "efficient"),
)
def sdpa_efficient(q, k, v, *, causal: bool = True):
    """PyTorch SDPA forced to its memory-efficient backend (CUDA)."""
    return _sdpa(q, k, v, causal, "EFFICIENT_ATTENTION")


@register_variant(
    "fused.sdpa_cudnn",
    family="fused",
    supports=Capabilities(
        devices=("cuda",), dtypes=HALF, min_cuda_capability=(8, 0), noncausal=True
    ),
    probe=_backend_probe("CUDNN_ATTENTION"),
    decoder=_backend_decoder("CUDNN_ATTENTION", "cudnn"),
)
def sdpa_cudnn(q, k, v, *, causal: bool = True):
    """PyTorch SDPA forced to its cuDNN backend (CUDA, half precision)."""
    return _sdpa(q, k, v, causal, "CUDNN_ATTENTION")


@register_variant(
    "fused.flex",
    family="fused",
    supports=Capabilities(
        noncausal=True, gqa=True, cpu={"backward": False, "dtypes": (torch.float32, torch.bfloat16)}
    ),
    prepare=prepare_flex,
    decoder=FlexKVDecoder,
)
def flex_causal(q, k, v, *, causal: bool = True):
    """FlexAttention (torch.compile) with a causal BlockMask."""
    return flex(q, k, v, Full(causal))


@register_variant("fused.flash_attn", family="fused", supports=FLASH_CAPS, decoder=FlashKVDecoder)
def flash_attn2(q, k, v, *, causal: bool = True):
    """flash-attn's flash_attn_func (FlashAttention-2)."""
    from flash_attn import flash_attn_func

    return flash_attn_func(q, k, v, causal=causal)


class Flash3KVDecoder(FlashKVDecoder):
    """FlashAttention-3's ``flash_attn_with_kvcache`` (Hopper)."""

    name = "kv_cache.flash_attn3"

    def _step(self, q, k, v):
        from flash_attn_interface import flash_attn_with_kvcache

        self.seqlens.fill_(self.position)
        return flash_attn_with_kvcache(
            q,
            self.k,
            self.v,
            k=k,
            v=v,
            cache_seqlens=self.seqlens,
            causal=True,
            **self.window_kwargs(),
        )


@register_variant(
    "fused.flash_attn3", family="fused", supports=FLASH3_CAPS, decoder=Flash3KVDecoder
)
def flash_attn3(q, k, v, *, causal: bool = True):
    """FlashAttention-3 (flash_attn_interface, Hopper)."""
    from flash_attn_interface import flash_attn_func

    out = flash_attn_func(q, k, v, causal=causal)
    return out[0] if isinstance(out, tuple) else out


def _causal_bias(xops, params):
    return xops.LowerTriangularMask()


@register_variant(
    "fused.xformers",
    family="fused",
    supports=Capabilities(requires=("xformers",)),
    probe=xformers_probe(_causal_bias),
    decoder=XformersKVDecoder,
)
def xformers_causal(q, k, v):
    """xformers memory_efficient_attention with a LowerTriangularMask bias."""
    xops = import_quietly("xformers.ops")
    return xops.memory_efficient_attention(q, k, v, attn_bias=_causal_bias(xops, {}))
