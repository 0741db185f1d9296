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

from .patterns import Pattern, SlidingWindow

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


# ---------------------------------------------------------------------------------------------
# Sliding windows as a band: every query block sees one contiguous run of keys.

@functools.lru_cache(maxsize=32)
def band_mask(window: int, block: int, dtype: torch.dtype, device: str = "cpu",
              globals_: int = 0) -> torch.Tensor:
    """(1, 1, block, globals_ + S) additive mask shared by every band: the window pattern between
    the queries of block kb-1 and keys 0 .. S-1 (S = kb*block), which is the same for every band
    (the last key block being the query's own); the ``globals_`` global keys in front are all seen."""
    kb = band_blocks(window, block)
    r = torch.arange((kb - 1) * block, kb * block).view(block, 1)
    c = torch.arange(kb * block).view(1, -1)
    seen = SlidingWindow(window).mask_fn(kb * block)(r, c)
    seen = torch.cat([torch.ones(block, globals_, dtype=torch.bool), seen], dim=1)
    mask = torch.zeros(seen.shape, dtype=dtype).masked_fill(~seen, float("-inf"))
    return mask[None, None].to(device)


def band_plan(window: int, block: int, globals_: int, dtype: torch.dtype,
              device) -> tuple[bool, torch.Tensor]:
    """(fused, mask): whether the CPU flash op is called directly (``_BandedFlash``: it returns
    the log-sum-exps, so global keys are a second call merged through them) or PyTorch's SDPA
    with global keys put in front of every band; and the band's mask."""
    fused = torch.device(device).type == "cpu"
    return fused, band_mask(window, block, dtype, str(device), 0 if fused else globals_)


def band_blocks(window: int, block: int) -> int:
    """Key blocks a query block's windows touch: its own and ceil((window - 1) / block) before."""
    return -(-(window - 1) // block) + 1


def _dense_sdpa(q, k, v, q0: int, k0: int, pattern: Pattern) -> torch.Tensor:
    """Dense masked SDPA of queries q0.. against keys k0.. ((B, L, H, D) slices) under ``pattern``."""
    qi = torch.arange(q0, q0 + q.shape[1], device=q.device).view(-1, 1)
    ki = torch.arange(k0, k0 + k.shape[1], device=q.device).view(1, -1)
    seen = pattern.mask_fn(max(q0 + q.shape[1], k0 + k.shape[1]), q.device)(qi, ki)
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=seen)
    return out.transpose(1, 2)


def _bands(x: torch.Tensor, kb: int, block: int) -> torch.Tensor:
    """(H, L, D) keys -> (H, nb, kb*block, D) overlapping bands, band i starting at key i*block:
    a strided view, nothing copied."""
    return x.unfold(1, kb * block, block).transpose(-1, -2)


def _fold_bands(dbands: torch.Tensor, kb: int, block: int) -> torch.Tensor:
    """The gradient of ``_bands``: (H, nb, kb*block, D) -> (H, (nb+kb-1)*block, D), each key
    block summing the kb band slots it appears in (kb strided adds; autograd's unfold_backward
    zero-fills and scatters instead, 3-4x slower here)."""
    h, nb, _, d = dbands.shape
    out = dbands.new_zeros(h, nb + kb - 1, block, d)
    slots = dbands.view(h, nb, kb, block, d)
    for s in range(kb):
        out[:, s:s + nb].add_(slots[:, :, s])
    return out.view(h, (nb + kb - 1) * block, d)


class _BandedFlash(torch.autograd.Function):
    """Query blocks (H, nb, block, D) over their bands of keys (overlapping views of (H, L, D)
    keys, band i starting at key i*block) and optionally a few global keys, with the CPU flash
    kernel; no band is materialised, in either direction.

    With global keys, the band and the globals are two flash calls merged through their
    log-sum-exps:

        out = o_band * exp(lse_band - L) + o_glob * exp(lse_glob - L),  L = logaddexp(lse_band, lse_glob)

    Backward: the flash backward of each part, given the *merged* output and L, yields exactly
    that part's share of dq, dk, dv (P_ij = exp(s_ij - L_i) and delta_i = dO_i . O_i are global).
    The band gradients (kb times the size of K) are folded back into K's layout by ``_fold_bands``."""

    @staticmethod
    def forward(ctx, qb, k, v, kg, vg, mask, kb, block):
        flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        h, nb, blk, d = qb.shape
        out, lse = flash(qb, _bands(k, kb, block), _bands(v, kb, block), attn_mask=mask)
        if kg is not None:
            o2, l2 = flash(qb.reshape(h, 1, nb * blk, d), kg, vg)
            l2 = l2.view(h, nb, blk)
            merged = torch.logaddexp(lse, l2)
            # in place: out and o2 are this function's own fresh outputs
            out.mul_(torch.exp(lse - merged)[..., None].to(out.dtype))
            out.add_(o2.view(h, nb, blk, -1).mul_(torch.exp(l2 - merged)[..., None].to(o2.dtype)))
            lse = merged
        ctx.save_for_backward(qb, k, v, kg, vg, mask, out, lse)
        ctx.kb, ctx.block = kb, block
        return out

    @staticmethod
    def backward(ctx, grad):
        qb, k, v, kg, vg, mask, out, lse = ctx.saved_tensors
        kb, block = ctx.kb, ctx.block
        back = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
        h, nb, blk, d = qb.shape
        grad = grad.contiguous()
        dq, dkb, dvb = back(grad, qb, _bands(k, kb, block), _bands(v, kb, block), out, lse, 0.0,
                            False, attn_mask=mask)
        dk, dv = _fold_bands(dkb, kb, block), _fold_bands(dvb, kb, block)
        dkg = dvg = None
        if kg is not None:
            flat = lambda x: x.reshape(h, 1, nb * blk, x.shape[-1])  # noqa: E731
            dq2, dkg, dvg = back(flat(grad), flat(qb), kg, vg, flat(out), lse.reshape(h, 1, nb * blk),
                                 0.0, False)
            dq.add_(dq2.view(h, nb, blk, d))
        return dq, dk, dv, dkg, dvg, None, None, None


