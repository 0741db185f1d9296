"""The correctness gate: every pass the benchmark times is first checked against the float64
reference of the variant's own math, at that very shape, and so is the output of its timed
repetitions (``attnbench.bench.worker``); a case that fails is ``incorrect`` and gets no time.

Where it looks: **every batch element and every head**, at query rows drawn per case from a seeded
generator (``sample_rows``: both ends of the sequence and one row in every 64-row query tile, so a
tile the kernel gets wrong cannot hide; the seed is recorded in the row). The whole output must be
finite, of the input's dtype and shape.

- ``fwd``: the sampled rows of the output against the reference rows.
- ``fwd_bwd`` and ``bwd``: an upstream gradient that is random on the sampled rows (of every batch
  element) and zero elsewhere. Every key's gradient then depends on those rows only, so the
  reference costs O(rows * N) and checks dk and dv at every key tile of the pattern (each sampled
  query sees its own tile's keys) and dq everywhere (zero off the sampled rows); the timed
  repetitions run the same upstream gradient, so their gradients are checked against the same
  reference. The whole output and all of dq, dk and dv must be finite.
- ``decode``: several consecutive steps of the decoder against the reference rows at their
  positions, then the output of timed steps (each from the same state).
- model level (``ModelGate``): the same model with the variant swapped for its reference
  attention gives the same logits (prefill, decode) or the same loss and gradient norm (train
  step).

Inputs come from named distributions (``DISTRIBUTIONS``): standard normal, large scores (softmax
nearly one-hot, scores beyond 30: a softmax without max subtraction overflows), outlier channels;
every op case is timed on two standard-normal sets and gated on those and on the math's second
distribution (``distributions_for``), recorded in its row.

Each comparison uses ``attnbench.attention.reference.reference_error``: row by row and on the mean
over rows, against plain PyTorch's error in the same dtype (the same math, materialised, in that
dtype) plus a floor of one epsilon of the row's magnitude in the half dtypes.
"""

from __future__ import annotations

import torch

from attnbench.attention.reference import ReferenceAttention, reference_error, score_bound

__all__ = ["ReferenceAttention"]  # the model-level gate's reference, defined with the maths

TILE = 64  # query rows per tile: one sampled row in each
MAX_TILES = 256  # beyond this many tiles, a seeded sample of them (recorded by the seed)

# name -> (scale of q and k, outlier channels' factor): what the gate feeds a variant
DISTRIBUTIONS = {
    "normal": (1.0, 1.0),
    "large_scores": (5.5, 1.0),  # q.k / sqrt(D) of standard deviation about 30: peaked softmax
    "outliers": (1.0, 8.0),  # two channels of q and k eight times larger (trained models' norms)
}


def distributions_for(variant) -> tuple[str, str]:
    """The two input distributions a variant is gated and timed on: softmax maths on normal and
    large scores, linear maths (whose features grow with |x|) on normal and outlier channels."""
    return ("normal", "outliers") if variant.math.kind == "linear" else ("normal", "large_scores")


