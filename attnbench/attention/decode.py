"""Decoders: prefill a prompt, then step one token at a time.

Each family keeps what its math needs to continue a sequence:

- ``KVCacheDecoder`` (naive, fused, sparse): every key and value so far; a step attends to the
  keys its pattern allows for the new position (all of them for full attention).
- ``RingBufferDecoder`` (sliding window): the last ``window`` keys and values; slot ``t % window``.
- ``RecurrentDecoder`` (linear): the state S = sum_j phi(k_j) v_j^T (F x D) and z = sum_j phi(k_j).

``prefill`` runs the variant's own parallel forward and fills the cache, so decoding continues the
exact computation; ``cache_bytes()`` is what the cache or state holds at the current length.
Tensors are (B, N, H, D); a step takes and returns (B, 1, H, D).
"""

from __future__ import annotations

import torch

from attnbench.attention.patterns import Full, SlidingWindow
from attnbench.attention.reference import LinearMath


class Decoder:
    def __init__(self, variant, batch: int, heads: int, head_dim: int, *, max_len: int,
                 dtype: torch.dtype, device):
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.variant = variant
        self.batch, self.heads, self.head_dim = batch, heads, head_dim
        self.max_len, self.dtype, self.device = max_len, dtype, torch.device(device)
        self.position = 0  # tokens seen so far

    def _check(self, q, k, v, steps: int | None = None):
        expect = (self.batch, q.shape[1], self.heads, self.head_dim)
        for name, t in (("q", q), ("k", k), ("v", v)):
            if tuple(t.shape) != expect or (steps is not None and t.shape[1] != steps):
                raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {expect}")
        if self.position + q.shape[1] > self.max_len:
            raise ValueError(
                f"decoder is full: {self.position} + {q.shape[1]} tokens > max_len={self.max_len}"
            )

    def prefill(self, q, k, v) -> torch.Tensor:
        """Parallel forward over a prompt (B, P, H, D); fills the cache."""
        if self.position:
            raise ValueError("prefill must come first (the decoder already holds tokens)")
        self._check(q, k, v)
        out = self.variant(q, k, v)
        self._absorb(k, v)
        self.position = q.shape[1]
        return out

    def fill(self, k, v) -> None:
        """Load a context (B, N, H, D) of keys and values without computing outputs (benchmarks)."""
        if self.position:
            raise ValueError("fill must come first (the decoder already holds tokens)")
        self._check(k, k, v)
        self._absorb(k, v)
        self.position = k.shape[1]

    def step(self, q, k, v) -> torch.Tensor:
        """One new token (B, 1, H, D) -> its output (B, 1, H, D)."""
        self._check(q, k, v, steps=1)
        out = self._step(q, k, v)
        self.position += 1
        return out

    def cache_bytes(self) -> int:
        raise NotImplementedError

    def _absorb(self, k, v):
        raise NotImplementedError

    def _step(self, q, k, v):
        raise NotImplementedError


def _attend_one(q, k, v) -> torch.Tensor:
    """Softmax attention of one query over T keys: q (B,1,H,D), k/v (B,T,H,D) -> (B,1,H,D)."""
    scores = torch.einsum("bqhd,bthd->bhqt", q.float(), k.float()) * q.shape[-1] ** -0.5
    return torch.einsum("bhqt,bthd->bqhd", scores.softmax(-1), v.float()).to(q.dtype)


class KVCacheDecoder(Decoder):
    """Full KV cache; the step attends to the keys the pattern allows for the new position."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        shape = (self.batch, self.max_len, self.heads, self.head_dim)
        self.k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        pattern = self.variant.pattern
        self.pattern = None if isinstance(pattern, Full) else pattern

    def _absorb(self, k, v):
        self.k[:, : k.shape[1]] = k
        self.v[:, : v.shape[1]] = v

    def _step(self, q, k, v):
        t = self.position
        self.k[:, t] = k[:, 0]
        self.v[:, t] = v[:, 0]
        keys, values = self.k[:, : t + 1], self.v[:, : t + 1]
        if self.pattern is not None:
            idx = self.pattern.row_mask(t, device=self.device).nonzero().squeeze(1)
            keys, values = keys.index_select(1, idx), values.index_select(1, idx)
        return _attend_one(q, keys, values)

    def cache_bytes(self) -> int:
        per_token = 2 * self.batch * self.heads * self.head_dim * self.k.element_size()
        return self.position * per_token


class RingBufferDecoder(Decoder):
    """The last ``window`` keys and values; constant memory and time per step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.window = self.variant.pattern.window
        shape = (self.batch, self.window, self.heads, self.head_dim)
        self.k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=self.dtype, device=self.device)

    def _absorb(self, k, v):
        n, w = k.shape[1], self.window
        tail = torch.arange(max(0, n - w), n, device=self.device)
        self.k[:, tail % w] = k[:, tail]
        self.v[:, tail % w] = v[:, tail]

    def _step(self, q, k, v):
        t, w = self.position, self.window
        self.k[:, t % w] = k[:, 0]
        self.v[:, t % w] = v[:, 0]
        filled = min(t + 1, w)  # slots 0..filled-1 hold the keys t-filled+1..t (in some order)
        return _attend_one(q, self.k[:, :filled], self.v[:, :filled])

    def cache_bytes(self) -> int:
        per_token = 2 * self.batch * self.heads * self.head_dim * self.k.element_size()
        return min(self.position, self.window) * per_token


class RecurrentDecoder(Decoder):
    """Linear attention's recurrent state, kept in float32: S (B,H,F,D) and z (B,H,F)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.phi = self.variant.feature_map
        f = self.phi.num_features(self.head_dim)
        self.state = torch.zeros(self.batch, self.heads, f, self.head_dim, device=self.device)
        self.norm = torch.zeros(self.batch, self.heads, f, device=self.device)

    def _absorb(self, k, v):
        fk = self.phi(k.float(), is_query=False)  # (B, N, H, F)
        self.state += torch.einsum("bnhf,bnhd->bhfd", fk, v.float())
        self.norm += fk.sum(1)

    def _step(self, q, k, v):
        self._absorb(k, v)
        fq = self.phi(q.float(), is_query=True)  # (B, 1, H, F)
        num = torch.einsum("bnhf,bhfd->bnhd", fq, self.state)
        den = torch.einsum("bnhf,bhf->bnh", fq, self.norm)
        return (num / den[..., None]).to(q.dtype)

    def cache_bytes(self) -> int:
        return (self.state.numel() + self.norm.numel()) * self.state.element_size()


def default_decoder(variant, batch, heads, head_dim, *, max_len, dtype, device) -> Decoder:
    """The decoder of a variant's math: recurrent (linear), ring buffer (window), KV cache."""
    if isinstance(variant.math, LinearMath):
        cls = RecurrentDecoder
    elif isinstance(variant.pattern, SlidingWindow):
        cls = RingBufferDecoder
    else:
        cls = KVCacheDecoder
    return cls(variant, batch, heads, head_dim, max_len=max_len, dtype=dtype, device=device)