def banded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern,
                     block: int) -> torch.Tensor:
    """Softmax attention under a ``SlidingWindow`` or a ``Longformer`` pattern (a window plus
    ``globals`` global tokens: the first keys are seen by every query, the first queries see
    every earlier key); q, k, v: (B, N, H, D) -> (B, N, H, D).

    Queries are cut into blocks of ``block``; the keys a block's windows reach are one contiguous
    band of S = kb*block keys. The bands are overlapping strided *views* of k and v (nothing is
    copied or padded), the query blocks a view of q, and one call of PyTorch's fused SDPA kernel
    treats the blocks as heads, (H, nb, block, D) x (H, nb, S, D), with one (block, S) mask shared
    by every band: cost N*S, linear in N, with the kernel's fused softmax. Global keys are a second
    call merged through the log-sum-exps on the CPU (``_BandedFlash``), and elsewhere put in
    front of every band (which then has to be copied). The first blocks (whose band would start
    before key 0, or overlap the global keys) and a partial last block are small dense calls.
    Backward: on the CPU the flash kernel's backward on the same views, the band gradients folded
    back by kb strided adds (``_BandedFlash``); elsewhere autograd through the views."""
    bsz, n, heads, d = q.shape
    window, globals_ = pattern.window, getattr(pattern, "globals", 0)
    kb = band_blocks(window, block)
    head = (kb - 1) * block  # queries whose band would start before key 0
    if globals_:  # ... or whose window still reaches a global key (which the band must not repeat)
        head = max(head, -(-(globals_ + window - 1) // block) * block)
    full = (n // block) * block  # queries in whole blocks
    nbm = (full - head) // block  # blocks computed as bands
    if nbm <= 0:
        return _dense_sdpa(q, k, v, 0, 0, pattern)
    out = q.new_empty(bsz, n, heads, v.shape[-1])  # every row is written below (one copy each)
    out[:, :head] = _dense_sdpa(q[:, :head], k[:, :head], v[:, :head], 0, 0, pattern)
    start = head - (kb - 1) * block  # first key of the first band

    fused, mask = band_plan(window, block, globals_, q.dtype, q.device)

    def band(x, b):  # (H, nbm, S, D) views; with global keys in front: materialised
        w = _bands(x[b, start:full].permute(1, 0, 2), kb, block)
        if globals_:
            g = x[b, :globals_].permute(1, 0, 2)[:, None].expand(heads, nbm, globals_, x.shape[-1])
            w = torch.cat([g, w], dim=2)
        return w

    for b in range(bsz):  # the fused kernel takes 4-D views; one call per batch element
        qb = q[b, head:full].view(nbm, block, heads, d).permute(2, 0, 1, 3)  # (H, nbm, block, D)
        if fused:  # the CPU flash kernel directly: bands as views both ways, globals merged
            kw, vw = (x[b, start:full].permute(1, 0, 2) for x in (k, v))  # (H, L, D)
            kg, vg = ((x[b, :globals_].permute(1, 0, 2)[:, None] if globals_ else None)
                      for x in (k, v))  # (H, 1, g, D)
            res = _BandedFlash.apply(qb, kw, vw, kg, vg, mask, kb, block)
        else:
            res = torch.nn.functional.scaled_dot_product_attention(qb, band(k, b), band(v, b),
                                                                   attn_mask=mask)
        out[b, head:full] = res.permute(1, 2, 0, 3).reshape(nbm * block, heads, v.shape[-1])
    if full < n:  # a partial last block: a few rows, dense over the keys they can see
        k0 = 0 if globals_ else max(0, full - window + 1)
        out[:, full:] = _dense_sdpa(q[:, full:], k[:, k0:], v[:, k0:], full, k0, pattern)
    return out
