"""Reference math: the one place that says what each variant must compute.

Two forms cover every built-in variant:

- softmax attention restricted to a pattern (``attnbench.attention.patterns``)::

      O = softmax(Q K^T / sqrt(D) + M) V,   M[i, j] = 0 where query i sees key j, else -inf

- kernelized linear attention with a feature map phi (``attnbench.feature_maps``)::

      O_i = sum_{j<=i} (phi(q_i) . phi(k_j)) v_j / sum_{j<=i} phi(q_i) . phi(k_j)

Both are written in their plain, materialised form. Grouped-query inputs (k, v with H_kv heads
dividing q's H) are expanded: each key/value head serves H / H_kv query heads. Called in float64
they are the references that every implementation is tested against; called in a lower dtype they
are "plain PyTorch", whose error sets the tolerance of the self-calibrating tests.

A ``Math`` object is built from a variant's parameters (``MATHS[name].build(params)``) and knows
its pattern or feature map, its reference and its attended pairs (for FLOP counts).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

from attnbench.attention.feature_maps import Elu, FeatureMap, Performer, Taylor
from attnbench.attention.patterns import BigBird, Full, Longformer, Pattern, SlidingWindow, Strided


def softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    scale: float | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Dense masked softmax attention, materialising the (N, N) scores.

    Args:
        q, k, v: (B, N, H, D) queries, keys, values (Nk may differ from Nq; k and v may have
            fewer heads, a divisor of H: grouped-query attention).
        mask: (Nq, Nk) bool, True where the query sees the key; None for all keys.
        scale: score scale, default 1/sqrt(D).
        dtype: compute dtype (float64 for the reference); default q's dtype.
    Returns:
        (B, Nq, H, D) in q's dtype, or in ``dtype`` when given.
    """
    dtype = dtype or q.dtype
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    k, v = expand_heads(k, q.shape[2]), expand_heads(v, q.shape[2])
    q, k, v = (t.to(dtype).transpose(1, 2) for t in (q, k, v))  # (B, H, N, D)
    scores = (q @ k.transpose(-1, -2)) * scale  # (B, H, Nq, Nk)
    if mask is not None:
        scores = scores.masked_fill(~mask.to(scores.device), float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    feature_map: FeatureMap,
    *,
    causal: bool = True,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Quadratic (materialised) form of linear attention.

    Args:
        q, k, v: (B, N, H, D).
        feature_map: phi, applied to queries and keys in the compute dtype.
        causal: sum over keys j <= i (True) or over all keys.
        dtype: compute dtype; default q's dtype.
    Returns:
        (B, N, H, D) in ``dtype``.
    """
    dtype = dtype or q.dtype
    k, v = expand_heads(k, q.shape[2]), expand_heads(v, q.shape[2])
    q, k, v = (t.to(dtype).transpose(1, 2) for t in (q, k, v))  # (B, H, N, D)
    fq = feature_map(q, is_query=True)  # (B, H, N, F)
    fk = feature_map(k, is_query=False)
    a = fq @ fk.transpose(-1, -2)  # (B, H, N, N)
    if causal:
        n = a.shape[-1]
        a = a * torch.ones(n, n, dtype=torch.bool, device=a.device).tril()
    return _normalise(a, v, dtype).transpose(1, 2)


def _normalise(a: torch.Tensor, v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(a @ v) / a.sum(-1), the sums accumulated in float32 for a half dtype and the quotient
    rounded to ``dtype``: what a kernel's float32 accumulators do. In float16 the sums
    themselves overflow (at N = 1000, D = 64 the elu+1 denominator of late rows exceeds 65504),
    and a plain result that is inf would calibrate nothing."""
    acc = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    a, v = a.to(acc), v.to(acc)
    return ((a @ v) / a.sum(-1, keepdim=True)).to(dtype)


def expand_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, H_kv, D) -> (B, N, heads, D), each key/value head repeated for its query heads."""
    return x if x.shape[2] == heads else x.repeat_interleave(heads // x.shape[2], dim=2)


# The tolerance (flash-attention's rule, made row-wise): an implementation's error may be MULTIPLE
# times plain PyTorch's error in the same dtype, row by row, plus a rounding floor of FLOOR_EPS
# units of the dtype's epsilon times the row's magnitude; and over all the checked rows together,
# its mean error may be MEAN_MULTIPLE times plain PyTorch's mean error plus MEAN_FLOOR_EPS units
# (a small error everywhere - every output 2 % off, values rounded to float8 - passes each row's
# bound in bfloat16 and fails this one). A gradient row's magnitude is its own plus GRAD_SCALE of
# the call's gradient scale: a row can cancel to zero, leaving the rounding of the terms.
# In float32 the floor is 8 eps (1e-6 of the row): fused kernels reorder their sums over D and N,
# which moves float32 results by a few eps where plain PyTorch may happen to be exact, and no
# defect worth catching is that small. In the half dtypes it is 1 eps (0.8 % in bfloat16, 0.1 % in
# float16; it was 8 eps, 6 %): an honest kernel accumulates in float32 and rounds once, so its
# error sits below plain PyTorch's, which rounds at every step.
MULTIPLE, TINY = 3.0, 1e-3
FLOOR_EPS = {torch.float16: 1.0, torch.bfloat16: 1.0}  # other dtypes: FLOOR_EPS_DEFAULT
FLOOR_EPS_DEFAULT = 8.0
MEAN_MULTIPLE, MEAN_FLOOR_FRACTION = 2.0, 0.25  # the mean's floor: a quarter of the rows'
GRAD_SCALE = 2.0
SCORE_EPS = 8.0  # float32 epsilons of the floor per unit of the largest possible score


def score_bound(q: torch.Tensor, k: torch.Tensor) -> float:
    """max_i |q_i| * max_j |k_j| / sqrt(D): no score q_i.k_j / sqrt(D) can be larger (the
    conditioning of a softmax's rounding, for ``reference_error``)."""
    qn = q.detach().double().norm(dim=-1).max()
    kn = k.detach().double().norm(dim=-1).max()
    return float(qn * kn) / q.shape[-1] ** 0.5


def floor_eps(dtype: torch.dtype) -> float:
    return FLOOR_EPS.get(dtype, FLOOR_EPS_DEFAULT)


def reference_error(
    got: torch.Tensor,
    plain: torch.Tensor,
    ref: torch.Tensor,
    dtype: torch.dtype,
    multiple: float = MULTIPLE,
    *,
    gradient: bool = False,
    scale: float = 0.0,
    same_dtype: bool = True,
    conditioning: float = 0.0,
) -> str | None:
    """The self-calibrating tolerance, shared by the tests and the benchmark's correctness gate.

    Judged row by row (a row: the last dimension, e.g. one query's D outputs at one head), and on
    the mean over all rows::

        max|got - ref| <= multiple * max|plain - ref| + floor_eps(dtype) * eps(dtype) * M  (a row)
        mean(err) <= MEAN_MULTIPLE * mean(plain err) + MEAN_FLOOR_FRACTION * mean(floor)

    where ``plain`` is the same math in plain PyTorch in ``dtype`` and M a row's magnitude:
    max|ref| of the row plus 1e-3 of the tensor's largest (outputs: a wrong value is caught
    wherever it is, however small that row's values are next to the largest), or for gradients
    (``gradient=True``) the row's own plus ``GRAD_SCALE`` of ``scale`` (pass the largest of the
    call's dq, dk and dv, or the tensor's largest is used): a gradient row can cancel to zero
    exactly, and a kernel then returns the rounding of the terms that cancelled.
    ``conditioning`` (``score_bound``: the largest |q.k| / sqrt(D) the inputs allow) adds
    ``SCORE_EPS * eps(float32) * conditioning * M`` to the floor: a kernel computes its scores in
    float32, and a softmax amplifies a score's rounding (eps * |s|) into its output, so with
    scores of 30 to 100 an honest kernel and plain PyTorch differ by far more than eps, and
    either may be the lucky one on a row.
    Any NaN or inf in ``got``, ``plain`` or ``ref`` is a failure, and so is a ``got`` whose dtype
    is not ``dtype`` (unless ``same_dtype=False``: summary numbers such as a loss) or whose shape
    is not the reference's. Returns None when it passes, else
    why.
    """
    for what, t in (("output", got), ("plain PyTorch result", plain), ("float64 reference", ref)):
        bad = ~torch.isfinite(t)
        if bad.any():
            where = tuple(int(i) for i in bad.nonzero()[0])
            return (
                f"non-finite values in the {what} ({int(bad.sum())} of {t.numel()}, first at "
                f"index {where})" + (" (unwritten elements?)" if what == "output" else "")
            )
    if got.shape != ref.shape:
        return f"shape {tuple(got.shape)} differs from the reference's {tuple(ref.shape)}"
    if same_dtype and got.dtype != dtype:
        return f"dtype {str(got.dtype).removeprefix('torch.')}, expected {str(dtype)[6:]}"
    e = tolerance_terms(
        got, plain, ref, dtype, multiple, gradient=gradient, scale=scale, conditioning=conditioning
    )
    err, bound, base, mag, floor = e["err"], e["bound"], e["base"], e["mag"], e["floor"]
    shape = ref.shape
    over = err > bound
    if over.any():
        worst = int(torch.argmax(err - bound))
        where = (
            tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), shape[:-1]))
            if len(shape) > 1
            else ()
        )
        return (
            f"{int(over.sum())} of {len(err)} rows exceed the tolerance; worst at row {where}: "
            f"error {err[worst]:.3g} vs the float64 reference > {bound[worst]:.3g} "
            f"({multiple:g} x plain PyTorch's {base[worst]:.3g} + floor {floor[worst]:.3g}; "
            f"the row's magnitude {mag[worst]:.3g})"
        )
    if e["mean_err"] > e["mean_bound"]:
        return (
            f"mean error over {len(err)} rows {e['mean_err']:.3g} > {e['mean_bound']:.3g} "
            f"({MEAN_MULTIPLE:g} x plain PyTorch's mean {float(base.mean()):.3g} + "
            f"{MEAN_FLOOR_FRACTION:g} x the mean floor {float(floor.mean()):.3g}): "
            "a small error on every row"
        )
    return None


