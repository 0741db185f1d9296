"""linear: kernelized linear attention (Katharopoulos et al. 2020).

    O_i = phi(q_i)^T S_i / phi(q_i)^T z_i,
    S_i = sum_{j<=i} phi(k_j) v_j^T,
    z_i = sum_{j<=i} phi(k_j)

Feature maps (``attnbench.feature_maps``): ``elu`` (phi(x) = elu(x) + 1), ``performer``
(FAVOR+ positive orthogonal random features; parameters ``features``, ``seed``) and ``taylor``
(Based: phi(x) = [x', vec(x' x'^T) / sqrt(2), 1] of x' = P x / f^(1/4), P a seeded (f, D)
projection, so phi(q) . phi(k) = 1 + s + s^2 / 2; parameters ``feature_dim`` = f, ``seed``;
1 + f + f^2 features, a state of (1 + f + f^2) x D per head).

Implementations of the same math, each for every feature map:

- ``quadratic``: (phi(Q) phi(K)^T masked) V, materialised: the reference form, O(N^2 F).
- ``cumsum``: prefix sums of phi(k_j) v_j^T over all tokens at once: O(N F D) time and memory.
- ``chunked``: chunkwise parallel: quadratic inside chunks of ``chunk`` tokens, a state carried
  between chunks: O(N C F + N F D) time, the efficient one.
- ``recurrent``: token by token (a Python loop): the RNN view, and what decoding does.
- ``fused`` (CPU): the chunked form as one native C kernel per head (``_FusedChunked``,
  ``attnbench/attention/native/linear_chunked.c``, compiled on first use by the machine's C
  compiler for its own vector width): tiles kept in cache, a register-blocked micro-kernel
  instead of a library call per 64 x 64 tile, the masked products stopped at the diagonal,
  elu + 1 applied as the rows are loaded. A machine without a C compiler reports why.

States are accumulated in float32 (inputs may be bfloat16). Non-causal attention uses the global
sums. FLOPs (``attnbench.bench.flops``): every row counts 4 N F D per head (the recurrent form,
whatever the implementation); the chunked form executes 4 N F D + 2 N C (F + D)
(``chunked_linear_flops``), and its backward is hand-written (``_ChunkedCausal``). It computes in
float32 whatever the inputs, and turns autocast off inside (under CUDA or CPU autocast its matmuls
would otherwise come out in bfloat16 and meet float32 accumulators in place).

``linear.elu.fla`` and ``linear.performer.fla`` run flash-linear-attention's chunked Triton kernel
(``chunk_linear_attn``, CUDA) on the same feature maps; ``linear.taylor.fla`` runs its Based kernel
(``fla.ops.based``: the fused chunked form, feature_dim <= 16) on the projected queries and keys.
Every implementation decodes with the recurrent state (``recurrent``).
"""

from __future__ import annotations

import ctypes
import functools

import torch
import torch.nn.functional as F

from attnbench import tune
from attnbench.attention import native
from attnbench.attention.decode import RecurrentDecoder
from attnbench.attention.feature_maps import Elu, Performer, Taylor
from attnbench.attention.reference import linear_attention
from attnbench.case import Capabilities
from attnbench.registry import positive, register_variant

ELU = Elu()


@functools.lru_cache(maxsize=64)
def _performer(features: int, seed: int) -> Performer:
    """One FAVOR+ map per (features, seed): its projection is drawn and cached once."""
    return Performer(features, seed)


@functools.lru_cache(maxsize=64)
def _taylor(feature_dim: int, seed: int) -> Taylor:
    """One Based Taylor map per (feature_dim, seed): its projection is drawn and cached once."""
    return Taylor(feature_dim, seed)


def _features(q, k, phi):
    """(B, N, H, D) -> phi(q), phi(k) as (B, H, N, F) in float32 (autocast off: FAVOR+'s
    projection and exp stay in float32 under mixed precision)."""
    with torch.autocast(q.device.type, enabled=False):
        q, k = (x.transpose(1, 2).float() for x in (q, k))
        return phi(q, is_query=True), phi(k, is_query=False)


def _noncausal(fq, fk, v):
    state = fk.transpose(-1, -2) @ v  # (B, H, F, D)
    norm = fk.sum(-2)  # (B, H, F)
    return (fq @ state) / (fq @ norm[..., None])


def quadratic(q, k, v, phi, *, causal):
    return linear_attention(q, k, v, phi, causal=causal, dtype=q.dtype)