def shape_inputs(q: torch.Tensor, k: torch.Tensor, dist: str) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k (any float dtype, standard normal) reshaped to distribution ``dist``."""
    if dist not in DISTRIBUTIONS:
        raise ValueError(f"unknown input distribution {dist!r}; valid: {', '.join(DISTRIBUTIONS)}")
    scale, outlier = DISTRIBUTIONS[dist]
    if scale != 1.0:
        q, k = q * scale, k * scale
    if outlier != 1.0:
        factor = torch.ones(q.shape[-1], dtype=q.dtype, device=q.device)
        factor[:2] = outlier
        q, k = q * factor, k * factor
    return q, k


def sample_rows(n: int, rows: int, device, seed: int = 0) -> torch.Tensor:
    """Query positions of 0..n-1 to check: the first and last ``rows // 6`` and one row drawn
    in every ``TILE``-row tile (a seeded sample of ``MAX_TILES`` tiles when there are more),
    plus evenly spread rows up to ``rows``; sorted, unique."""
    g = torch.Generator().manual_seed(seed)
    ends = max(1, rows // 6)
    tiles = (n + TILE - 1) // TILE
    chosen = (
        torch.arange(tiles)
        if tiles <= MAX_TILES
        else torch.randperm(tiles, generator=g)[:MAX_TILES]
    )
    starts = chosen * TILE
    widths = torch.clamp(n - starts, max=TILE)
    in_tile = starts + (torch.rand(len(starts), generator=g) * widths).long()
    pick = torch.cat(
        [
            torch.arange(min(n, ends)),
            torch.arange(max(0, n - ends), n),
            in_tile,
            torch.linspace(0, n - 1, steps=max(1, rows // 3)).long(),
        ]
    )
    return torch.unique(pick).to(device)


def conditioning(variant, q, k) -> float:
    """The amplification of score rounding (``reference.score_bound``) in a softmax, and in
    exponential features (FAVOR+ approximates the same exp(q.k / sqrt(D))); none for element-wise
    features such as elu + 1."""
    if variant.math.kind == "linear" and not variant.math.feature_map.exponential:
        return 0.0
    return score_bound(q, k)


def _finite(name: str, t: torch.Tensor) -> str | None:
    if not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).nonzero()[0].tolist()
        return f"non-finite values in the {name} (first at index {tuple(bad)})"
    return None


def _form(name: str, t: torch.Tensor, like: torch.Tensor, dtype: torch.dtype) -> str | None:
    if t.dtype != dtype:
        return f"the {name} is {str(t.dtype)[6:]}, expected {str(dtype)[6:]}"
    if tuple(t.shape) != tuple(like.shape):
        return f"the {name} has shape {tuple(t.shape)}, expected {tuple(like.shape)}"
    return None


class ForwardGate:
    """The forward gate of one input set: sampled rows and the reference's rows, computed once;
    ``check(out)`` judges any output of the variant on these inputs."""

    def __init__(self, variant, q, k, v, causal: bool, rows: int, seed: int = 0):
        self.variant, self.causal, self.dtype = variant, causal, q.dtype
        self.q, self.k, self.v = (x.detach() for x in (q, k, v))
        self.pick = sample_rows(q.shape[1], rows, q.device, seed)
        self.expect = q.new_empty(q.shape[:-1] + (v.shape[-1],))
        self._ref = None

    def reference(self):
        if self._ref is None:
            args = (self.q, self.k, self.v, self.pick)
            self._ref = (
                self.variant.math.reference_rows(*args, causal=self.causal),
                self.variant.math.reference_rows(*args, causal=self.causal, dtype=self.dtype),
                conditioning(self.variant, self.q, self.k),
            )
        return self._ref

    def check(self, out) -> str | None:
        why = _form("output", out, self.expect, self.dtype) or _finite("output", out)
        if why:
            return why
        ref, plain, kappa = self.reference()
        return _why(
            "output",
            reference_error(out[:, self.pick].detach(), plain, ref, self.dtype, conditioning=kappa),
        )


def check_forward(variant, q, k, v, out, causal: bool, rows: int, seed: int = 0) -> str | None:
    """None when ``out`` = variant(q, k, v) is finite, of q's dtype and (B, N, H, Dv) shape, and
    its sampled rows (every batch element and head) match the reference."""
    return ForwardGate(variant, q, k, v, causal, rows, seed).check(out)


class GradientGate:
    """The gradient gate of one input set: the upstream gradient (random on the sampled rows of
    every batch element, zero elsewhere; the timed repetitions use it too) and the reference's
    gradients, computed once; ``check(grads)`` judges any (dq, dk, dv) computed under it."""

    def __init__(self, variant, q, k, v, causal: bool, rows: int, seed: int = 0):
        self.variant, self.causal, self.dtype = variant, causal, q.dtype
        self.q, self.k, self.v = (x.detach() for x in (q, k, v))
        n = q.shape[1]
        self.pick = sample_rows(n, rows, q.device, seed)
        gen = torch.Generator().manual_seed(seed + 7)
        self.grad = torch.zeros(q.shape[:-1] + (v.shape[-1],), dtype=q.dtype, device=q.device)
        self.grad[:, self.pick] = torch.randn(
            q.shape[0], len(self.pick), q.shape[2], v.shape[-1], generator=gen
        ).to(self.grad)
        self._ref = None
        self.kappa = conditioning(variant, self.q, self.k)

    def _rows_and_grads(self, compute_dtype):
        xs = [x.to(compute_dtype).requires_grad_() for x in (self.q, self.k, self.v)]
        o = self.variant.math.reference_rows(
            *xs, self.pick, causal=self.causal, dtype=compute_dtype
        )
        return (o, *torch.autograd.grad(o, xs, self.grad[:, self.pick].to(compute_dtype)))

    def reference(self):
        """(ref, plain): the float64 reference's and plain PyTorch's (out rows, dq, dk, dv)."""
        if self._ref is None:
            self._ref = (self._rows_and_grads(torch.float64), self._rows_and_grads(self.dtype))
        return self._ref

    def check(self, grads, out=None) -> str | None:
        for name, g, x in zip(("dq", "dk", "dv"), grads, (self.q, self.k, self.v)):
            why = _form(name, g, x, self.dtype) or _finite(name, g)
            if why:
                return why
        ref, plain = self.reference()
        if out is not None:
            why = _form("output", out, self.grad, self.dtype) or _finite("output", out)
            why = why or reference_error(
                out[:, self.pick].detach(), plain[0], ref[0], self.dtype, conditioning=self.kappa
            )
            if why:
                return _why("output", why)
        scale = max(float(r.abs().max()) for r in ref[1:])  # the call's gradients' scale
        for name, g, p, r in zip("qkv", grads, plain[1:], ref[1:]):
            why = reference_error(
                g.detach(), p, r, self.dtype, gradient=True, scale=scale, conditioning=self.kappa
            )
            if why:
                return _why(f"d{name}", why)
        return None

    def check_fresh(self) -> str | None:
        """A fresh forward and backward of the variant, its output checked too."""
        inputs = [x.clone().requires_grad_() for x in (self.q, self.k, self.v)]
        kw = {} if self.causal else {"causal": False}
        out = self.variant(*inputs, **kw)
        return self.check(torch.autograd.grad(out, inputs, self.grad), out)


def check_gradients(variant, q, k, v, causal: bool, rows: int, seed: int = 0) -> str | None:
    """None when the variant's dq, dk, dv under the gate's upstream gradient match the
    reference's (and its forward output on the sampled rows does)."""
    return GradientGate(variant, q, k, v, causal, rows, seed).check_fresh()