def tolerance_terms(
    got,
    plain,
    ref,
    dtype,
    multiple: float = MULTIPLE,
    *,
    gradient: bool = False,
    scale: float = 0.0,
    conditioning: float = 0.0,
) -> dict:
    """The terms of ``reference_error`` (per row: err, base = plain's error, mag, floor, bound;
    the means), for the calibration table (``margin``)."""
    shape = ref.shape
    g, p, r = (
        t.detach().double().reshape(-1, shape[-1] if len(shape) else 1) for t in (got, plain, ref)
    )
    err = (g - r).abs().amax(-1)
    base = (p - r).abs().amax(-1)
    mag = r.abs().amax(-1)
    eps = torch.finfo(dtype).eps
    if gradient:
        magnitude = mag + GRAD_SCALE * max(float(mag.max()), scale)
    else:
        magnitude = mag + TINY * mag.max()
    rel = floor_eps(dtype) * eps + SCORE_EPS * torch.finfo(torch.float32).eps * conditioning
    floor = rel * magnitude
    return {
        "err": err,
        "base": base,
        "mag": mag,
        "floor": floor,
        "bound": multiple * base + floor,
        "mean_err": float(err.mean()),
        "mean_bound": float(MEAN_MULTIPLE * base.mean() + MEAN_FLOOR_FRACTION * floor.mean()),
    }