def cumsum(q, k, v, phi, *, causal):
    fq, fk = _features(q, k, phi)
    v32 = v.transpose(1, 2).float()  # (B, H, N, D)
    if not causal:
        return _noncausal(fq, fk, v32).transpose(1, 2).to(q.dtype)
    states = torch.cumsum(fk[..., :, None] * v32[..., None, :], dim=2)  # (B, H, N, F, D)
    norms = torch.cumsum(fk, dim=2)  # (B, H, N, F)
    num = torch.einsum("bhnf,bhnfd->bhnd", fq, states)
    den = (fq * norms).sum(-1, keepdim=True)
    return (num / den).transpose(1, 2).to(q.dtype)


def _exclusive_prefix_sum(x: torch.Tensor, *, reverse: bool = False) -> torch.Tensor:
    """Over dim 1: out[:, c] = sum of x[:, c'] for c' < c (``reverse``: c' > c); no subtraction,
    so no cancellation. On the CPU ``torch.cumsum`` over a non-last dimension runs at ≈ 2 GB/s
    (33 ms for 32 MiB here), a loop of one add per chunk at memory speed (5 ms)."""
    if x.device.type != "cpu":
        out = torch.zeros_like(x)
        if reverse:
            out[:, :-1] = x[:, 1:].flip(1).cumsum(1).flip(1)
        else:
            out[:, 1:] = x[:, :-1].cumsum(1)
        return out
    out = torch.empty_like(x)
    c = x.shape[1]
    order = range(c - 1, -1, -1) if reverse else range(c)
    prev = None
    for i in order:
        if prev is None:
            out[:, i].zero_()
        else:
            torch.add(out[:, prev], x[:, prev], out=out[:, i])
        prev = i
    return out


class _ChunkedCausal(torch.autograd.Function):
    """Causal linear attention in chunks, with a hand-written backward.

    Inputs phi(Q), phi(K) (B, H, N, F) and V (B, H, N, D), float32, N a multiple of ``chunk``.
    V gets a column of ones, V' = [V, 1], so that one product yields numerator and denominator.
    Per chunk c (batched matmuls of chunk x F x (D+1) tiles; nothing else is quadratic):

        U_c = phi(K_c)^T V'_c,  S_c = sum_{c' < c} U_c',  A_c = tril(phi(Q_c) phi(K_c)^T)
        [num, den] = phi(Q_c) S_c + A_c V'_c,             O_c = num / den

    Autograd through the same expression keeps a dozen full-size intermediates (broadcast
    denominators, tril and cumsum copies) and spends more time in them than in the matmuls; this
    backward is 8 batched matmuls and one reverse prefix sum.
    """

    @staticmethod
    def forward(ctx, fq, fk, v, chunk):
        with torch.autocast(fq.device.type, enabled=False):
            return _ChunkedCausal._forward(ctx, fq, fk, v, chunk)

    @staticmethod
    def _forward(ctx, fq, fk, v, chunk):
        b, h, n, f = fq.shape
        d = v.shape[-1]
        c = n // chunk
        fq, fk = (x.contiguous().view(b * h, c, chunk, f) for x in (fq, fk))
        v1 = v.new_empty(b * h, c, chunk, d + 1)
        v1[..., :d] = v.reshape(b * h, c, chunk, d)
        v1[..., d] = 1.0
        states = _exclusive_prefix_sum(torch.matmul(fk.transpose(-1, -2), v1))  # (BH, c, F, D+1)
        a = torch.matmul(fq, fk.transpose(-1, -2)).tril_()  # (BH, c, C, C)
        num = torch.matmul(fq, states)
        _flat(num).baddbmm_(_flat(a), _flat(v1))
        den = num[..., d:]
        out = num[..., :d] / den
        ctx.save_for_backward(fq, fk, v1, states, a, den, out)
        ctx.shape = (b, h, n, f, d)
        return out.view(b, h, n, d)

    @staticmethod
    def backward(ctx, grad):
        with torch.autocast(grad.device.type, enabled=False):
            return _ChunkedCausal._backward(ctx, grad.float())

    @staticmethod
    def _backward(ctx, grad):
        fq, fk, v1, states, a, den, out = ctx.saved_tensors
        b, h, n, f, d = ctx.shape
        dnum = torch.empty_like(v1)  # d/d[num, den]
        torch.div(grad.reshape(out.shape), den, out=dnum[..., :d])
        torch.sum(dnum[..., :d] * out, -1, out=dnum[..., d]).neg_()
        # [num, den] = fq S + A V'
        da = torch.matmul(dnum, v1.transpose(-1, -2)).tril_()
        dfq = torch.matmul(dnum, states.transpose(-1, -2))
        _flat(dfq).baddbmm_(_flat(da), _flat(fk))  # A = tril(fq fk^T)
        dv1 = torch.matmul(a.transpose(-1, -2), dnum)
        dfk = torch.matmul(da.transpose(-1, -2), fq)
        # S = exclusive prefix sum of U = fk^T V'
        du = _exclusive_prefix_sum(torch.matmul(fq.transpose(-1, -2), dnum), reverse=True)
        _flat(dv1).baddbmm_(_flat(fk), _flat(du))
        _flat(dfk).baddbmm_(_flat(v1), _flat(du).transpose(-1, -2))
        return dfq.view(b, h, n, f), dfk.view(b, h, n, f), dv1[..., :d].reshape(b, h, n, d), None


