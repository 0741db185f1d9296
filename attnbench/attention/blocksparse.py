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

from attnbench.attention.flashunion import Band, Globals, bands, dense_masked, union_of_pieces
from attnbench.attention.patterns import Pattern, SlidingWindow
from attnbench.case import device_key

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
    mask[:, :, 0] |= q_idx[:, :, 0] >= n
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
    plan = block_plan(pattern, n, block, device_key(q.device))
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


# ---------------------------------------------------------------------------------------------
# Sliding windows as a band: every query block sees one contiguous run of keys.


@functools.lru_cache(maxsize=32)
def band_mask(
    window: int, block: int, dtype: torch.dtype, device: str = "cpu", globals_: int = 0
) -> torch.Tensor:
    """(1, 1, block, globals_ + S) additive mask shared by every band: the window pattern between
    the queries of block kb-1 and keys 0 .. S-1 (S = kb*block), which is the same for every band
    (the last key block being the query's own); the ``globals_`` global keys in front are all
    seen."""
    kb = band_blocks(window, block)
    r = torch.arange((kb - 1) * block, kb * block).view(block, 1)
    c = torch.arange(kb * block).view(1, -1)
    seen = SlidingWindow(window).mask_fn(kb * block)(r, c)
    seen = torch.cat([torch.ones(block, globals_, dtype=torch.bool), seen], dim=1)
    mask = torch.zeros(seen.shape, dtype=dtype).masked_fill(~seen, float("-inf"))
    return mask[None, None].to(device)


def band_plan(
    window: int, block: int, globals_: int, dtype: torch.dtype, device
) -> tuple[bool, torch.Tensor]:
    """(fused, mask): whether the CPU flash op is called directly (``flashunion``: it returns
    the log-sum-exps, so global keys are a second call merged through them) or PyTorch's SDPA
    with global keys put in front of every band; and the band's mask."""
    fused = torch.device(device).type == "cpu"
    return fused, band_mask(window, block, dtype, device_key(device), 0 if fused else globals_)


def band_blocks(window: int, block: int) -> int:
    """Key blocks a query block's windows touch: its own and ceil((window - 1) / block) before."""
    return -(-(window - 1) // block) + 1


def banded_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern, block: int
) -> torch.Tensor:
    """Softmax attention under a ``SlidingWindow`` or a ``Longformer`` pattern (a window plus
    ``globals`` global tokens: the first keys are seen by every query, the first queries see
    every earlier key); q, k, v: (B, N, H, D) -> (B, N, H, D).

    Queries are cut into blocks of ``block``; the keys a block's windows reach are one contiguous
    band of S = kb*block keys. The bands are overlapping strided *views* of k and v (nothing is
    copied or padded), the query blocks a view of q, and one call of PyTorch's fused SDPA kernel
    treats the blocks as heads, (H, nb, block, D) x (H, nb, S, D), with one (block, S) mask shared
    by every band: cost N*S, linear in N, with the kernel's fused softmax. Global keys are a second
    call merged through the log-sum-exps on the CPU (``flashunion``), and elsewhere put in
    front of every band (which then has to be copied). The first blocks (whose band would start
    before key 0, or overlap the global keys) and a partial last block are small dense calls.
    Backward: on the CPU the flash kernel's backward on the same views, the band gradients folded
    back by kb strided adds (``flashunion.Band``); elsewhere autograd through the views."""
    bsz, n, heads, d = q.shape
    window, globals_ = pattern.window, getattr(pattern, "globals", 0)
    kb = band_blocks(window, block)
    head = (kb - 1) * block  # queries whose band would start before key 0
    if globals_:  # ... or whose window still reaches a global key (which the band must not repeat)
        head = max(head, -(-(globals_ + window - 1) // block) * block)
    full = (n // block) * block  # queries in whole blocks
    nbm = (full - head) // block  # blocks computed as bands
    if nbm <= 0:
        return dense_masked(q, k, v, 0, 0, pattern)
    out = q.new_empty(bsz, n, heads, v.shape[-1])  # every row is written below (one copy each)
    out[:, :head] = dense_masked(q[:, :head], k[:, :head], v[:, :head], 0, 0, pattern)
    start = head - (kb - 1) * block  # first key of the first band

    fused, mask = band_plan(window, block, globals_, q.dtype, q.device)
    pieces = (Band(kb, mask),) + ((Globals(globals_),) if globals_ else ())

    def band(x, b):  # (H, nbm, S, D) views; with global keys in front: materialised
        w = bands(x[b, start:full].permute(1, 0, 2), kb, block)
        if globals_:
            g = x[b, :globals_].permute(1, 0, 2)[:, None].expand(heads, nbm, globals_, x.shape[-1])
            w = torch.cat([g, w], dim=2)
        return w

    for b in range(bsz):  # the fused kernel takes 4-D views; one call per batch element
        if fused:  # the CPU flash kernel directly: bands as views both ways, globals merged
            qh, kh, vh = (x[b, :full].permute(1, 0, 2) for x in (q, k, v))  # (H, full, D)
            res = union_of_pieces(qh, kh, vh, pieces, head, block)
        else:
            # (H, nbm, block, D)
            qb = q[b, head:full].view(nbm, block, heads, d).permute(2, 0, 1, 3)
            res = torch.nn.functional.scaled_dot_product_attention(
                qb, band(k, b), band(v, b), attn_mask=mask
            )
        out[b, head:full] = res.permute(1, 2, 0, 3).reshape(nbm * block, heads, v.shape[-1])
    if full < n:  # a partial last block: a few rows, dense over the keys they can see
        k0 = 0 if globals_ else max(0, full - window + 1)
        out[:, full:] = dense_masked(q[:, full:], k[:, k0:], v[:, k0:], full, k0, pattern)
    return out
