"""fused: exact softmax attention that never materialises the (N, N) scores.

    O = softmax(Q K^T / sqrt(D) + causal mask) V      (the same math as ``naive``)

- ``fused.sdpa``: PyTorch ``scaled_dot_product_attention`` with its default dispatch;
  ``fused.sdpa_math`` / ``sdpa_flash`` / ``sdpa_efficient`` / ``sdpa_cudnn`` force one backend
  (SDPA's flash backend also has a CPU kernel; efficient and cuDNN are CUDA-only).
- ``fused.flex``: FlexAttention, compiled, with a causal BlockMask (no CPU backward in torch 2.13).
- ``fused.flash_attn``: the flash-attn package (FlashAttention-2); ``fused.flash_attn3``: its
  FlashAttention-3 interface (``flash_attn_interface``) on Hopper.
- ``fused.xformers``: ``xformers.ops.memory_efficient_attention`` with a causal bias.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnbench.attention.masked import flex, import_quietly, prepare_flex, probe_reasons
from attnbench.attention.patterns import Full
from attnbench.registry import Capabilities, register_variant

HALF = (torch.float16, torch.bfloat16)


def _sdpa(q, k, v, causal, backends=None):
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (B, H, N, D)
    if backends is None:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    else:
        from torch.nn.attention import sdpa_kernel

        with sdpa_kernel(backends):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return out.transpose(1, 2)


@register_variant("fused.sdpa", family="fused", supports=Capabilities(noncausal=True))
def sdpa(q, k, v, *, causal: bool = True):
    """PyTorch scaled_dot_product_attention, default backend dispatch."""
    return _sdpa(q, k, v, causal)


def _register_sdpa_backend(backend: str, doc: str, supports: Capabilities):
    def reasons(case, params):
        # SDPA reports why a forced backend cannot take an input only by failing: ask it.
        from torch.nn.attention import SDPBackend

        chosen = [getattr(SDPBackend, backend)]
        return probe_reasons(
            lambda q, k, v: _sdpa(q, k, v, case.causal, chosen),
            ("sdpa", backend, case.causal), case.device, case.dtype, case.head_dim,
            case.pass_ == "fwd_bwd",
        )

    def fn(q, k, v, *, causal: bool = True):
        from torch.nn.attention import SDPBackend

        return _sdpa(q, k, v, causal, [getattr(SDPBackend, backend)])

    fn.__doc__ = doc
    name = "fused.sdpa_" + backend.split("_")[0].lower()
    register_variant(name, family="fused", supports=supports, reasons=reasons)(fn)


_register_sdpa_backend("MATH", "PyTorch SDPA forced to its math backend (materialises scores in C++).",
                       Capabilities(noncausal=True))
_register_sdpa_backend("FLASH_ATTENTION", "PyTorch SDPA forced to its flash backend (CPU and CUDA).",
                       Capabilities(noncausal=True))
_register_sdpa_backend("EFFICIENT_ATTENTION", "PyTorch SDPA forced to its memory-efficient backend.",
                       Capabilities(devices=("cuda",), noncausal=True))
_register_sdpa_backend("CUDNN_ATTENTION", "PyTorch SDPA forced to its cuDNN backend.",
                       Capabilities(devices=("cuda",), dtypes=HALF, min_cuda_capability=(8, 0),
                                    noncausal=True))


@register_variant(
    "fused.flex",
    family="fused",
    supports=Capabilities(noncausal=True, cpu={"backward": False, "dtypes": (torch.float32, torch.bfloat16)}),
    prepare=prepare_flex,
)
def flex_causal(q, k, v, *, causal: bool = True):
    """FlexAttention (torch.compile) with a causal BlockMask."""
    return flex(q, k, v, Full(causal))


FLASH_CAPS = Capabilities(devices=("cuda",), dtypes=HALF, max_head_dim=256, noncausal=True,
                          requires=("flash_attn",), min_cuda_capability=(8, 0))


@register_variant("fused.flash_attn", family="fused", supports=FLASH_CAPS)
def flash_attn2(q, k, v, *, causal: bool = True):
    """flash-attn's flash_attn_func (FlashAttention-2)."""
    from flash_attn import flash_attn_func

    return flash_attn_func(q, k, v, causal=causal)


@register_variant(
    "fused.flash_attn3",
    family="fused",
    supports=Capabilities(devices=("cuda",), dtypes=HALF, max_head_dim=256, noncausal=True,
                          requires=("flash_attn_interface",), min_cuda_capability=(9, 0)),
)
def flash_attn3(q, k, v, *, causal: bool = True):
    """FlashAttention-3 (flash_attn_interface, Hopper)."""
    from flash_attn_interface import flash_attn_func

    out = flash_attn_func(q, k, v, causal=causal)
    return out[0] if isinstance(out, tuple) else out


def xformers_reasons(bias_factory):
    """Reasons from xformers' own dispatcher for the case's device, dtype and head dim."""

    def reasons(case, params):
        def run(q, k, v):
            xops = import_quietly("xformers.ops")
            return xops.memory_efficient_attention(q, k, v, attn_bias=bias_factory(xops, params))

        key = ("xformers", bias_factory.__name__, tuple(sorted(params.items())))
        found = probe_reasons(run, key, case.device, case.dtype, case.head_dim,
                              case.pass_ == "fwd_bwd")
        return [f"xformers: {r}" for r in found]

    return reasons


def _causal_bias(xops, params):
    return xops.LowerTriangularMask()


@register_variant(
    "fused.xformers",
    family="fused",
    supports=Capabilities(requires=("xformers",)),
    reasons=xformers_reasons(_causal_bias),
)
def xformers_causal(q, k, v):
    """xformers memory_efficient_attention with a LowerTriangularMask bias."""
    xops = import_quietly("xformers.ops")
    return xops.memory_efficient_attention(q, k, v, attn_bias=_causal_bias(xops, {}))