def margin(got, plain, ref, dtype, **kw) -> tuple[float, float]:
    """(worst row's error / its bound, mean error / its bound): below 1 passes; how close an
    honest implementation comes to the tolerance (the gate's calibration)."""
    e = tolerance_terms(got, plain, ref, dtype, **kw)
    return float((e["err"] / e["bound"]).max()), e["mean_err"] / e["mean_bound"]


@dataclass(frozen=True)
class SoftmaxMath:
    """Softmax attention over ``pattern`` (a causal ``Full`` pattern for full attention)."""

    name: str
    pattern: Pattern

    kind = "softmax"

    def pattern_for(self, causal: bool) -> Pattern:
        if isinstance(self.pattern, Full):
            return Full(causal)
        return self.pattern

    def reference(self, q, k, v, *, causal: bool = True, dtype=torch.float64) -> torch.Tensor:
        n = q.shape[1]
        mask = self.pattern_for(causal).dense_mask(n, device=q.device)
        return softmax_attention(q, k, v, mask, dtype=dtype)

    def attended_pairs(self, n: int, *, causal: bool = True) -> int:
        return self.pattern_for(causal).attended_pairs(n)

    def reference_rows(
        self, q, k, v, rows: torch.Tensor, *, causal: bool = True, dtype=torch.float64
    ) -> torch.Tensor:
        """The reference for query rows ``rows`` only: (B, len(rows), H, D), cost O(rows * N).
        Differentiable: with an upstream gradient on these rows it gives every key's gradient."""
        n = k.shape[1]
        mask = self.pattern_for(causal).mask_fn(n, q.device)(
            rows[:, None], torch.arange(n, device=q.device)[None, :]
        )
        return softmax_attention(q[:, rows], k, v, mask, dtype=dtype)

    @property
    def label(self) -> str:
        return self.pattern.label


