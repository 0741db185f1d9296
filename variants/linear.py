"""linear: kernelized linear attention (Katharopoulos et al. 2020).

    O_i = phi(q_i)^T S_i / phi(q_i)^T z_i,   S_i = sum_{j<=i} phi(k_j) v_j^T,   z_i = sum_{j<=i} phi(k_j)

Feature maps (``attnbench.feature_maps``): ``elu`` (phi(x) = elu(x) + 1) and ``performer``
(FAVOR+ positive orthogonal random features; parameters ``features``, ``seed``).

Implementations of the same math, each for both feature maps:

- ``quadratic``: (phi(Q) phi(K)^T masked) V, materialised: the reference form, O(N^2 F).
- ``cumsum``: prefix sums of phi(k_j) v_j^T over all tokens at once: O(N F D) time and memory.
- ``chunked``: chunkwise parallel: quadratic inside chunks of ``chunk`` tokens, a state carried
  between chunks: O(N C F + N F D) time, the efficient one.
- ``recurrent``: token by token (a Python loop): the RNN view, and what decoding does.

States are accumulated in float32 (inputs may be bfloat16). Non-causal attention uses the global
sums. FLOPs (``attnbench.flops``): 4 N F D for the causal chunked form plus 2 N C (F + D) inside chunks.
"""

from __future__ import annotations

import functools
import inspect

import torch
import torch.nn.functional as F

from attnbench.reference import MATHS, linear_attention
from attnbench.registry import Capabilities, positive, register_variant

FEATURE_PARAMS = {"elu": {}, "performer": {"features": 128, "seed": 0}}


@functools.lru_cache(maxsize=64)
def _feature_map(math: str, params: tuple):
    return MATHS[math].build(dict(params)).feature_map


def _features(q, k, phi):
    """(B, N, H, D) -> phi(q), phi(k) as (B, H, N, F) in float32."""
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


def _exclusive_cumsum(x: torch.Tensor) -> torch.Tensor:
    """Prefix sums over dim 2 that exclude the current element (no subtraction, no cancellation)."""
    out = torch.zeros_like(x)
    out[:, :, 1:] = torch.cumsum(x[:, :, :-1], dim=2)
    return out


def chunked(q, k, v, phi, *, causal, chunk):
    fq, fk = _features(q, k, phi)
    v32 = v.transpose(1, 2).float()
    if not causal:
        return _noncausal(fq, fk, v32).transpose(1, 2).to(q.dtype)
    bsz, heads, n, f = fq.shape
    pad = (-n) % chunk
    if pad:  # padded keys have zero features, so they add nothing; padded queries get ones
        fk, v32 = (F.pad(x, (0, 0, 0, pad)) for x in (fk, v32))  # so their 0/0 never poisons grads
        fq = F.pad(fq, (0, 0, 0, pad), value=1.0)
    c = (n + pad) // chunk
    fq, fk = (x.view(bsz, heads, c, chunk, f) for x in (fq, fk))
    vc = v32.view(bsz, heads, c, chunk, v32.shape[-1])
    # state before each chunk: exclusive prefix sum of the chunks' phi(K)^T V
    states = _exclusive_cumsum(fk.transpose(-1, -2) @ vc)  # (B, H, c, F, D)
    norms = _exclusive_cumsum(fk.sum(-2))  # (B, H, c, F)
    scores = (fq @ fk.transpose(-1, -2)).tril()  # (B, H, c, C, C)
    num = fq @ states + scores @ vc
    den = (fq @ norms[..., None]).squeeze(-1) + scores.sum(-1)
    out = (num / den[..., None]).reshape(bsz, heads, c * chunk, -1)[:, :, :n]
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


IMPLS = {
    "quadratic": (quadratic, {}, "Materialised phi(Q) phi(K)^T (the reference form, O(N^2))",
                  Capabilities()),
    "cumsum": (cumsum, {}, "Parallel prefix sums of phi(k) v^T (O(N F D) memory)", Capabilities()),
    "chunked": (chunked, {"chunk": 64}, "Chunkwise parallel form: intra-chunk quadratic, "
                "inter-chunk state", Capabilities()),
    "recurrent": (recurrent, {}, "Token-by-token recurrence (a Python loop)",
                  Capabilities(max_seq_len=4096)),
}


def _register(math: str, impl: str) -> None:
    run, impl_params, doc, caps = IMPLS[impl]
    feature_params = FEATURE_PARAMS[math]
    params = {**feature_params, **impl_params}

    def fn(q, k, v, *, causal=True, **kwargs):
        phi = _feature_map(math, tuple((n, kwargs[n]) for n in feature_params))
        return run(q, k, v, phi, causal=causal, **{n: kwargs[n] for n in impl_params})

    P = inspect.Parameter
    fn.__signature__ = inspect.Signature(
        [P(x, P.POSITIONAL_OR_KEYWORD) for x in "qkv"]
        + [P("causal", P.KEYWORD_ONLY, default=True)]
        + [P(n, P.KEYWORD_ONLY, default=d) for n, d in params.items()]
    )
    fn.__doc__ = f"{doc}; {MATHS[math].description}."
    fn.__name__ = f"{math}_{impl}"
    register_variant(f"linear.{math}.{impl}", family="linear", supports=caps,
                     validate=positive(*impl_params) if impl_params else None)(fn)


for _math in FEATURE_PARAMS:
    for _impl in IMPLS:
        _register(_math, _impl)
