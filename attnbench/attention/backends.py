"""Optional kernel packages (flash-attn, FlashAttention-3, xformers, Triton,
flash-linear-attention): whether they import, how to install them, and what their own dispatchers
say about a case.

- ``missing_reason(module)``: None when the package imports, else the reason (not installed, with
  the command that installs it, or the import error of a broken install: an ABI mismatch with
  torch, a CUDA-only build).
- ``probe(key, run, ...)``: runs a package's kernel on a tiny input and turns the errors it raises
  (xformers' ``NotImplementedError`` lists every kernel and why it cannot run) into reasons. It
  runs kernels, so the harness calls it in the measuring worker only, never in the launcher; the
  result is cached per key (package, kernel, device, dtype, head dim, backward).
- ``FLASH_CAPS``, ``flash_attn3_caps`` and ``xformers_probe``: the declarations shared by every
  family that calls these packages.

Nothing here imports an optional package at import time or touches a GPU.
"""

from __future__ import annotations

import functools
import importlib
import logging
import re
import warnings
from collections.abc import Callable

import torch

from attnbench.case import Capabilities

HALF = (torch.float16, torch.bfloat16)

# How to get each optional package (module name -> the install hint in its reason).
INSTALL = {
    "triton": "pip install 'attnbench[triton]'",
    "xformers": "pip install 'attnbench[xformers]' (its attention kernels need CUDA)",
    "flash_attn": "pip install flash-attn --no-build-isolation (an sdist: needs nvcc and a CUDA "
    "torch already installed)",
    "flash_attn_interface": "build flash-attention's hopper/ folder (FlashAttention-3, package "
    "flash_attn_3: cd hopper && python setup.py install); not on PyPI",
    "fla": "pip install 'attnbench[fla]' (flash-linear-attention's Triton kernels, CUDA)",
}


@functools.cache
def missing_reason(module: str) -> str | None:
    """None when ``module`` imports; otherwise why not. The package is really imported (once):
    a package that is present but broken (built for another torch, a missing shared library)
    is a reason too, never an error later in the middle of a sweep."""
    if importlib.util.find_spec(module.split(".")[0]) is None:
        how = INSTALL.get(module)
        return f"needs the optional package '{module}', which is not installed" + (
            f" ({how})" if how else ""
        )
    try:
        import_quietly(module)
    except Exception as e:  # any import failure of an optional package is that package's reason
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        return (
            f"the optional package '{module}' is installed but does not import: "
            f"{type(e).__name__}: {first}"
        )
    return None


def import_quietly(module: str):
    """Import an optional package, silencing import-time warnings (xformers warns on a CPU)."""
    logger = logging.getLogger(module.split(".")[0])
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(module)
    finally:
        logger.setLevel(level)


_PROBES: dict[tuple, tuple[str, ...]] = {}


def probe(
    key: tuple,
    run: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    device: str,
    dtype: torch.dtype,
    head_dim: int,
    backward: bool,
) -> list[str]:
    """Run ``run(q, k, v)`` on a tiny (1, 16, 1, head_dim) input on ``device``: [] if it runs,
    else the reasons. Cached on ``key`` + (device, dtype, head_dim, backward): describe in ``key``
    everything that changes the answer (package, kernel, its parameters)."""
    full = (*key, device, dtype, head_dim, backward)
    if full not in _PROBES:
        _PROBES[full] = _run_probe(run, device, dtype, head_dim, backward)
    return list(_PROBES[full])


def _run_probe(run, device, dtype, head_dim, backward) -> tuple[str, ...]:
    try:
        q = torch.randn(1, 16, 1, head_dim, device=device).to(dtype).requires_grad_(backward)
        out = run(q, q, q)
        if backward:
            out.sum().backward()
    except NotImplementedError as e:
        return tuple(summarize_not_implemented(str(e)))
    except (RuntimeError, ValueError, TypeError, ImportError, AssertionError) as e:
        text = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        return (f"{type(e).__name__}: {text}",)
    return ()


def summarize_not_implemented(message: str) -> list[str]:
    """xformers' dispatch error -> one reason per kernel: '`ckF`: device=cpu (...); ...'."""
    reasons, current, why = [], None, []
    for line in message.splitlines():
        m = re.match(r"\s*`([^`]+)` is not supported because:", line)
        if m:
            if current:
                reasons.append(f"{current}: " + "; ".join(why))
            current, why = m.group(1), []
        elif current and line.strip():
            why.append(line.strip())
    if current:
        reasons.append(f"{current}: " + "; ".join(why))
    return reasons or [message.strip().splitlines()[0][:300]]


# flash-attn 2: CUDA, half precision, head dims up to 256, Ampere and newer; grouped-query native.
FLASH_CAPS = Capabilities(
    devices=("cuda",),
    dtypes=HALF,
    max_head_dim=256,
    noncausal=True,
    gqa=True,
    requires=("flash_attn",),
    min_cuda_capability=(8, 0),
)
# FlashAttention-3: Hopper (compute capability 9.0).
FLASH3_CAPS = Capabilities(
    devices=("cuda",),
    dtypes=HALF,
    max_head_dim=256,
    noncausal=True,
    gqa=True,
    requires=("flash_attn_interface",),
    min_cuda_capability=(9, 0),
)


def xformers_probe(bias_factory: Callable[[object, dict], object]):
    """A variant's ``probe``: the reasons of xformers' own dispatcher for the case's device, dtype,
    head dim and pass, with the attention bias ``bias_factory(xops, params)``."""

    def reasons(case, params):
        def run(q, k, v):
            xops = import_quietly("xformers.ops")
            return xops.memory_efficient_attention(q, k, v, attn_bias=bias_factory(xops, params))

        key = ("xformers", bias_factory.__name__, tuple(sorted(params.items())))
        found = probe(
            key, run, case.device, case.dtype, case.head_dim, case.attention_pass == "fwd_bwd"
        )
        return [f"xformers: {r}" for r in found]

    return reasons


def sdpa_choice(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    mask: torch.Tensor | None = None,
) -> str:
    """The backend that ``F.scaled_dot_product_attention``'s default dispatch picks for (B, N, H,
    D) inputs under the backends enabled now: ``math``, ``flash``, ``efficient``, ``cudnn`` (on
    sm_90 with CUDA 13, PyTorch prefers cuDNN), from PyTorch's own ``_fused_sdp_choice``."""
    from torch.nn.attention import SDPBackend

    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    choice = torch._fused_sdp_choice(
        qt, kt, vt, attn_mask=mask, is_causal=causal, enable_gqa=k.shape[2] != q.shape[2]
    )
    names = {
        int(SDPBackend.MATH): "math",
        int(SDPBackend.FLASH_ATTENTION): "flash",
        int(SDPBackend.EFFICIENT_ATTENTION): "efficient",
        int(SDPBackend.CUDNN_ATTENTION): "cudnn",
    }
    return names.get(int(choice), f"backend {int(choice)}")
