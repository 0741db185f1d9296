"""Feature maps of kernelized linear attention: phi such that exp(q.k) is replaced by phi(q).phi(k).

- ``Elu``: phi(x) = elu(x) + 1 (Katharopoulos et al. 2020, "Transformers are RNNs"); F = D features.
- ``Performer``: FAVOR+ positive orthogonal random features (Choromanski et al. 2021):
  phi(x) = exp(W x' - |x'|^2 / 2) / sqrt(F), x' = x / D^(1/4), the rows of W orthogonal in blocks
  of D and scaled by chi(D)-distributed norms; W is drawn from a generator seeded by ``seed``, so
  the same spec always means the same features.
- ``Taylor``: Based's second-order Taylor expansion of exp (Arora et al. 2024, "Simple linear
  attention language models balance the recall-throughput tradeoff"; flash-linear-attention's
  ``fla.ops.based``): x is first projected to ``feature_dim`` = f dimensions by a fixed seeded
  random matrix P (f, D) (Based learns this projection; here it is drawn once from ``seed``), then
  phi(x) = [x', vec(x' x'^T) / sqrt(2), 1], x' = P x / f^(1/4), so that
  phi(q) . phi(k) = 1 + s + s^2 / 2 with s = (P q) . (P k) / sqrt(f); F = 1 + f + f^2 features
  (Based writes the constant first; the order changes no value, only float32 rounding).

Queries may be rescaled by a per-query constant (``stabilize=True``): it cancels exactly between
numerator and denominator of linear attention and keeps exp() in range. Keys are never rescaled,
since a per-key constant would change the weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from attnbench.case import device_key


class FeatureMap:
    exponential = False  # features exp(...) of the input: their rounding grows with |x|^2
    label: str

    def projection_flops(self, head_dim: int) -> int:
        """FLOPs to map one row (a query or key of ``head_dim``) to its features, beyond
        element-wise work: none for an element-wise map; a projection's matmul, and an outer
        product's multiplies (Taylor)."""
        return 0

    def num_features(self, head_dim: int) -> int:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, *, is_query: bool, stabilize: bool = True) -> torch.Tensor:
        """x: (..., D) -> (..., F) in x's dtype."""
        raise NotImplementedError


@dataclass(frozen=True)
class Elu(FeatureMap):
    @property
    def label(self) -> str:
        return "elu+1"

    def num_features(self, head_dim: int) -> int:
        return head_dim

    def __call__(self, x, *, is_query, stabilize=True):
        return F.elu(x) + 1


@dataclass(frozen=True)
class Performer(FeatureMap):
    features: int = 128
    seed: int = 0
    _cache: dict = field(default_factory=dict, compare=False, hash=False, repr=False)
    exponential = True  # a class attribute, not a field

    def __post_init__(self):
        if not isinstance(self.features, int) or self.features < 1:
            raise ValueError(f"features must be a positive integer, got {self.features!r}")

    @property
    def label(self) -> str:
        return f"favor+(features={self.features},seed={self.seed})"

    def num_features(self, head_dim: int) -> int:
        return self.features

    def projection_flops(self, head_dim: int) -> int:
        return 2 * head_dim * self.num_features(head_dim)  # x @ W^T, (D) x (D, F)

    def projection(self, head_dim: int, dtype: torch.dtype, device) -> torch.Tensor:
        """(F, D) random projection, built in float64 on the CPU from the seed, then cast."""
        return _cached_projection(
            self._cache,
            head_dim,
            dtype,
            device,
            lambda: _orthogonal_gaussian(self.features, head_dim, self.seed),
        )

    def __call__(self, x, *, is_query, stabilize=True):
        # exp(W x' - |x'|^2 / 2) / sqrt(F) with x' = x / D^(1/4), written so that the full-size
        # (..., F) tensor is made once (the matmul) and then updated in place: D^(-1/4) goes into
        # W, and 1/sqrt(F) into the subtracted term as log sqrt(F).
        d = x.shape[-1]
        w = self.projection(d, x.dtype, x.device) * d**-0.25
        shift = (x * x).sum(-1, keepdim=True) * (0.5 * d**-0.5) + 0.5 * math.log(self.features)
        logits = (x @ w.t()).sub_(shift)  # (..., F)
        if is_query and stabilize:
            logits = logits.sub_(logits.amax(-1, keepdim=True).detach())
        return logits.exp_()


