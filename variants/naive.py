"""naive: the textbook formulas, materialised.

    S = Q K^T / sqrt(D),   S[i, j] = -inf for j > i (causal),   O = softmax(S) V

Scores and probabilities are (B, H, N, N) tensors, so memory grows as N^2: the slow exact
baseline every other family is measured against. It decodes the same way: the new token's scores
over the KV cache, materialised (``kv_cache.naive``).
"""

from __future__ import annotations

import torch

from attnbench.attention.decode import NaiveKVDecoder
from attnbench.case import Capabilities
from attnbench.registry import register_variant


@register_variant(
    "naive.softmax", family="naive", supports=Capabilities(noncausal=True), decoder=NaiveKVDecoder
)
def naive_softmax(q, k, v, *, causal: bool = True):
    "Textbook attention: materialised scores, causal mask, softmax, weighted sum (memory ~ N^2)."
    n, d = q.shape[1], q.shape[-1]
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (B, H, N, D)
    scores = (q @ k.transpose(-1, -2)) / d**0.5  # (B, H, N, N)
    if causal:
        future = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    probs = scores.softmax(dim=-1)
    return (probs @ v).transpose(1, 2)  # (B, N, H, D)
