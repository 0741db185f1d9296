"""Planted variants that test the harness itself (loaded with --plugins / load_plugin).

Each computes exact causal attention with SDPA (the last, Taylor linear attention), plus one
planted behaviour: k times the work, an extra buffer, a simulated out-of-memory, an abort, a hang,
or a wrong answer.
"""

import os
import time

import torch
import torch.nn.functional as F

import attnbench
import attnbench.attention.decode
from attnbench.attention.feature_maps import Taylor
from attnbench.variants.linear import chunked

BUFFER_MIB = 64


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
    ).transpose(1, 2)


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
    """SDPA that turns into NaN while training (gradients on): a model trained with it
    diverges, though the gate before training (no gradients) passes it."""
    return _sdpa(q, k, v) * (float("nan") if torch.is_grad_enabled() else 1.0)


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


# --- what the gate must reject (tests/bench/test_gate.py): each wrong in one way only ---------

_MEMO = {}


@attnbench.register_variant("fused.planted_memoised", family="fused")
def planted_memoised(q, k, v):
    """Right on its first call, then returns that result for any input of the same shape."""
    key = (tuple(q.shape), q.dtype)
    if key not in _MEMO:
        _MEMO[key] = _sdpa(q, k, v)
    return _MEMO[key]


_CALLS = {"n": 0}


@attnbench.register_variant("fused.planted_right_once", family="fused")
def planted_right_once(q, k, v):
    """Right on its first three calls (one per input set the gate checks first), zeros after."""
    _CALLS["n"] += 1
    out = _sdpa(q, k, v)
    return out if _CALLS["n"] <= 3 else torch.zeros_like(out)


@attnbench.register_variant("fused.planted_batch0", family="fused")
def planted_batch0(q, k, v):
    """Computes batch element 0 and returns it for every element (half the work at B = 2)."""
    return _sdpa(q[:1], k[:1], v[:1]).expand(q.shape[0], -1, -1, -1)


@attnbench.register_variant("fused.planted_bad_tile", family="fused")
def planted_bad_tile(q, k, v):
    """Wrong (scaled by 1.5) on every query row of the 64-row tiles 1, 3, 5, ..."""
    out = _sdpa(q, k, v)
    bad = (torch.arange(q.shape[1], device=q.device) // 64) % 2 == 1
    return torch.where(bad[None, :, None, None], out * 1.5, out)


class _ZeroLateKeys(torch.autograd.Function):
    """Identity forward; backward zeroes the gradient of every key after the first 64."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        grad[:, 64:] = 0
        return grad


@attnbench.register_variant("fused.planted_late_dk", family="fused")
def planted_late_dk(q, k, v):
    """Right forward; dK zeroed for every key beyond the first 64."""
    return _sdpa(q, _ZeroLateKeys.apply(k), v)


@attnbench.register_variant("fused.planted_scaled", family="fused")
def planted_scaled(q, k, v, *, factor: float = 1.04):
    """Every output `factor` times too large (4 %: inside an 8-epsilon bfloat16 floor)."""
    return _sdpa(q, k, v) * factor


@attnbench.register_variant("fused.planted_fp8_values", family="fused")
def planted_fp8_values(q, k, v):
    """Values rounded to float8 (e4m3) before attention: a quantised KV cache posing as exact."""
    return _sdpa(q, k, v.to(torch.float8_e4m3fn).to(v.dtype))


@attnbench.register_variant("fused.planted_bf16_inside", family="fused")
def planted_bf16_inside(q, k, v):
    """Computes in bfloat16 whatever the input dtype (a float16 case done in bfloat16)."""
    return _sdpa(*(x.to(torch.bfloat16) for x in (q, k, v))).to(q.dtype)


@attnbench.register_variant("fused.planted_no_max", family="fused")
def planted_no_max(q, k, v):
    """Softmax without max subtraction, in the input dtype: overflows once scores reach ~88
    (float32, bfloat16) or ~11 (float16)."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
    n = q.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    e = torch.exp(scores).masked_fill(~causal, 0)
    return torch.einsum("bhqk,bkhd->bqhd", e / e.sum(-1, keepdim=True), v)


@attnbench.register_variant("fused.planted_leaky", family="fused")
def planted_leaky(q, k, v):
    """Registered as causal, attends to every key (it sees the future)."""
    return F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    ).transpose(1, 2)


class RightOnceDecoder(attnbench.attention.decode.SdpaKVDecoder):
    """A KV-cache decoder right on its first step, then attending to the first key only."""

    name = "kv_cache.planted_right_once"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps = 0

    def _step(self, q, k, v):
        self.steps += 1
        t = self._write(k, v)
        last = t + 1 if self.steps == 1 else 1
        return attnbench.attention.decode.sdpa_one(q, self.k[:, :last], self.v[:, :last])


@attnbench.register_variant("fused.planted_decoder_once", family="fused", decoder=RightOnceDecoder)
def planted_decoder_once(q, k, v):
    """Right in parallel; its decoder is right on its first step only."""
    return _sdpa(q, k, v)


_LAYER = {"calls": 0}


@attnbench.register_variant("fused.planted_layer2_dk", family="fused")
def planted_layer2_dk(q, k, v):
    """Right forward; while training, every second call (layer 2 of a 2-layer model) has dK = 0."""
    if torch.is_grad_enabled() and q.requires_grad:
        _LAYER["calls"] += 1
        if _LAYER["calls"] % 2 == 0:
            return _sdpa(q, _ZeroLateKeys.apply(k) * 0 + k.detach(), v)
    return _sdpa(q, k, v)


@attnbench.register_variant("fused.planted_ignores_qk", family="fused")
def planted_ignores_qk(q, k, v):
    """Uniform causal attention (the mean of the values so far), whatever q and k say: what
    near-uniform attention at initial weights cannot tell from softmax."""
    n = q.shape[1]
    counts = torch.arange(1, n + 1, device=v.device, dtype=v.dtype).view(1, n, 1, 1)
    mean = v.cumsum(1) / counts
    return mean.repeat_interleave(q.shape[2] // v.shape[2], dim=2)


@attnbench.register_variant("fused.planted_untouched", family="fused")
def planted_untouched(q, k, v, *, mib: int = BUFFER_MIB):
    """SDPA while holding an allocated but never written buffer of `mib` MiB."""
    extra = torch.empty(mib * 2**20 // 4, dtype=torch.float32)
    out = _sdpa(q, k, v)
    return out + 0 * extra[:1].sum().nan_to_num()


_SETUP = {}


def _prepare_big_mask(variant, case):
    _SETUP[case.seq_len] = torch.ones(BUFFER_MIB * 2**20, dtype=torch.bool)  # 64 MiB, touched


@attnbench.register_variant("fused.planted_setup", family="fused", prepare=_prepare_big_mask)
def planted_setup(q, k, v):
    """SDPA that builds 64 MiB of per-shape state in prepare (a dense mask)."""
    return _sdpa(q, k, v)


class _OffTaylor(Taylor):
    """Based's Taylor features with the second-order block 2 % too large."""

    def __call__(self, x, *, is_query, stabilize=True):
        out = super().__call__(x, is_query=is_query)
        f = self.feature_dim
        return torch.cat([out[..., :f], out[..., f:-1] * 1.02, out[..., -1:]], dim=-1)


@attnbench.register_variant("linear.taylor.planted_off", family="linear")
def planted_taylor_off(q, k, v, *, feature_dim: int = 16, seed: int = 0, chunk: int = 16):
    """Taylor linear attention (chunked) whose second-order features are 2 % off."""
    return chunked(q, k, v, _OffTaylor(feature_dim, seed), causal=True, chunk=chunk)
