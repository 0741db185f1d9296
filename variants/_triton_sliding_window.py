"""Triton forward kernel of causal sliding-window attention (FlashAttention-2 style).

One program computes ``BLOCK_M`` queries of one (batch, head): it walks only the key blocks that
intersect the window ``[i - window + 1, i]`` of its rows, with an online softmax in float32, so
work grows as N * window. Imported lazily: ``triton.jit`` reads ``TRITON_INTERPRET`` when the
kernel is defined, and on a CPU the kernel runs only under the interpreter (``TRITON_INTERPRET=1``),
which is how it is tested for correctness without a GPU.

- float32 inputs multiply in IEEE float32 (``input_precision="ieee"``), never TF32: a TF32 product
  carries 10 mantissa bits and would fail the float64 reference check of a float32 variant.
- Head dims are powers of two from 16 to 256 (``tl.arange`` needs a power of two: other head dims
  would be padded, computing zeros; the variant declares them unsupported instead).
- Tile sizes, warps and pipeline stages are chosen per head dim and dtype (``config``) so that
  q, k and v tiles of every stage fit Hopper's 228 KiB of shared memory with room to spare.
- Offsets are 64-bit: B * N * H * D may exceed 2^31 elements at long N.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=1)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def sliding_window_fwd(
        Q, K, V, Out,
        stride_b, stride_n, stride_h,  # shared by q, k, v, o (contiguous (B, N, H, D))
        H, N, WINDOW, scale,
        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1).to(tl.int64)
        base = (pid_bh // H) * stride_b + (pid_bh % H) * stride_h  # int64: no overflow past 2^31
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, HEAD_DIM)
        rows_m = offs_m.to(tl.int64)[:, None] * stride_n
        q = tl.load(Q + base + rows_m + offs_d[None, :], mask=offs_m[:, None] < N, other=0.0)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        first_key = tl.maximum(pid_m * BLOCK_M - WINDOW + 1, 0)
        lo = (first_key // BLOCK_N) * BLOCK_N
        hi = tl.minimum((pid_m + 1) * BLOCK_M, N)
        for start in range(lo, hi, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            kv_mask = offs_n[:, None] < N
            rows_n = offs_n.to(tl.int64)[:, None] * stride_n
            k = tl.load(K + base + rows_n + offs_d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(V + base + rows_n + offs_d[None, :], mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION).to(tl.float32) * scale
            delta = offs_m[:, None] - offs_n[None, :]
            seen = (delta >= 0) & (delta < WINDOW) & (offs_n[None, :] < N)
            s = tl.where(seen, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp(s - m_safe[:, None])
            alpha = tl.exp(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v,
                                                input_precision=PRECISION).to(tl.float32)
            m_i = m_new
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(Out + base + rows_m + offs_d[None, :], out.to(Out.dtype.element_ty),
                 mask=offs_m[:, None] < N)

    return triton, sliding_window_fwd


HEAD_DIMS = (16, 32, 64, 128, 256)


def config(head_dim: int, dtype: torch.dtype) -> dict:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) by head dim and element size: per stage a k and
    a v tile of BLOCK_N x D, plus the q tile, within Hopper's 228 KiB of shared memory."""
    wide = dtype == torch.float32
    if head_dim <= 64:
        return dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3)
    if head_dim <= 128:
        return dict(BLOCK_M=64, BLOCK_N=32 if wide else 64,
                    num_warps=4, num_stages=2 if wide else 3)
    return dict(BLOCK_M=32 if wide else 64, BLOCK_N=32, num_warps=8, num_stages=2)


def sliding_window_forward(q: torch.Tensor, k: torch.Tensor,
                           v: torch.Tensor, window: int) -> torch.Tensor:
    """(B, N, H, D) -> (B, N, H, D); forward only; D one of ``HEAD_DIMS``."""
    triton, kernel = _kernel()
    q, k, v = (x.contiguous() for x in (q, k, v))
    bsz, n, heads, d = q.shape
    if d not in HEAD_DIMS:
        raise ValueError(f"head_dim {d} not supported by the Triton kernel; valid: {HEAD_DIMS}")
    out = torch.empty_like(q)
    cfg = config(d, q.dtype)
    grid = (triton.cdiv(n, cfg["BLOCK_M"]), bsz * heads)
    kernel[grid](
        q, k, v, out,
        q.stride(0), q.stride(1), q.stride(2),
        heads, n, window, d**-0.5,
        HEAD_DIM=d, PRECISION="ieee" if q.dtype == torch.float32 else "tf32", **cfg,
    )
    return out
