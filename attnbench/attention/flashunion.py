"""Sparse attention as a union of dense pieces, each one call of the CPU flash kernel, merged
through their log-sum-exps.

A pattern's keys for a query block are split into *disjoint* sets that a flash kernel can take
without gathering: a band of consecutive key blocks (an overlapping strided view, as in
``blocksparse.banded_attention``), the global keys, the same-residue key blocks of a strided
pattern (a causal attention over the sequence re-ordered by block residue), or a few gathered
blocks (BigBird's random ones). Each piece p returns its output o_p and log-sum-exp l_p per query
row, and

    out = sum_p o_p * exp(l_p - L),   L = log sum_p exp(l_p)

is exactly softmax attention over the union. Backward: the flash backward of each piece, given the
*merged* output and L, yields exactly that piece's share of dq, dk and dv (P_ij = exp(s_ij - L_i)
and delta_i = dO_i . O_i are the union's), so no piece materialises its scores in either direction.

PyTorch's public SDPA returns no log-sum-exp; the CPU flash op
``aten._scaled_dot_product_flash_attention_for_cpu`` does, so this path is for the CPU. A fully
masked row comes back from it as output 0 with log-sum-exp 0, so pieces that can have empty rows
say so and their log-sum-exp is set to -inf there.

Layouts: per batch element, q, k and v are (H, Np, D) (views of (Np, H, D) slices, Np the length
padded for the pattern), and the merged query rows are ``rows``: whole blocks from ``q0`` to Np,
returned as (H, nq, block, D).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attnbench.attention.patterns import BigBird, Pattern, Strided
from attnbench.case import device_key

FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
FLASH_BACK = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def additive(seen: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean 'seen' -> additive mask (0 where seen, -inf elsewhere) in ``dtype``."""
    return torch.zeros(seen.shape, dtype=dtype, device=seen.device).masked_fill(
        ~seen, float("-inf")
    )


def bands(x: torch.Tensor, kb: int, block: int) -> torch.Tensor:
    """(H, L, D) keys -> (H, nb, kb*block, D) overlapping bands, band i starting at key i*block:
    a strided view, nothing copied."""
    return x.unfold(1, kb * block, block).transpose(-1, -2)


def fold_bands_into(dst: torch.Tensor, dbands: torch.Tensor, kb: int, block: int) -> None:
    """Add the gradient of ``bands`` to ``dst`` (H, (nb+kb-1)*block, D), contiguous: each key
    block sums the kb band slots it appears in (kb strided adds; autograd's unfold_backward
    zero-fills and scatters instead, 3-4x slower here)."""
    h, nb, _, d = dbands.shape
    blocks = dst.view(h, nb + kb - 1, block, d)
    slots = dbands.view(h, nb, kb, block, d)
    for s in range(kb):
        blocks[:, s : s + nb].add_(slots[:, :, s])


class Piece:
    """One dense piece of a union: ``forward`` -> (o (H, nq, block, D), lse (H, nq, block)) for
    the merged rows; ``backward`` adds its share of the gradients into dq, dk, dv (H, Np, D)."""

    def forward(self, q, k, v, q0: int, block: int):
        raise NotImplementedError

    def backward(self, q, k, v, q0, block, grad, out, lse, dq, dk, dv) -> None:
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class Band(Piece):
    """Key blocks I-kb+1 .. I of query block I as one band (a view), under one (block, kb*block)
    additive ``mask`` shared by every band (it may be (1, 1, block, kb*block))."""

    kb: int
    mask: torch.Tensor

    def _views(self, q, k, v, q0, block):
        h, _, d = q.shape
        k0 = q0 - (self.kb - 1) * block
        qb = q[:, q0:].view(h, -1, block, d)
        return qb, bands(k[:, k0:], self.kb, block), bands(v[:, k0:], self.kb, block), k0

    def forward(self, q, k, v, q0, block):
        qb, kw, vw, _ = self._views(q, k, v, q0, block)
        return FLASH(qb, kw, vw, attn_mask=self.mask)

    def backward(self, q, k, v, q0, block, grad, out, lse, dq, dk, dv):
        qb, kw, vw, k0 = self._views(q, k, v, q0, block)
        dqb, dkb, dvb = FLASH_BACK(grad, qb, kw, vw, out, lse, 0.0, False, attn_mask=self.mask)
        dq[:, q0:].view_as(dqb).add_(dqb)
        fold_bands_into(dk[:, k0:], dkb, self.kb, block)
        fold_bands_into(dv[:, k0:], dvb, self.kb, block)


