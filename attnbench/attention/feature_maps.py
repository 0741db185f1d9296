"""Feature maps of kernelized linear attention: phi such that exp(q.k) is replaced by phi(q).phi(k).

- ``Elu``: phi(x) = elu(x) + 1 (Katharopoulos et al. 2020, "Transformers are RNNs"); F = D features.
- ``Performer``: FAVOR+ positive orthogonal random features (Choromanski et al. 2021):
  phi(x) = exp(W x' - |x'|^2 / 2) / sqrt(F), x' = x / D^(1/4), the rows of W orthogonal in blocks
  of D and scaled by chi(D)-distributed norms; W is drawn from a generator seeded by ``seed``, so
  the same spec always means the same features.

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
        element-wise work: none for an element-wise map."""
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
        key = (head_dim, dtype, device_key(device))
        if key not in self._cache:
            w64 = self._cache.get((head_dim, "f64"))
            if w64 is None:
                w64 = self._cache[(head_dim, "f64")] = _orthogonal_gaussian(
                    self.features, head_dim, self.seed
                )
            self._cache[key] = w64.to(device=device, dtype=dtype)
        return self._cache[key]

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
