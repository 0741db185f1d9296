"""The correctness gate: every pass the benchmark times is first checked against the float64
reference of the variant's own math, at that very shape; a case that fails is ``incorrect`` and
gets no time.

- ``fwd``: the whole output must be finite (a NaN anywhere fails), and sampled query rows (first,
  last and evenly spread; batch 0) must match the reference rows.
- ``fwd_bwd`` and ``bwd``: an upstream gradient that is random on the sampled rows of batch 0 and
  zero elsewhere. Every key's gradient then depends on those rows only, so the reference costs
  O(rows * N) and still checks dk and dv at every key, and dq everywhere (zero off the sampled
  rows); the whole output and all of dq, dk and dv must be finite.
- ``decode``: the step's output against the reference row at its position.
- model level (``check_model``): the same model with the variant swapped for its reference
  attention gives the same logits (prefill, decode) or the same loss and gradient norm (train
  step).

Each comparison uses ``attnbench.attention.reference.reference_error``: row by row, against the
reference's own magnitude, no worse than a small multiple of plain PyTorch's error in the same
dtype (the same math, materialised, in that dtype), any NaN or inf in the output, the plain
result or the reference failing it.
"""

from __future__ import annotations

import torch

from attnbench.attention.reference import reference_error


def sample_rows(n: int, rows: int, device) -> torch.Tensor:
    """Up to ``rows`` query positions of 0..n-1: the first, the last and evenly spread ones."""
    third = max(1, rows // 3)
    pick = torch.cat([torch.arange(min(n, third)), torch.arange(max(0, n - third), n),
                      torch.linspace(0, n - 1, steps=third).long()])
    return torch.unique(pick).to(device)


def _batch0(*xs):
    return [x[:1].detach() for x in xs]


def check_forward(variant, q, k, v, out, causal: bool, rows: int) -> str | None:
    """None when ``out`` = variant(q, k, v) is finite and its sampled rows match the reference."""
    if not torch.isfinite(out).all():
        bad = (~torch.isfinite(out)).nonzero()[0].tolist()
        return f"non-finite values in the output (first at index {tuple(bad)})"
    pick = sample_rows(q.shape[1], rows, q.device)
    q1, k1, v1 = _batch0(q, k, v)
    ref = variant.math.reference_rows(q1, k1, v1, pick, causal=causal)
    plain = variant.math.reference_rows(q1, k1, v1, pick, causal=causal, dtype=q.dtype)
    return _why("output", reference_error(out[:1, pick].detach(), plain, ref, q.dtype))


def check_gradients(variant, q, k, v, causal: bool, rows: int, seed: int = 7) -> str | None:
    """None when the variant's dq, dk, dv under an upstream gradient on sampled rows match the
    reference's (and its forward output on those rows does)."""
    n, dtype = q.shape[1], q.dtype
    pick = sample_rows(n, rows, q.device)
    gen = torch.Generator().manual_seed(seed)
    grad = torch.zeros(q.shape[0], n, q.shape[2], v.shape[-1], dtype=dtype, device=q.device)
    grad[0, pick] = torch.randn(len(pick), q.shape[2], v.shape[-1], generator=gen).to(grad)
    inputs = [x.detach().requires_grad_() for x in (q, k, v)]
    kw = {} if causal else {"causal": False}
    out = variant(*inputs, **kw)
    got = torch.autograd.grad(out, inputs, grad)
    for name, g in (("output", out), *zip(("dq", "dk", "dv"), got)):
        if not torch.isfinite(g).all():
            bad = (~torch.isfinite(g)).nonzero()[0].tolist()
            return f"non-finite values in the {name} (first at index {tuple(bad)})"

    def rows_and_grads(compute_dtype):
        xs = [x[:1].detach().to(compute_dtype).requires_grad_() for x in (q, k, v)]
        o = variant.math.reference_rows(*xs, pick, causal=causal, dtype=compute_dtype)
        return (o, *torch.autograd.grad(o, xs, grad[:1, pick].to(compute_dtype)))

    ref = rows_and_grads(torch.float64)
    plain = rows_and_grads(dtype)
    why = reference_error(out[:1, pick].detach(), plain[0], ref[0], dtype)
    if why:
        return _why("output", why)
    scale = max(float(r.abs().max()) for r in ref[1:])  # the call's gradients' scale
    for name, g, p, r in zip("qkv", got, plain[1:], ref[1:]):
        why = reference_error(g[:1], p, r, dtype, gradient=True, scale=scale)
        if why:
            return _why(f"d{name}", why)
    return None


def check_decode_step(variant, q, k, v, step_out, causal: bool = True) -> str | None:
    """``q, k, v``: the whole sequence including the decoded token at the last position;
    ``step_out`` (B, 1, H, D): the decoder's output for that token."""
    if not torch.isfinite(step_out).all():
        return "non-finite values in the decoded token's output"
    last = torch.tensor([q.shape[1] - 1], device=q.device)
    q1, k1, v1 = _batch0(q, k, v)
    ref = variant.math.reference_rows(q1, k1, v1, last, causal=causal)
    plain = variant.math.reference_rows(q1, k1, v1, last, causal=causal, dtype=q.dtype)
    return _why("decoded token", reference_error(step_out[:1].detach(), plain, ref, q.dtype))


class ReferenceAttention:
    """A variant's math, materialised in ``dtype``, in place of the variant inside a model (the
    model-level gate's reference). Everything else (pattern, math, label, ...) is the variant's,
    so a model that inspects its attention (``attnbench.hf``) sees the same declarations."""

    def __init__(self, variant, dtype: torch.dtype):
        self.variant, self.dtype = variant, dtype
        self.label = f"{variant.label} [reference, {str(dtype).removeprefix('torch.')}]"

    def __getattr__(self, name):
        return getattr(self.variant, name)

    def __call__(self, q, k, v, *, causal: bool = True):
        return self.variant.reference(q, k, v, causal=causal, dtype=self.dtype).to(q.dtype)


def loss_and_grad_norm(lm, idx: torch.Tensor, n: int) -> tuple[float, float]:
    """A train step's loss on ``idx[:, :n]`` and the global norm of its gradients (float64),
    without an optimizer step: what the train-step gate compares."""
    lm.train()
    loss = lm.loss(idx[:, :n], idx[:, 1 : n + 1])
    grads = torch.autograd.grad(loss, [p for p in lm.module.parameters() if p.requires_grad])
    norm = torch.linalg.vector_norm(torch.stack([g.double().norm() for g in grads]))
    return loss.item(), norm.item()


def check_model(lm, pass_: str, idx: torch.Tensor, n: int, got: object) -> str | None:
    """The model-level gate. ``lm`` (``attnbench.bench.lm.LanguageModel``) runs the variant in the
    case's dtype; ``idx`` (B, n + 1) the tokens; ``got`` what the timed pass returned: logits
    (prefill: (B, n, V); decode: the new token's (B, 1, V)), or for a train step ``(loss,
    grad_norm)`` before the optimizer step. The same model with the reference attention in that
    dtype ('plain') and in float64 gives the calibration and the reference."""
    variant = lm.variant
    dtype = next(lm.module.parameters()).dtype
    results = []
    for compute in (dtype, torch.float64):
        m = lm.with_attention(ReferenceAttention(variant, compute), compute)
        if pass_ == "train_step":
            pair = loss_and_grad_norm(m, idx, n)
            results.append(torch.tensor(pair, dtype=torch.float64).view(2, 1))
        else:
            m.train(False)
            with torch.no_grad():
                logits = m.logits(idx[:, : n + 1]) if pass_ == "decode" else m.logits(idx[:, :n])
            results.append(logits[:, -1:] if pass_ == "decode" else logits)
    plain, ref = results
    if pass_ == "train_step":
        loss, norm = got
        mine = torch.tensor([[float(loss)], [float(norm)]], dtype=torch.float64)
        return _why("train step (loss, gradient norm)",
                    reference_error(mine, plain, ref, dtype, gradient=True))
    return _why("logits", reference_error(got.detach(), plain, ref.double(), dtype))


def _why(what: str, reason: str | None) -> str | None:
    return None if reason is None else f"{what}: {reason}"