@dataclass(frozen=True, eq=False)
class Globals(Piece):
    """The first ``keys`` keys, seen by every merged row."""

    keys: int

    def forward(self, q, k, v, q0, block):
        h = q.shape[0]
        o, lse = FLASH(q[None, :, q0:], k[None, :, : self.keys], v[None, :, : self.keys])
        return o.view(h, -1, block, v.shape[-1]), lse.view(h, -1, block)

    def backward(self, q, k, v, q0, block, grad, out, lse, dq, dk, dv):
        h = q.shape[0]
        flat = lambda x: x.reshape(1, h, -1, x.shape[-1])  # noqa: E731
        dq1, dk1, dv1 = FLASH_BACK(
            flat(grad),
            q[None, :, q0:],
            k[None, :, : self.keys],
            v[None, :, : self.keys],
            flat(out),
            lse.reshape(1, h, -1),
            0.0,
            False,
        )
        dq[:, q0:].add_(dq1[0])
        dk[:, : self.keys].add_(dk1[0])
        dv[:, : self.keys].add_(dv1[0])


@dataclass(frozen=True, eq=False)
class Residues(Piece):
    """Strided keys: query block I over key blocks I - m*stride, m >= 1, *except* the part of
    block I - stride that the band holds. Ordering the blocks by their residue mod ``stride``
    turns this into one causal attention per residue, shifted by one block: in residue order,
    query position i sees keys j <= i - block (every earlier same-residue block, and of the one
    just before it the keys up to its own offset). The merged rows must start at block ``stride``
    and Np must be a multiple of stride*block; the re-ordering costs one copy of q, k and v."""

    stride: int

    def _to(self, x, block):  # (H, Np, D) -> (H, stride, Np/stride, D): blocks grouped by residue
        h, np_, d = x.shape
        t = np_ // (self.stride * block)
        return (
            x.reshape(h, t, self.stride, block, d)
            .transpose(1, 2)
            .reshape(h, self.stride, t * block, d)
        )

    # (H, stride, (t-1)*block, ...) -> (H, (t-1)*stride, block, ...)
    def _from_rows(self, x, block):
        h, s, m = x.shape[:3]
        tail = x.shape[3:]
        y = x.reshape(h, s, m // block, block, *tail).transpose(1, 2)
        return y.reshape(h, (m // block) * s, block, *tail)

    # merged rows (H, nq, block, ...) -> (H, stride, (t-1)*block, ...)
    def _rows_to(self, x, block):
        h, nq = x.shape[:2]
        tail = x.shape[3:]
        y = x.reshape(h, nq // self.stride, self.stride, block, *tail).transpose(1, 2)
        return y.reshape(h, self.stride, (nq // self.stride) * block, *tail)

    def forward(self, q, k, v, q0, block):
        qs, ks, vs = (self._to(x, block) for x in (q, k, v))
        o, lse = FLASH(qs[:, :, block:], ks[:, :, :-block], vs[:, :, :-block], is_causal=True)
        return self._from_rows(o, block), self._from_rows(lse, block)

    def backward(self, q, k, v, q0, block, grad, out, lse, dq, dk, dv):
        h, np_, d = q.shape
        qs, ks, vs = (self._to(x, block) for x in (q, k, v))
        g, o, l_ = (self._rows_to(x, block) for x in (grad, out, lse))
        dqs, dks, dvs = FLASH_BACK(
            g, qs[:, :, block:], ks[:, :, :-block], vs[:, :, :-block], o, l_, 0.0, True
        )
        t1 = np_ // (self.stride * block) - 1

        def add_back(dst, src):  # (H, stride, t1*block, D) in residue order -> block order
            view = dst.view(h, t1, self.stride, block, src.shape[-1])
            view.add_(src.view(h, self.stride, t1, block, src.shape[-1]).transpose(1, 2))

        add_back(dq[:, q0:], dqs)
        add_back(dk[:, : t1 * self.stride * block], dks)
        add_back(dv[:, : t1 * self.stride * block], dvs)


@dataclass(frozen=True, eq=False)
class Gathered(Piece):
    """A few key blocks per query block, ``blocks`` (nq, r) block indices, gathered (copied) whole
    blocks at a time; ``mask`` (1, nq, 1, r*block) hides padding and blocks another piece holds,
    ``empty`` (nq,) marks query blocks that see none of them."""

    blocks: torch.Tensor
    mask: torch.Tensor
    empty: torch.Tensor

    def _gather(self, x, block):  # (H, Np, D) -> (H, nq, r*block, D)
        h, np_, d = x.shape
        nq, r = self.blocks.shape
        tokens = x.transpose(0, 1)  # (Np, H, D): whole blocks are contiguous slabs to copy
        if not tokens.is_contiguous():
            tokens = tokens.contiguous()
        picked = tokens.view(np_ // block, block, h, d).index_select(0, self.blocks.reshape(-1))
        return picked.view(nq, r * block, h, d).permute(2, 0, 1, 3)

    def forward(self, q, k, v, q0, block):
        h, _, d = q.shape
        qb = q[:, q0:].view(h, -1, block, d)
        o, lse = FLASH(qb, self._gather(k, block), self._gather(v, block), attn_mask=self.mask)
        lse[:, self.empty] = float("-inf")
        return o, lse

    def backward(self, q, k, v, q0, block, grad, out, lse, dq, dk, dv):
        h, np_, d = q.shape
        qb = q[:, q0:].view(h, -1, block, d)
        dqb, dkg, dvg = FLASH_BACK(
            grad,
            qb,
            self._gather(k, block),
            self._gather(v, block),
            out,
            lse,
            0.0,
            False,
            attn_mask=self.mask,
        )
        dq[:, q0:].view_as(dqb).add_(dqb)
        flat = self.blocks.reshape(-1)
        for dst, src in ((dk, dkg), (dv, dvg)):
            dst.view(h, np_ // block, block, -1).index_add_(
                1, flat, src.reshape(h, -1, block, src.shape[-1])
            )


class _Union(torch.autograd.Function):
    """Merged attention of rows q0.. over the pieces' disjoint key sets (see the module doc)."""

    @staticmethod
    def forward(ctx, q, k, v, pieces, q0, block):
        parts = [p.forward(q, k, v, q0, block) for p in pieces]
        lse = parts[0][1]
        for _, l_ in parts[1:]:
            lse = torch.logaddexp(lse, l_)
        out = None
        for o, l_ in parts:  # o are the pieces' own fresh outputs: scaled in place
            o = o.mul_(torch.exp(l_ - lse)[..., None].to(o.dtype))
            out = o if out is None else out.add_(o)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.pieces, ctx.q0, ctx.block = pieces, q0, block
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse = ctx.saved_tensors
        grad = grad.contiguous()
        dq, dk, dv = (torch.zeros(x.shape, dtype=x.dtype, device=x.device) for x in (q, k, v))
        for p in ctx.pieces:
            p.backward(q, k, v, ctx.q0, ctx.block, grad, out, lse, dq, dk, dv)
        return dq, dk, dv, None, None, None


def union_of_pieces(q, k, v, pieces, q0: int, block: int) -> torch.Tensor:
    """Rows q0.. of (H, Np, D) q over the union of ``pieces``' keys:
    (H, (Np-q0)/block, block, D)."""
    return _Union.apply(q, k, v, pieces, q0, block)


# ---------------------------------------------------------------------------------------------
# Patterns as unions


@dataclass(frozen=True, eq=False)
class UnionPlan:
    head: int  # query blocks computed densely (their keys overlap several pieces)
    multiple: int  # Np is a multiple of this many tokens
    pieces: tuple[Piece, ...]


def dense_masked(q, k, v, q0: int, k0: int, pattern: Pattern) -> torch.Tensor:
    """Dense masked SDPA of queries q0.. against keys k0.. ((B, L, H, D) slices) under ``pattern``:
    the few rows whose keys straddle several pieces."""
    qi = torch.arange(q0, q0 + q.shape[1], device=q.device).view(-1, 1)
    ki = torch.arange(k0, k0 + k.shape[1], device=q.device).view(1, -1)
    seen = pattern.mask_fn(max(q0 + q.shape[1], k0 + k.shape[1]), q.device)(qi, ki)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=seen
    )
    return out.transpose(1, 2)


def _band_mask(kb: int, block: int, first_seen_after_diag: bool, dtype, device) -> torch.Tensor:
    """(block, kb*block): the last key block causal (p' <= p), the others fully seen; with
    ``first_seen_after_diag`` the first block only where p' > p (its p' <= p part is elsewhere)."""
    p = torch.arange(block).view(-1, 1)
    c = torch.arange(kb * block).view(1, -1)
    cb, cp = c // block, c % block
    seen = (cb < kb - 1) | (cp <= p)
    if first_seen_after_diag:
        seen &= (cb > 0) | (cp > p)
    return additive(seen, dtype).to(device)


@functools.lru_cache(maxsize=32)
def union_plan(pattern: Pattern, n: int, dtype: torch.dtype, device: str) -> UnionPlan:
    """How ``pattern`` at length ``n`` splits into pieces (cached: masks and gather indices are
    the 'mask construction' the harness times separately)."""
    if isinstance(pattern, Strided):
        b, s = pattern.block, pattern.stride
        # band: blocks I-s .. I (the first only past the diagonal offset), residues: the rest
        band = Band(s + 1, _band_mask(s + 1, b, True, dtype, device))
        return UnionPlan(head=s, multiple=s * b, pieces=(band, Residues(s)))
    if isinstance(pattern, BigBird):
        b, w, g, r = pattern.block, pattern.window, pattern.globals, pattern.randoms
        head = g + w - 1  # from here on the band and the global blocks are disjoint
        nb = -(-n // b)
        pieces: list[Piece] = [Band(w, _band_mask(w, b, False, dtype, device))]
        if g:
            pieces.append(Globals(g * b))
        if r and nb > head:
            table = pattern.random_table(nb)[head:]  # (nq, nb) bool
            rows = torch.arange(head, nb).view(-1, 1)
            cols = torch.arange(nb).view(1, -1)
            own = table & (cols >= g) & (cols <= rows - w)  # not in the band or the globals
            width = max(1, int(table.sum(1).max()))
            order = torch.sort(table.to(torch.int8), dim=1, descending=True, stable=True).indices
            blocks = order[:, :width]  # (nq, width) the row's random blocks first
            keep = torch.gather(own, 1, blocks)  # (nq, width)
            seen = keep.repeat_interleave(b, dim=1)[None, :, None, :]
            pieces.append(
                Gathered(
                    blocks.contiguous().to(device),
                    additive(seen, dtype).to(device),
                    (~keep.any(1)).to(device),
                )
            )
        return UnionPlan(head=head, multiple=b, pieces=tuple(pieces))
    raise ValueError(f"no union plan for pattern {type(pattern).__name__}; valid: Strided, BigBird")


def union_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern
) -> torch.Tensor:
    """Softmax attention under a ``Strided`` or ``BigBird`` pattern on the CPU; (B, N, H, D) in
    and out. The first ``head`` blocks are one dense masked call; the rest is the union of the
    plan's pieces (``_Union``), per batch element."""
    bsz, n, heads, d = q.shape
    block = pattern.block
    plan = union_plan(pattern, n, q.dtype, device_key(q.device))
    q0 = plan.head * block
    np_ = -(-n // plan.multiple) * plan.multiple
    if np_ - q0 < plan.multiple:  # too short for the pieces: all dense
        return dense_masked(q, k, v, 0, 0, pattern)
    if np_ > n:  # zero-padded keys come after every real query: no real row sees them
        q, k, v = (F.pad(x, (0, 0, 0, 0, 0, np_ - n)) for x in (q, k, v))
    out = q.new_empty(bsz, np_, heads, v.shape[-1])
    out[:, :q0] = dense_masked(q[:, :q0], k[:, :q0], v[:, :q0], 0, 0, pattern)
    for b in range(bsz):
        qh, kh, vh = (x[b].permute(1, 0, 2) for x in (q, k, v))  # (H, Np, D) views
        res = union_of_pieces(qh, kh, vh, plan.pieces, q0, block)  # (H, nq, block, D)
        out[b, q0:] = res.permute(1, 2, 0, 3).reshape(np_ - q0, heads, v.shape[-1])
    return out[:, :n]
