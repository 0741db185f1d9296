"""Recall: multi-query associative recall (MQAR, as in Zoology), on the identical model.

A sequence of ``seq_len`` tokens starts with ``kv_pairs`` key-value pairs ``k1 v1 k2 v2 ...``;
after them, every key is queried once, in random order, at random even positions of the rest of
the sequence (``... k3 v3 ... k1 v1 ...``; other positions hold a filler token). The model is
scored only where it sees a query key: it must predict that key's value, which it can only find
by looking back at the pairs. Keys and values come from disjoint token ranges; keys within a
sequence are distinct.

    x, y = mqar_batch(batch=32, seq_len=128, kv_pairs=8, seed=0, step=0)   # y = -100 off queries
    result = train_recall("fused.sdpa", settings)                          # same budget per variant
    accuracy(result.model, seq_len=128, kv_pairs=8, sequences=256, seed=1)

Training draws batches from the grid of (seq_len, kv_pairs) settings in turn (step ``i`` uses
setting ``i mod G`` and a generator seeded by (seed, i)); evaluation uses fresh sequences from a
different seed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from attnbench.quality.train import _autocast, _optimizer, build_model, optimizer_step
from attnbench.settings import RecallSettings, fits

__all__ = ["RecallSettings", "fits", "mqar_batch", "train_recall", "accuracy"]

FILLER = 0
KEY_BASE, VALUE_BASE = 1, 128  # keys 1.., values 128..
IGNORE = -100  # the targets the loss skips (optimizer_step ignores -100)


def mqar_batch(
    batch: int, seq_len: int, kv_pairs: int, *, key_vocab: int = 64, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), both (batch, seq_len) int64; targets are -100 except at query keys."""
    if not fits(seq_len, kv_pairs):
        raise ValueError(
            f"seq_len={seq_len} cannot hold {kv_pairs} pairs and their queries "
            f"(needs seq_len >= {4 * kv_pairs})"
        )
    if not kv_pairs <= key_vocab <= VALUE_BASE - KEY_BASE:
        raise ValueError(f"key_vocab={key_vocab} must be in [{kv_pairs}, {VALUE_BASE - KEY_BASE}]")
    keys = (
        np.stack([rng.choice(key_vocab, kv_pairs, replace=False) for _ in range(batch)]) + KEY_BASE
    )
    values = rng.integers(0, key_vocab, (batch, kv_pairs)) + VALUE_BASE
    x = np.full((batch, seq_len), FILLER, dtype=np.int64)
    y = np.full((batch, seq_len), IGNORE, dtype=np.int64)
    x[:, 0 : 2 * kv_pairs : 2] = keys
    x[:, 1 : 2 * kv_pairs : 2] = values
    slots = (seq_len - 2 * kv_pairs) // 2  # query positions 2P, 2P + 2, ...
    for b in range(batch):
        where = 2 * kv_pairs + 2 * np.sort(rng.choice(slots, kv_pairs, replace=False))
        order = rng.permutation(kv_pairs)
        x[b, where] = keys[b, order]
        x[b, where + 1] = values[b, order]
        y[b, where] = values[b, order]
    return torch.from_numpy(x), torch.from_numpy(y)


@dataclass
class RecallResult:
    model: torch.nn.Module
    status: str
    reason: str
    steps: int
    seconds: float
    final_loss: float


def train_recall(variant: str, s: RecallSettings, device="cpu") -> RecallResult:
    device = torch.device(device)
    grid = s.grid()
    if not grid:
        raise ValueError(
            f"no (seq_len, kv_pairs) setting fits: seq_lens {s.seq_lens}, kv_pairs "
            f"{s.kv_pairs} (needs seq_len >= 4 * kv_pairs)"
        )
    model = build_model(s.preset, variant, s.seed, device, s.model)
    opt = _optimizer(model, s)
    model.train()
    start = time.perf_counter()
    losses: list[float] = []
    status, reason = "ok", ""
    for step in range(s.train_steps):
        progress = step / s.train_steps
        if progress < s.warmup_frac:
            lr = s.lr * (step + 1) / (s.warmup_frac * s.train_steps)
        else:
            rest = (progress - s.warmup_frac) / (1 - s.warmup_frac)
            lr = s.lr * (s.min_lr_frac + (1 - s.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * rest)))
        n, kv = grid[step % len(grid)]
        x, y = mqar_batch(
            s.batch, n, kv, key_vocab=s.key_vocab, rng=np.random.default_rng([s.seed, step])
        )
        value = optimizer_step(
            model, model, opt, x.to(device), y.to(device), lr, s.grad_clip
        ).item()
        if not math.isfinite(value):
            status, reason = "diverged", f"training loss became {value} at step {step + 1}"
            break
        losses.append(value)
    model.eval()
    final = float(np.mean(losses[-len(grid) * 5 :])) if losses else float("nan")
    return RecallResult(model, status, reason, len(losses), time.perf_counter() - start, final)


@torch.no_grad()
def accuracy(
    model: torch.nn.Module,
    seq_len: int,
    kv_pairs: int,
    *,
    sequences: int = 256,
    key_vocab: int = 64,
    seed: int = 1,
    batch: int = 64,
) -> float:
    """Fraction of queries whose most likely next token is the right value (fresh sequences)."""
    device = next(model.parameters()).device
    rng = np.random.default_rng([seed, 1_000_003, seq_len, kv_pairs])
    right = total = 0
    for start in range(0, sequences, batch):
        x, y = mqar_batch(
            min(batch, sequences - start), seq_len, kv_pairs, key_vocab=key_vocab, rng=rng
        )
        x, y = x.to(device), y.to(device)
        with _autocast(device):
            pred = model(x).argmax(-1)
        mask = y != IGNORE
        right += int((pred[mask] == y[mask]).sum())
        total += int(mask.sum())
    return right / total
