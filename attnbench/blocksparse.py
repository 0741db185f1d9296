"""Block-sparse softmax attention in plain PyTorch: cost proportional to the attended blocks.

The sequence is cut into blocks of ``block`` tokens. A *plan* lists, for each query block, the key
blocks its pattern touches (padded to the longest list) and the token mask inside them. Queries of
a group of blocks are then multiplied with their gathered key blocks in one batched matmul::

    scores[b, h, I, r, c] = q[b, h, I*block + r] . k[b, h, J(I, c // block)*block + c % block]

so time and memory grow with the number of attended blocks (linearly in N for a sliding window),
never with N^2. Query blocks are processed in groups that keep the gathered tensors under a memory
budget. Plans are built once per (pattern, N, block, device) and cached; that is the
"mask construction" cost the harness reports separately.

Backward is PyTorch autograd through the gather, matmuls and softmax.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .patterns import Pattern

# Largest number of score elements materialised at once (per group of query blocks).
DEFAULT_BUDGET = 1 << 24


@dataclass(frozen=True)
class BlockPlan:
    n: int
    block: int
    num_blocks: int
    max_keys: int  # key blocks per query block, padded
    key_blocks: torch.Tensor  # (nb, max_keys) int64 key-block index per query block
    mask: torch.Tensor  # (nb, block, max_keys * block) bool, True where attended
    pairs: int  # attended (query, key) pairs


@functools.lru_cache(maxsize=32)
def block_plan(pattern: Pattern, n: int, block: int, device: str = "cpu") -> BlockPlan:
    """The plan of ``pattern`` at length ``n`` with ``block``-token blocks."""
    counts = pattern.block_counts(n, block)  # (nb, nb)
    nb = counts.shape[0]
    active = counts > 0
    max_keys = int(active.sum(1).max())
    # sorted key-block lists per query block, padded with block 0 (masked out below)
    order = torch.sort(active.to(torch.int8), dim=1, descending=True, stable=True).indices
    key_blocks = order[:, :max_keys].contiguous()
    valid = torch.gather(active, 1, key_blocks)  # (nb, max_keys)
    q_idx = torch.arange(nb * block).view(nb, block, 1)
    k_idx = (key_blocks[:, None, :, None] * block + torch.arange(block)).view(nb, 1, -1)
    mask = pattern.mask_fn(n)(q_idx, k_idx)  # (nb, block, max_keys*block)
    mask &= valid.repeat_interleave(block, dim=1)[:, None, :]
    mask &= (k_idx < n) & (q_idx < n)
    # padded query rows (>= n) see one key so their softmax stays finite; they are sliced away
    mask[:, :, 0] |= (q_idx[:, :, 0] >= n)
    return BlockPlan(
        n=n,
        block=block,
        num_blocks=nb,
        max_keys=max_keys,
        key_blocks=key_blocks.to(device),
        mask=mask.to(device),
        pairs=int(counts.sum()),
    )


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern,
    block: int,
    *,
    budget: int = DEFAULT_BUDGET,
) -> torch.Tensor:
    """Softmax attention over ``pattern``; q, k, v: (B, N, H, D) -> (B, N, H, D)."""
    bsz, n, heads, d = q.shape
    plan = block_plan(pattern, n, block, str(q.device))
    nb, kb = plan.num_blocks, plan.max_keys
    pad = nb * block - n

    def blocks(x):  # (B, N, H, D) -> (B, H, nb, block, D)
        x = x.transpose(1, 2)
        if pad:
            x = torch.nn.functional.pad(x, (0, 0, 0, pad))
        return x.reshape(bsz, heads, nb, block, x.shape[-1])

    qb = blocks(q * (d**-0.5))
    kblk, vblk = blocks(k), blocks(v)
    per_group = max(1, budget // max(1, bsz * heads * block * kb * block))
    outs = []
    for i0 in range(0, nb, per_group):
        i1 = min(nb, i0 + per_group)
        idx = plan.key_blocks[i0:i1]  # (g, kb)
        kg = kblk[:, :, idx].reshape(bsz, heads, i1 - i0, kb * block, d)  # (B, H, g, kb*block, D)
        vg = vblk[:, :, idx].reshape(bsz, heads, i1 - i0, kb * block, v.shape[-1])
        s = qb[:, :, i0:i1] @ kg.transpose(-1, -2)  # (B, H, g, block, kb*block)
        s = s.masked_fill(~plan.mask[i0:i1], float("-inf"))
        p = torch.softmax(s, dim=-1, dtype=torch.float32).to(v.dtype)
        outs.append(p @ vg)  # (B, H, g, block, Dv)
    out = torch.cat(outs, dim=2).reshape(bsz, heads, nb * block, v.shape[-1])[:, :, :n]
    return out.transpose(1, 2)
