"""Planted variants that test the harness itself (loaded with --plugins / load_plugin).

Each computes exact causal attention with SDPA, plus one planted behaviour: k times the work,
an extra buffer, a simulated out-of-memory, an abort, a hang, or a wrong answer.
"""

import os
import time

import torch
import torch.nn.functional as F

import attnbench

BUFFER_MIB = 64


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True).transpose(1, 2)


@attnbench.register_variant("fused.planted_work", family="fused")
def planted_work(q, k, v, *, times: int = 1):
    """SDPA computed `times` times (the last result returned)."""
    for _ in range(times):
        out = _sdpa(q, k, v)
    return out


@attnbench.register_variant("fused.planted_buffer", family="fused")
def planted_buffer(q, k, v, *, mib: int = BUFFER_MIB):
    """SDPA while holding an extra buffer of `mib` MiB."""
    extra = torch.ones(mib * 2**20 // 4, dtype=torch.float32)
    out = _sdpa(q, k, v)
    return out + 0 * extra[0]


@attnbench.register_variant("fused.planted_oom", family="fused")
def planted_oom(q, k, v):
    """Raises a (simulated) out-of-memory error."""
    raise torch.OutOfMemoryError("simulated: tried to allocate 1 TiB")


@attnbench.register_variant("fused.planted_abort", family="fused")
def planted_abort(q, k, v):
    """Kills its process (SIGABRT), as a crashing kernel would."""
    os.abort()


@attnbench.register_variant("fused.planted_hang", family="fused")
def planted_hang(q, k, v):
    """Never returns."""
    time.sleep(3600)


@attnbench.register_variant("fused.planted_wrong", family="fused")
def planted_wrong(q, k, v):
    """Fast and wrong: SDPA plus a small bias."""
    return _sdpa(q, k, v) + 1e-2


@attnbench.register_variant("fused.planted_nan", family="fused")
def planted_nan(q, k, v):
    """SDPA that turns into NaN: a model trained with it diverges."""
    return _sdpa(q, k, v) * float("nan")