class _FusedChunked(torch.autograd.Function):
    """The chunked form of ``_ChunkedCausal`` as one native CPU kernel per head
    (``attnbench/attention/native/linear_chunked.c``): the same math and chunking, each head
    swept chunk by chunk in cache through one register-blocked micro-kernel, the masked products
    stopped at the diagonal, the inputs read and the outputs written in their (B, N, H, D)
    layout, and a backward in one reverse sweep from the output, the denominators and the
    per-chunk states S_{<c}, z_{<c} that the forward keeps when a backward will follow.

    ``xq``, ``xk``: (B, H, N, F) views of the raw queries and keys (``feature`` = ``FEAT_ELU``:
    the kernel applies elu + 1 as it loads them) or of their features (``FEAT_NONE``); ``v``:
    (B, H, N, D) in the same dtype (float32, bfloat16 or float16). Returns float32 (B, H, N, D);
    the gradients are float32 (autograd casts them to the inputs' dtype)."""

    @staticmethod
    def forward(ctx, xq, xk, v, chunk, feature):
        xq, xk, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (xq, xk, v))
        b, h, n, f = xq.shape
        d = v.shape[-1]
        out = _bnhd(xq, b, h, n, d)
        den = xq.new_empty(b * h, n, dtype=torch.float32)
        lib = native.library("linear_chunked")
        states = None  # per chunk S_{<c}^T and z_{<c}, kept only when a backward will follow
        if any(ctx.needs_input_grad[:3]):
            lib.linear_chunked_state_floats.restype = ctypes.c_int64
            per_head = lib.linear_chunked_state_floats(*map(ctypes.c_int64, (n, f, d, chunk)))
            states = xq.new_empty(b * h, per_head, dtype=torch.float32)
        views = (xq, xk, v, out)
        native.over_heads(
            lib.linear_chunked_fwd,
            b * h,
            h, n, f, d, chunk, feature, _DTYPES[xq.dtype], _strides(views), *views, den, states,
        )  # fmt: skip
        ctx.save_for_backward(xq, xk, v, out, den, states)
        ctx.args = (chunk, feature)
        return out

    @staticmethod
    def backward(ctx, grad):
        xq, xk, v, out, den, states = ctx.saved_tensors
        chunk, feature = ctx.args
        if grad.stride(-1) != 1:
            grad = grad.contiguous()
        b, h, n, f = xq.shape
        d = v.shape[-1]
        dq, dk, dv = _bnhd(xq, b, h, n, f), _bnhd(xq, b, h, n, f), _bnhd(xq, b, h, n, d)
        views = (xq, xk, v, out, grad, dq, dk, dv)
        native.over_heads(
            native.library("linear_chunked").linear_chunked_bwd,
            b * h,
            h, n, f, d, chunk, feature, _DTYPES[xq.dtype], _DTYPES[grad.dtype], _strides(views),
            xq, xk, v, out, den, states, grad, dq, dk, dv,
        )  # fmt: skip
        return dq, dk, dv, None, None


FEAT_NONE, FEAT_ELU = 0, 1  # the kernel's feature argument
_DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def _bnhd(like, b, h, n, w):
    """An empty float32 (B, H, N, w) view of (B, N, H, w) memory, the layout callers want back."""
    return like.new_empty(b, n, h, w, dtype=torch.float32).transpose(1, 2)