def check_decode_step(variant, q, k, v, step_out, causal: bool = True) -> str | None:
    """``q, k, v``: the whole sequence including the decoded token at the last position;
    ``step_out`` (B, 1, H, D): the decoder's output for that token (every batch element)."""
    expect = q.new_empty((q.shape[0], 1, q.shape[2], v.shape[-1]))
    why = _form("decoded token's output", step_out, expect, q.dtype) or _finite(
        "decoded token's output", step_out
    )
    if why:
        return why
    last = torch.tensor([q.shape[1] - 1], device=q.device)
    qd, kd, vd = (x.detach() for x in (q, k, v))
    ref = variant.math.reference_rows(qd, kd, vd, last, causal=causal)
    plain = variant.math.reference_rows(qd, kd, vd, last, causal=causal, dtype=q.dtype)
    return _why(
        "decoded token",
        reference_error(
            step_out.detach(), plain, ref, q.dtype, conditioning=conditioning(variant, qd, kd)
        ),
    )


def check_decode_steps(variant, q, k, v, steps: int, make_decoder) -> str | None:
    """The decoder over the last ``steps`` tokens of (q, k, v) after a context of the others,
    each step against the reference row at its position: a decoder right on one step only (or
    losing state between steps) fails here."""
    n = q.shape[1]
    p = max(0, n - steps)
    dec = make_decoder()
    if p:
        dec.fill(k[:, :p], v[:, :p])
    for t in range(p, n):
        out = dec.step(q[:, t : t + 1], k[:, t : t + 1], v[:, t : t + 1])
        why = check_decode_step(variant, q[:, : t + 1], k[:, : t + 1], v[:, : t + 1], out)
        if why:
            return f"step {t - p + 1} of {n - p} (position {t}): {why}"
    return None