@dataclass(frozen=True)
class LinearMath:
    """Kernelized linear attention with ``feature_map``."""

    name: str
    feature_map: FeatureMap

    kind = "linear"

    def reference(self, q, k, v, *, causal: bool = True, dtype=torch.float64) -> torch.Tensor:
        return linear_attention(q, k, v, self.feature_map, causal=causal, dtype=dtype)

    def reference_rows(
        self, q, k, v, rows: torch.Tensor, *, causal: bool = True, dtype=torch.float64
    ) -> torch.Tensor:
        """The reference for query rows ``rows`` only: (B, len(rows), H, D), cost O(rows * N)."""
        dtype = dtype or q.dtype
        k, v = expand_heads(k, q.shape[2]), expand_heads(v, q.shape[2])
        fq = self.feature_map(q[:, rows].to(dtype).transpose(1, 2), is_query=True)  # (B, H, R, F)
        fk = self.feature_map(k.to(dtype).transpose(1, 2), is_query=False)  # (B, H, N, F)
        a = fq @ fk.transpose(-1, -2)  # (B, H, R, N)
        if causal:
            a = a * (rows[:, None] >= torch.arange(k.shape[1], device=q.device)[None, :])
        return _normalise(a, v.to(dtype).transpose(1, 2), dtype).transpose(1, 2)

    def attended_pairs(self, n: int, *, causal: bool = True) -> int:
        """Pairs of the quadratic form (used only for pattern pictures; FLOPs use ``flops``)."""
        return n * (n + 1) // 2 if causal else n * n

    @property
    def label(self) -> str:
        return self.feature_map.label


Math = SoftmaxMath | LinearMath


@dataclass(frozen=True)
class MathSpec:
    """How to build a math from a variant's parameters.

    ``factory`` takes keyword arguments named after variant parameters; the registry passes the
    ones it names (so ``window`` reaches ``SlidingWindow`` and an implementation's ``chunk`` does
    not).
    """

    name: str
    factory: Callable[..., Pattern | FeatureMap]
    exact: bool  # True when the math is full (causal) softmax attention
    description: str

    def param_names(self) -> list[str]:
        return list(inspect.signature(self.factory).parameters)

    def build(self, params: dict) -> Math:
        names = self.param_names()
        obj = self.factory(**{k: v for k, v in params.items() if k in names})
        if isinstance(obj, Pattern):
            return SoftmaxMath(self.name, obj)
        return LinearMath(self.name, obj)


MATHS: dict[str, MathSpec] = {
    spec.name: spec
    for spec in (
        MathSpec("causal_softmax", lambda: Full(True), True, "full softmax attention"),
        MathSpec(
            "sliding_window",
            lambda window: SlidingWindow(window),
            False,
            "softmax over the `window` most recent keys",
        ),
        MathSpec(
            "strided",
            lambda block, stride: Strided(block, stride),
            False,
            "Sparse Transformer strided blocks: local + every `stride`-th block",
        ),
        MathSpec(
            "bigbird",
            lambda block, window, globals, randoms, seed: BigBird(
                block, window, globals, randoms, seed
            ),
            False,
            "BigBird blocks: window + global + seeded random",
        ),
        MathSpec(
            "longformer",
            lambda window, globals: Longformer(window, globals),
            False,
            "Longformer: token window + global tokens",
        ),
        MathSpec("elu", lambda: Elu(), False, "linear attention, phi(x) = elu(x) + 1"),
        MathSpec(
            "performer",
            lambda features, seed: Performer(features, seed),
            False,
            "linear attention, FAVOR+ positive orthogonal random features",
        ),
        MathSpec(
            "taylor",
            lambda feature_dim, seed: Taylor(feature_dim, seed),
            False,
            "linear attention, Based's 2nd-order Taylor features of a seeded projection",
        ),
    )
}


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