def _strides(views) -> list[int]:
    """Each (B, H, N, width) view's three outer strides, in elements, for the native kernel."""
    return [s for x in views for s in x.stride()[:3]]


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(BH, c, r, s) -> (BH * c, r, s) for the in-place batched matmuls."""
    return x.view(-1, *x.shape[-2:])


CHUNKS = (32, 64, 128)  # the chunk sizes ``chunk="auto"`` tries (attnbench.tune)
DEFAULT_CHUNK = 64


def _tuned_chunk(q, k, v, phi, impl) -> int:
    """The fastest chunk size on this machine for this shape, dtype and pass (forward, or forward
    and backward when the inputs require grad), tuned on the first call."""
    grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    key = (
        type(phi).__name__,
        phi.num_features(q.shape[-1]),
        impl.__name__,
        q.device.type,
        str(q.dtype).removeprefix("torch."),
        "x".join(map(str, q.shape)),
        k.shape[2],
        "fwd_bwd" if grad else "fwd",
    )

    def run(c):
        x = [t.detach().requires_grad_(grad) for t in (q, k, v)]
        with torch.set_grad_enabled(grad):
            out = impl(*x, phi, causal=True, chunk=c)
            if grad:
                torch.autograd.grad(out, x, torch.ones_like(out))

    return tune.choose("chunk", key, CHUNKS, run, default=DEFAULT_CHUNK, device=q.device)


def chunked(q, k, v, phi, *, causal, chunk):
    if causal and chunk == tune.AUTO:
        chunk = _tuned_chunk(q, k, v, phi, chunked)
    fq, fk = _features(q, k, phi)
    v32 = v.transpose(1, 2).float()
    if not causal:
        return _noncausal(fq, fk, v32).transpose(1, 2).to(q.dtype)
    n = fq.shape[2]
    pad = (-n) % chunk
    if pad:  # padded keys have zero features, so they add nothing; padded queries get ones
        fk, v32 = (F.pad(x, (0, 0, 0, pad)) for x in (fk, v32))  # so their 0/0 never poisons grads
        fq = F.pad(fq, (0, 0, 0, pad), value=1.0)
    out = _ChunkedCausal.apply(fq, fk, v32, chunk)[:, :, :n]
    return out.transpose(1, 2).to(q.dtype)


def recurrent(q, k, v, phi, *, causal):
    fq, fk = _features(q, k, phi)
    v32 = v.transpose(1, 2).float()
    if not causal:
        return _noncausal(fq, fk, v32).transpose(1, 2).to(q.dtype)
    bsz, heads, n, f = fq.shape
    state = fq.new_zeros(bsz, heads, f, v32.shape[-1])
    norm = fq.new_zeros(bsz, heads, f)
    outs = []
    for t in range(n):
        state = state + fk[:, :, t, :, None] * v32[:, :, t, None, :]
        norm = norm + fk[:, :, t]
        num = (fq[:, :, t, None, :] @ state).squeeze(-2)
        den = (fq[:, :, t] * norm).sum(-1, keepdim=True)
        outs.append(num / den)
    return torch.stack(outs, dim=2).transpose(1, 2).to(q.dtype)


def fla_chunked(q, k, v, phi):
    """flash-linear-attention's chunked kernel on phi(q), phi(k) (its ``normalize`` divides by
    phi(q) . sum phi(k), so its score scale cancels). (B, N, H, D) in and out."""
    from fla.ops.linear_attn import chunk_linear_attn

    fq, fk = phi(q, is_query=True), phi(k, is_query=False)
    out, _ = chunk_linear_attn(fq.contiguous(), fk.contiguous(), v.contiguous(), normalize=True)
    return out.to(q.dtype)


FLA_BASED_MAX_FEATURE_DIM = 16  # fused_chunk_based asserts q.shape[-1] <= 16


def fla_based(q, k, v, phi: Taylor):
    """flash-linear-attention's fused chunked Based kernel (``fused_chunk_based``) on the
    projected queries and keys P q, P k (B, N, H, f) in the input dtype, with its score scale
    f^(-1/2): its weights are 1 + s + s^2 / 2, exactly phi(q) . phi(k). It divides by the
    normaliser plus 1e-6, at most 2e-6 of an output (a row's weights sum to 1/2 or more), inside
    the float32 floor that Taylor's score conditioning gives. (B, N, H, D) in and out."""
    from fla.ops.based import fused_chunk_based

    qp, kp = phi.project(q), phi.project(k)  # (B, N, H, f)
    out = fused_chunk_based(qp, kp, v, scale=phi.feature_dim**-0.5, use_norm=True)
    return out.to(q.dtype)


def _fla_based_reasons(case, params) -> list[str]:
    if params["feature_dim"] > FLA_BASED_MAX_FEATURE_DIM:
        return [
            f"feature_dim={params['feature_dim']}: flash-linear-attention's fused_chunk_based "
            f"takes feature dims up to {FLA_BASED_MAX_FEATURE_DIM}"
        ]
    return []


RECURRENT_CAPS = Capabilities(max_seq_len=4096)  # a Python loop per token: small N only
FLA_CAPS = Capabilities(
    devices=("cuda",),
    dtypes=(torch.float16, torch.bfloat16, torch.float32),
    requires=("fla",),
    backward=True,
)
LINEAR = dict(family="linear", decoder=RecurrentDecoder)
# the native CPU kernel: compiled on first use by the machine's C compiler (attnbench.native)
FUSED_CAPS = Capabilities(devices=("cpu",))


def _native_reasons(case, params) -> list[str]:
    return list(native.unavailable("linear_chunked"))


FUSED = dict(supports=FUSED_CAPS, reasons=_native_reasons, validate=positive("chunk", auto=True))


def fused(q, k, v, phi, *, causal, chunk):
    """The chunked form through the native CPU kernel (``_FusedChunked``); elu + 1 is applied
    inside it, other feature maps beforehand (``_features``). Non-causal: the global sums."""
    if not causal:
        return chunked(q, k, v, phi, causal=False, chunk=chunk)
    if chunk == tune.AUTO:
        chunk = _tuned_chunk(q, k, v, phi, fused)
    if isinstance(phi, Elu):
        xq, xk, feature = q.transpose(1, 2), k.transpose(1, 2), FEAT_ELU
    else:
        (xq, xk), feature = _features(q, k, phi), FEAT_NONE
    xv = v.transpose(1, 2).to(xq.dtype)
    return _FusedChunked.apply(xq, xk, xv, chunk, feature).transpose(1, 2).to(q.dtype)


# --- elu + 1 ----------------------------------------------------------------------------------


@register_variant("linear.elu.quadratic", **LINEAR)
def elu_quadratic(q, k, v, *, causal: bool = True):
    """Materialised phi(Q) phi(K)^T (the reference form, O(N^2)); phi = elu + 1."""
    return quadratic(q, k, v, ELU, causal=causal)


@register_variant("linear.elu.cumsum", **LINEAR)
def elu_cumsum(q, k, v, *, causal: bool = True):
    """Parallel prefix sums of phi(k) v^T (O(N F D) memory); phi = elu + 1."""
    return cumsum(q, k, v, ELU, causal=causal)


@register_variant("linear.elu.chunked", validate=positive("chunk", auto=True), **LINEAR)
def elu_chunked(q, k, v, *, causal: bool = True, chunk: int | str = "auto"):
    """Chunkwise parallel form: intra-chunk quadratic, inter-chunk state; phi = elu + 1."""
    return chunked(q, k, v, ELU, causal=causal, chunk=chunk)


@register_variant("linear.elu.fused", **FUSED, **LINEAR)
def elu_fused(q, k, v, *, causal: bool = True, chunk: int | str = "auto"):
    """The chunked form as one native CPU kernel per head (C, compiled here); phi = elu + 1."""
    return fused(q, k, v, ELU, causal=causal, chunk=chunk)


@register_variant("linear.elu.recurrent", supports=RECURRENT_CAPS, **LINEAR)
def elu_recurrent(q, k, v, *, causal: bool = True):
    """Token-by-token recurrence (a Python loop); phi = elu + 1."""
    return recurrent(q, k, v, ELU, causal=causal)


@register_variant("linear.elu.fla", supports=FLA_CAPS, **LINEAR)
def elu_fla(q, k, v):
    """flash-linear-attention's chunked Triton kernel (chunk_linear_attn); phi = elu + 1."""
    return fla_chunked(q, k, v, ELU)


# --- FAVOR+ (Performer) -----------------------------------------------------------------------


@register_variant("linear.performer.quadratic", **LINEAR)
def performer_quadratic(q, k, v, *, causal: bool = True, features: int = 128, seed: int = 0):
    """Materialised phi(Q) phi(K)^T (the reference form, O(N^2)); phi = FAVOR+."""
    return quadratic(q, k, v, _performer(features, seed), causal=causal)


@register_variant("linear.performer.cumsum", **LINEAR)
def performer_cumsum(q, k, v, *, causal: bool = True, features: int = 128, seed: int = 0):
    """Parallel prefix sums of phi(k) v^T (O(N F D) memory); phi = FAVOR+."""
    return cumsum(q, k, v, _performer(features, seed), causal=causal)


@register_variant("linear.performer.chunked", validate=positive("chunk", auto=True), **LINEAR)
def performer_chunked(
    q, k, v, *, causal: bool = True, features: int = 128, seed: int = 0, chunk: int | str = "auto"
):
    """Chunkwise parallel form: intra-chunk quadratic, inter-chunk state; phi = FAVOR+."""
    return chunked(q, k, v, _performer(features, seed), causal=causal, chunk=chunk)


@register_variant("linear.performer.fused", **FUSED, **LINEAR)
def performer_fused(
    q, k, v, *, causal: bool = True, features: int = 128, seed: int = 0, chunk: int | str = "auto"
):
    """The chunked form as one native CPU kernel per head (C, compiled here); phi = FAVOR+."""
    return fused(q, k, v, _performer(features, seed), causal=causal, chunk=chunk)


@register_variant("linear.performer.recurrent", supports=RECURRENT_CAPS, **LINEAR)
def performer_recurrent(q, k, v, *, causal: bool = True, features: int = 128, seed: int = 0):
    """Token-by-token recurrence (a Python loop); phi = FAVOR+."""
    return recurrent(q, k, v, _performer(features, seed), causal=causal)


@register_variant("linear.performer.fla", supports=FLA_CAPS, **LINEAR)
def performer_fla(q, k, v, *, features: int = 128, seed: int = 0):
    """flash-linear-attention's chunked Triton kernel (chunk_linear_attn); phi = FAVOR+."""
    return fla_chunked(q, k, v, _performer(features, seed))


# --- Taylor (Based) ---------------------------------------------------------------------------


@register_variant("linear.taylor.quadratic", **LINEAR)
def taylor_quadratic(q, k, v, *, causal: bool = True, feature_dim: int = 16, seed: int = 0):
    """Materialised phi(Q) phi(K)^T (the reference form, O(N^2)); phi = Based's Taylor."""
    return quadratic(q, k, v, _taylor(feature_dim, seed), causal=causal)


@register_variant("linear.taylor.cumsum", **LINEAR)
def taylor_cumsum(q, k, v, *, causal: bool = True, feature_dim: int = 16, seed: int = 0):
    """Parallel prefix sums of phi(k) v^T (O(N F D) memory); phi = Based's Taylor."""
    return cumsum(q, k, v, _taylor(feature_dim, seed), causal=causal)


@register_variant("linear.taylor.chunked", validate=positive("chunk", auto=True), **LINEAR)
def taylor_chunked(
    q, k, v, *, causal: bool = True, feature_dim: int = 16, seed: int = 0, chunk: int | str = "auto"
):
    """Chunkwise parallel form: intra-chunk quadratic, inter-chunk state; phi = Based's Taylor."""
    return chunked(q, k, v, _taylor(feature_dim, seed), causal=causal, chunk=chunk)


@register_variant("linear.taylor.fused", **FUSED, **LINEAR)
def taylor_fused(
    q, k, v, *, causal: bool = True, feature_dim: int = 16, seed: int = 0, chunk: int | str = "auto"
):
    """The chunked form as one native CPU kernel per head (C, compiled here); phi = Taylor."""
    return fused(q, k, v, _taylor(feature_dim, seed), causal=causal, chunk=chunk)


@register_variant("linear.taylor.recurrent", supports=RECURRENT_CAPS, **LINEAR)
def taylor_recurrent(q, k, v, *, causal: bool = True, feature_dim: int = 16, seed: int = 0):
    """Token-by-token recurrence (a Python loop); phi = Based's Taylor."""
    return recurrent(q, k, v, _taylor(feature_dim, seed), causal=causal)


@register_variant("linear.taylor.fla", supports=FLA_CAPS, reasons=_fla_based_reasons, **LINEAR)
def taylor_fla(q, k, v, *, feature_dim: int = 16, seed: int = 0):
    """flash-linear-attention's Based Triton kernel (fused_chunk_based); phi = Based's Taylor."""
    return fla_based(q, k, v, _taylor(feature_dim, seed))
