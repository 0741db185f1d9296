"""The quality floor: an interpolated byte n-gram model (Kneser-Ney, absolute discounting).

``ByteNGram(order=4).fit(train)`` counts every context of up to ``order - 1`` bytes;
``nll(data, window)`` returns the negative log-likelihood (nats) of each byte of ``data`` scored
the way the transformer is scored: in windows of ``window`` bytes, a byte's context never reaches
back past the start of its window. Everything is numpy: counts are sorted integer keys
(context bytes packed into an int64), looked up with ``searchsorted``.

Interpolated Kneser-Ney (Chen & Goodman): the highest order uses counts, lower orders use
continuation counts (how many distinct bytes precede an n-gram), each order discounts by D and
hands the mass D * (distinct continuations) / (context count) to the order below; order 0 is
uniform over the 256 bytes.
"""

from __future__ import annotations

import numpy as np

VOCAB = 256


def _keys(data: np.ndarray, k: int) -> np.ndarray:
    """For positions i >= k: the int64 key of bytes data[i-k : i+1] (context then byte)."""
    d = data.astype(np.int64)
    key = np.zeros(len(d) - k, dtype=np.int64)
    for j in range(k + 1):
        key = key * VOCAB + d[j : len(d) - k + j]
    return key


class _Table:
    """Sorted unique int64 keys and their counts."""

    def __init__(self, keys: np.ndarray, counts: np.ndarray | None = None):
        if counts is None:
            keys, counts = np.unique(keys, return_counts=True)
        self.keys, self.counts = keys, counts.astype(np.float64)

    def get(self, query: np.ndarray) -> np.ndarray:
        if not len(self.keys):
            return np.zeros(len(query))
        i = np.clip(np.searchsorted(self.keys, query), 0, len(self.keys) - 1)
        return np.where(self.keys[i] == query, self.counts[i], 0.0)


class ByteNGram:
    def __init__(self, order: int = 4, discount: float = 0.75):
        if order < 1:
            raise ValueError(f"n-gram order must be >= 1, got {order}")
        if not 0 < discount < 1:
            raise ValueError(f"discount must be in (0, 1), got {discount}")
        self.order, self.discount = order, discount
        self.grams: list[_Table] = []  # per context length k: count (highest) or continuation count
        self.ctx: list[_Table] = []  # per k: sum over bytes of grams[k] for the context
        self.types: list[_Table] = []  # per k: number of distinct bytes seen after the context

    def fit(self, train: np.ndarray) -> ByteNGram:
        train = np.asarray(train, dtype=np.uint8)
        if len(train) < self.order + 1:
            raise ValueError(
                f"training data of {len(train)} bytes is too short for order {self.order}"
            )
        for k in range(self.order):
            if k == self.order - 1:
                table = _Table(_keys(train, k))
            else:  # continuation count: how many distinct bytes precede this (k+1)-gram
                table = _Table(np.unique(_keys(train, k + 1)) % VOCAB ** (k + 1))
            ctx_keys = table.keys // VOCAB
            uniq, start = np.unique(ctx_keys, return_index=True)
            self.grams.append(table)
            self.ctx.append(_Table(uniq, np.add.reduceat(table.counts, start)))
            self.types.append(_Table(uniq, np.diff(np.append(start, len(ctx_keys)))))
        return self

    def _prob(self, key: np.ndarray, k: int, lower: np.ndarray) -> np.ndarray:
        """P_k(byte | k previous bytes) for the (context, byte) keys, given P_{k-1} for them."""
        c = self.grams[k].get(key)
        total = self.ctx[k].get(key // VOCAB)
        types = self.types[k].get(key // VOCAB)
        seen = total > 0
        safe = np.where(seen, total, 1.0)
        p = np.maximum(c - self.discount, 0.0) / safe + self.discount * types / safe * lower
        return np.where(seen, p, lower)

    def nll(self, data: np.ndarray, window: int | None = None) -> np.ndarray:
        """Negative log-likelihood (nats) of each target data[1:], scored as the transformer scores
        non-overlapping windows of ``window`` targets: target j sits at position j % window of its
        window and may condition on that many + 1 input bytes (capped at order - 1)."""
        if not self.grams:
            raise ValueError("fit the n-gram model before scoring")
        data = np.asarray(data, dtype=np.uint8)
        n = len(data) - 1
        lower = np.full(n, 1.0 / VOCAB)
        probs = []  # probs[k][j]: P_k of target j (data[j + 1]) given its k previous bytes
        for k in range(self.order):
            keys = _keys(data, k)
            start = max(0, k - 1)  # target j has j + 1 previous bytes
            p = np.full(n, np.nan)
            p[start:] = self._prob(keys[1:] if k == 0 else keys, k, lower[start:])
            probs.append(p)
            lower = p
        pos = np.arange(n) % window if window else np.arange(n)
        avail = np.minimum(pos + 1, self.order - 1)
        out = np.choose(avail, probs) if self.order > 1 else probs[0]
        return -np.log(out)
