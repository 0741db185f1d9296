"""Planted variants that test the harness itself (loaded with --plugins / load_plugin).

Each computes exact causal attention with SDPA, plus one planted behaviour: k times the work,
an extra buffer, a simulated out-of-memory, an abort, a hang, or a wrong answer.
"""

import os
import time

import torch
import torch.nn.functional as F

import attnbench
import attnbench.attention.decode

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


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; backward scales the gradient (a wrong backward, a right forward)."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


@attnbench.register_variant("fused.planted_wrong_dk", family="fused")
def planted_wrong_dk(q, k, v):
    """SDPA whose forward is right and whose dK is 10% too large."""
    return _sdpa(q, _ScaleGradient.apply(k, 1.1), v)


@attnbench.register_variant("fused.planted_half_rows", family="fused")
def planted_half_rows(q, k, v):
    """SDPA with 7 of every 8 query rows halved (the rows whose values are small next to the
    first rows' in a long sequence: a global tolerance lets them through in bfloat16)."""
    out = _sdpa(q, k, v)
    keep = torch.arange(q.shape[1], device=q.device) % 8 == 0
    return torch.where(keep[None, :, None, None], out, out * 0.5)


NAN_ROW = 101  # not among the gate's sampled rows at N = 256 (the test checks it)


@attnbench.register_variant("fused.planted_nan_row", family="fused")
def planted_nan_row(q, k, v):
    """SDPA with one NaN in a query row the gate does not sample."""
    out = _sdpa(q, k, v).clone()
    if out.shape[1] > NAN_ROW:
        out[:, NAN_ROW, 0, 0] = float("nan")
    return out


class DropOldestDecoder(attnbench.attention.decode.SdpaKVDecoder):
    """A KV-cache decoder that loses the oldest key: every step attends to keys 1..t."""

    name = "kv_cache.planted_drop_oldest"

    def _step(self, q, k, v):
        t = self._write(k, v)
        return attnbench.attention.decode.sdpa_one(q, self.k[:, 1 : t + 1], self.v[:, 1 : t + 1])


@attnbench.register_variant("fused.planted_drop_oldest", family="fused", decoder=DropOldestDecoder)
def planted_drop_oldest(q, k, v):
    """Right in parallel; its decoder drops the oldest key."""
    return _sdpa(q, k, v)