@dataclass(frozen=True)
class Taylor(FeatureMap):
    feature_dim: int = 16
    seed: int = 0
    _cache: dict = field(default_factory=dict, compare=False, hash=False, repr=False)
    # ``exponential`` (a class attribute, not a field): the gate's score conditioning applies,
    # though no exp is taken. The weight itself is well conditioned (d log w / d log s =
    # s (1 + s) / (1 + s + s^2 / 2) stays below 1 + sqrt(2)), but every fast form sums it over the
    # signed features: sum_f phi_f(q) phi_f(k) = 1 + s + s^2 / 2 out of terms whose magnitudes add
    # up to 1 + t + t^2 / 2, t = sum_i |q'_i k'_i| >= |s|. Those grow as |q'|^2 |k'|^2 while the
    # weight can stay near 1, so a float32 state form (cumsum, recurrent, the decoder, chunked
    # past its first chunk, fla's kernel) rounds a weight by up to eps (1 + t + t^2 / 2) / w,
    # 2 to 40 eps for single pairs of standard-normal inputs, more as the scores grow. Plain
    # PyTorch (the materialised form) rounds each weight once and divides it out again, exactly
    # on a row with one key: without the term, cumsum's first rows came out 1.75 times over the
    # float32 bound on normal inputs, 3.8 on outliers, 14 on large scores; with it they sit at
    # 0.15 or less, the float32 floor is about 8 eps (1 + |q| |k| / sqrt(D)) (1e-5 of a row on
    # normal inputs), and second-order features 2 % off are still 190 to 3400 times over it.
    exponential = True

    def __post_init__(self):
        if not isinstance(self.feature_dim, int) or self.feature_dim < 1:
            raise ValueError(f"feature_dim must be a positive integer, got {self.feature_dim!r}")

    @property
    def label(self) -> str:
        return f"taylor(feature_dim={self.feature_dim},seed={self.seed})"

    def num_features(self, head_dim: int) -> int:
        f = self.feature_dim
        return 1 + f + f * f

    def projection_flops(self, head_dim: int) -> int:
        f = self.feature_dim
        return 2 * head_dim * f + f * f  # P x, (D) x (D, f); then the f^2 products of x' x'^T

    def projection(self, head_dim: int, dtype: torch.dtype, device) -> torch.Tensor:
        """(f, D) projection P, built in float64 on the CPU from the seed, then cast: rows
        orthogonal in blocks of D (as FAVOR+'s) scaled by 1 / sqrt(D), so that a row's norm is
        about 1 and, for inputs of unit-variance channels, s = (P q) . (P k) / sqrt(f) spreads
        like the softmax score q . k / sqrt(D) it stands for (standard deviation about 1)."""
        return _cached_projection(
            self._cache,
            head_dim,
            dtype,
            device,
            lambda: _orthogonal_gaussian(self.feature_dim, head_dim, self.seed) / head_dim**0.5,
        )

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., D) -> P x: (..., f) in x's dtype (flash-linear-attention's based kernels take
        this, and apply the score scale f^(-1/2) themselves)."""
        return x @ self.projection(x.shape[-1], x.dtype, x.device).t()

    def __call__(self, x, *, is_query, stabilize=True):
        # No stabilisation is needed (no exp to overflow), so queries and keys map alike. The
        # constant feature goes last: it is the largest term of every sum over the features (N
        # in a normaliser), and a sum that starts with it rounds every later term at that size
        # (first, the float32 cumsum form was 3 times further off on 33 keys).
        f = self.feature_dim
        d = x.shape[-1]
        xp = x @ (self.projection(d, x.dtype, x.device) * f**-0.25).t()  # x' (..., f)
        second = (xp * 0.5**0.5)[..., :, None] * xp[..., None, :]  # x' x'^T / sqrt(2)
        ones = torch.ones_like(xp[..., :1])
        return torch.cat([xp, second.flatten(-2), ones], dim=-1)  # (..., f + f^2 + 1)


def _cached_projection(
    cache: dict, head_dim: int, dtype: torch.dtype, device, build
) -> torch.Tensor:
    """A seeded projection for ``head_dim``, cast to ``dtype`` on ``device`` once: ``build()``
    makes its float64 CPU master (kept under (head_dim, "f64")), every cast is cached."""
    key = (head_dim, dtype, device_key(device))
    if key not in cache:
        w64 = cache.get((head_dim, "f64"))
        if w64 is None:
            w64 = cache[(head_dim, "f64")] = build()
        cache[key] = w64.to(device=device, dtype=dtype)
    return cache[key]


def _orthogonal_gaussian(rows: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    blocks = []
    for _ in range(-(-rows // dim)):
        a = torch.randn(dim, dim, generator=g, dtype=torch.float64)
        qmat, _ = torch.linalg.qr(a)
        blocks.append(qmat.t())
    w = torch.cat(blocks, 0)[:rows]
    norms = torch.randn(rows, dim, generator=g, dtype=torch.float64).norm(dim=1)
    return w * norms[:, None]
