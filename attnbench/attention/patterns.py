"""Attention patterns: which keys each query may see.

A pattern is defined once here and shared by everything that needs it: the float64 reference
(a dense boolean mask), the block-sparse PyTorch engine (a block layout), FlexAttention (a
``mask_mod``), the decoders (one row of the mask), the FLOP counter (attended pairs) and the
pattern pictures.

Every pattern is *prefix-consistent*: whether query ``i`` sees key ``j`` never depends on the
sequence length, so token-by-token decoding sees exactly the keys the parallel forward sees.

Run ``python -m attnbench.attention.patterns`` to print a small picture of each built-in pattern.

Conventions (the project's):
- ``SlidingWindow(w)``: query ``i`` sees keys ``i-w+1 .. i`` (``w`` keys including itself).
- Block-sparse layouts are causal at the token level: a key is never later than its query.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

MaskFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Rows of the N x N grid evaluated at once when counting pairs or building layouts.
_ROW_CHUNK = 512


class Pattern:
    """Base class. Subclasses define :meth:`mask_fn`; everything else derives from it."""

    causal: bool = True

    @property
    def label(self) -> str:
        raise NotImplementedError

    def mask_fn(self, n: int, device: torch.device | str = "cpu") -> MaskFn:
        """Return ``f(q_idx, k_idx) -> bool`` for sequences of up to ``n`` tokens on ``device``.

        ``q_idx`` and ``k_idx`` are broadcastable integer tensors. The function uses only
        elementwise tensor ops (and indexing of captured tensors), so FlexAttention can trace it.
        """
        raise NotImplementedError

    def dense_mask(self, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The (n, n) boolean mask: ``mask[i, j]`` is True where query i sees key j."""
        idx = torch.arange(n, device=device)
        return self.mask_fn(n, device)(idx[:, None], idx[None, :])

    def row_mask(self, i: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Which of the keys ``0..i`` query ``i`` sees (for decoding): bool of shape (i+1,)."""
        k = torch.arange(i + 1, device=device)
        q = torch.full_like(k, i)
        return self.mask_fn(i + 1, device)(q, k)

    def flex_mask_mod(self, n: int, device: torch.device | str = "cpu"):
        """A FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` for length ``n``."""
        fn = self.mask_fn(n, device)

        def mask_mod(b, h, q_idx, kv_idx):
            return fn(q_idx, kv_idx)

        return mask_mod

    def block_counts(self, n: int, block: int) -> torch.Tensor:
        """Attended pairs per (query block, key block): int64 tensor (nb, nb), nb = ceil(n/block).

        Evaluates the mask over the whole grid, ``_ROW_CHUNK`` rows at a time (what FlexAttention's
        ``create_block_mask`` does too), so it is exact for any pattern. Cached.
        """
        return _block_counts(self, n, block).clone()

    def attended_pairs(self, n: int) -> int:
        """Number of (query, key) pairs attended in a length-``n`` sequence."""
        return int(_block_counts(self, n, _ROW_CHUNK).sum())

    def __str__(self) -> str:
        return self.label


@functools.lru_cache(maxsize=64)
def _block_counts(pattern: Pattern, n: int, block: int) -> torch.Tensor:
    nb = -(-n // block)
    counts = torch.zeros(nb, nb, dtype=torch.int64)
    fn = pattern.mask_fn(n)
    keys = torch.arange(n)
    pad = nb * block - n
    rows_per_chunk = max(block, (_ROW_CHUNK // block) * block)
    for r0 in range(0, n, rows_per_chunk):
        r1 = min(n, r0 + rows_per_chunk)
        rows = torch.arange(r0, r1)
        m = fn(rows[:, None], keys[None, :])  # (rows, n)
        m = torch.nn.functional.pad(m, (0, pad, 0, (-(r1 - r0)) % block))
        qb = m.shape[0] // block
        per_block = m.view(qb, block, nb, block).sum(dim=(1, 3))
        counts[r0 // block : r0 // block + qb] += per_block
    return counts


@dataclass(frozen=True)
class Full(Pattern):
    """Every key (non-causal) or every earlier key and itself (causal)."""

    causal: bool = True

    @property
    def label(self) -> str:
        return "causal" if self.causal else "full"

    def mask_fn(self, n: int, device="cpu") -> MaskFn:
        if self.causal:
            return lambda q, k: q >= k
        return lambda q, k: (q >= 0) & (k >= 0)

    def attended_pairs(self, n: int) -> int:
        return n * (n + 1) // 2 if self.causal else n * n


@dataclass(frozen=True)
class SlidingWindow(Pattern):
    """Causal sliding window: query i sees keys i-window+1 .. i."""

    window: int

    def __post_init__(self):
        _check_positive("window", self.window)

    @property
    def label(self) -> str:
        return f"window={self.window}"

    def mask_fn(self, n: int, device="cpu") -> MaskFn:
        w = self.window
        return lambda q, k: (q >= k) & (q - k < w)

    def attended_pairs(self, n: int) -> int:
        w = min(self.window, n)
        # rows 0..w-1 see i+1 keys, the rest see w keys
        return w * (w + 1) // 2 + (n - w) * w


@dataclass(frozen=True)
class Strided(Pattern):
    """Sparse Transformer's strided pattern at block granularity (Child et al. 2019).

    Query block I sees key block J <= I when I-J < stride (the local part) or (I-J) is a multiple
    of ``stride`` (the strided part); tokens are causal inside the diagonal block.
    """

    block: int = 64
    stride: int = 4

    def __post_init__(self):
        _check_positive("block", self.block)
        _check_positive("stride", self.stride)

    @property
    def label(self) -> str:
        return f"block={self.block},stride={self.stride}"

    def mask_fn(self, n: int, device="cpu") -> MaskFn:
        b, s = self.block, self.stride

        def fn(q, k):
            d = q // b - k // b
            return (q >= k) & ((d < s) | (d % s == 0))

        return fn


@dataclass(frozen=True)
class BigBird(Pattern):
    """BigBird (Zaheer et al. 2020), causal, at block granularity.

    Query block I sees key block J <= I when: I-J < window (sliding blocks), J < globals (global
    key blocks), I < globals (global query blocks see all earlier keys), or J is one of ``randoms``
    blocks drawn for row I from 0..I-1 with a generator seeded by (seed, I). Seeding per row keeps
    the pattern prefix-consistent.
    """

    block: int = 64
    window: int = 3
    globals: int = 1
    randoms: int = 2
    seed: int = 0
    _tables: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self):
        _check_positive("block", self.block)
        _check_positive("window", self.window)
        _check_nonnegative("globals", self.globals)
        _check_nonnegative("randoms", self.randoms)

    @property
    def label(self) -> str:
        return (
            f"block={self.block},window={self.window},globals={self.globals},"
            f"randoms={self.randoms},seed={self.seed}"
        )

    def random_table(self, nb: int) -> torch.Tensor:
        """(nb, nb) bool: the random key blocks of each query block (rows never depend on nb)."""
        table = self._tables.get("table")
        if table is None or table.shape[0] < nb:
            size = max(nb, 2 * (table.shape[0] if table is not None else 0))
            table = torch.zeros(size, size, dtype=torch.bool)
            for i in range(1, size):
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
                table[i, torch.randperm(i, generator=g)[: self.randoms]] = True
            self._tables["table"] = table
        return table[:nb, :nb]

    def mask_fn(self, n: int, device="cpu") -> MaskFn:
        b, w, g = self.block, self.window, self.globals
        table = self.random_table(max(1, -(-n // b))).to(device)

        def fn(q, k):
            qb, kb = q // b, k // b
            near = (qb - kb < w) | (kb < g) | (qb < g)
            return (q >= k) & (near | table[qb, kb])

        return fn


@dataclass(frozen=True)
class Longformer(Pattern):
    """Longformer (Beltagy et al. 2020), causal: a token sliding window plus global tokens.

    Query i sees key j <= i when i-j < window, or j < globals (global keys every query sees), or
    i < globals (global queries see every earlier key).
    """

    window: int = 256
    globals: int = 16

    def __post_init__(self):
        _check_positive("window", self.window)
        _check_nonnegative("globals", self.globals)

    @property
    def label(self) -> str:
        return f"window={self.window},globals={self.globals}"

    def mask_fn(self, n: int, device="cpu") -> MaskFn:
        w, g = self.window, self.globals
        return lambda q, k: (q >= k) & ((q - k < w) | (k < g) | (q < g))


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_nonnegative(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def render(pattern: Pattern, n: int = 32) -> str:
    """A text picture of the pattern: one row per query, '#' where a key is seen."""
    m = pattern.dense_mask(n)
    return "\n".join("".join("#" if x else "." for x in row.tolist()) for row in m)


if __name__ == "__main__":
    for p in (
        Full(),
        SlidingWindow(8),
        Strided(block=4, stride=3),
        BigBird(block=4, window=2, globals=1, randoms=1),
        Longformer(window=6, globals=2),
    ):
        print(f"{type(p).__name__}({p.label})  pairs={p.attended_pairs(32)}")
        print(render(p))
        print()