def loss_and_grads(lm, idx: torch.Tensor, n: int) -> tuple[float, list[tuple[str, torch.Tensor]]]:
    """A train step's loss on ``idx[:, :n]`` and every parameter's gradient (name, tensor),
    without an optimizer step: what the train-step gate compares."""
    lm.train()
    named = [(k, p) for k, p in lm.module.named_parameters() if p.requires_grad]
    loss = lm.loss(idx[:, :n], idx[:, 1 : n + 1])
    grads = torch.autograd.grad(loss, [p for _, p in named])
    return loss.item(), [(k, g.detach()) for (k, _), g in zip(named, grads)]


PEAK_QK = 4.0  # the model-level gate's query and key projections are scaled by this (scores 16x)


class ModelGate:
    """The model-level gate of one token set. ``lm`` (``attnbench.bench.lm.LanguageModel``) runs
    the variant in the case's dtype, with query and key projections scaled by ``PEAK_QK`` (the
    same for every variant: at initial weights q.k is near 0 and attention nearly uniform, where
    an attention that ignores q and k, or a window posing as full attention, would pass);
    ``idx`` (B, n + 1) the tokens. The same model with the reference attention in that dtype
    ('plain') and in float64 gives the calibration and the reference, computed once;
    ``check(got)`` judges what the pass returned: logits at every position (prefill: (B, n, V);
    decode: the new token's (B, 1, V)), or for a train step ``(loss, [(name, gradient)])`` before
    the optimizer step: the loss and every parameter's gradient, row by row."""

    def __init__(self, lm, pass_: str, idx: torch.Tensor, n: int):
        self.lm, self.pass_, self.idx, self.n = lm, pass_, idx, n
        self.dtype = next(lm.module.parameters()).dtype
        self._ref = None

    def reference(self):
        if self._ref is None:
            results = []
            for compute in (self.dtype, torch.float64):
                m = self.lm.with_attention(ReferenceAttention(self.lm.variant, compute), compute)
                if self.pass_ == "train_step":
                    results.append(loss_and_grads(m, self.idx, self.n))
                    continue
                m.train(False)
                with torch.no_grad():
                    ids = (
                        self.idx[:, : self.n + 1]
                        if self.pass_ == "decode"
                        else self.idx[:, : self.n]
                    )
                    logits = m.logits(ids)
                results.append(logits[:, -1:] if self.pass_ == "decode" else logits)
            self._ref = tuple(results)
        return self._ref

    def check(self, got) -> str | None:
        plain, ref = self.reference()
        if self.pass_ != "train_step":
            return _why("logits", reference_error(got.detach(), plain, ref.double(), self.dtype))
        loss, grads = got
        as_t = lambda x: torch.tensor([[float(x)]], dtype=torch.float64)  # noqa: E731
        why = reference_error(
            as_t(loss), as_t(plain[0]), as_t(ref[0]), self.dtype, same_dtype=False
        )
        if why:
            return _why("train step loss", why)
        scale = max(float(g.abs().max()) for _, g in ref[1])
        for (name, g), (_, p), (_, r) in zip(grads, plain[1], ref[1]):
            why = reference_error(g, p, r, self.dtype, gradient=True, scale=scale)
            if why:
                return _why(f"gradient of {name}", why)
        return None


def _why(what: str, reason: str | None) -> str | None:
    return None if reason is None else f"{what}: {reason}"
