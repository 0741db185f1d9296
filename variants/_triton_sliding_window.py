"""Triton forward kernel of causal sliding-window attention (FlashAttention-2 style).

One program computes ``BLOCK_M`` queries of one (batch, head): it walks only the key blocks that
intersect the window ``[i - window + 1, i]`` of its rows, with an online softmax in float32, so
work grows as N * window. Imported lazily: ``triton.jit`` reads ``TRITON_INTERPRET`` when the
kernel is defined, and on a CPU the kernel runs only under the interpreter (``TRITON_INTERPRET=1``),
which is how it is tested for correctness without a GPU.
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
        Q, K, V, O,
        stride_b, stride_n, stride_h,  # shared by q, k, v, o (contiguous (B, N, H, D))
        H, N, WINDOW, scale,
        HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        base = (pid_bh // H) * stride_b + (pid_bh % H) * stride_h
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, D_PAD)
        d_ok = offs_d[None, :] < HEAD_DIM
        q = tl.load(Q + base + offs_m[:, None] * stride_n + offs_d[None, :],
                    mask=(offs_m[:, None] < N) & d_ok, other=0.0)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
        first_key = tl.maximum(pid_m * BLOCK_M - WINDOW + 1, 0)
        lo = (first_key // BLOCK_N) * BLOCK_N
        hi = tl.minimum((pid_m + 1) * BLOCK_M, N)
        for start in range(lo, hi, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            kv_mask = (offs_n[:, None] < N) & d_ok
            k = tl.load(K + base + offs_n[:, None] * stride_n + offs_d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(V + base + offs_n[:, None] * stride_n + offs_d[None, :], mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k)).to(tl.float32) * scale
            delta = offs_m[:, None] - offs_n[None, :]
            seen = (delta >= 0) & (delta < WINDOW) & (offs_n[None, :] < N)
            s = tl.where(seen, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp(s - m_safe[:, None])
            alpha = tl.exp(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v).to(tl.float32)
            m_i = m_new
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(O + base + offs_m[:, None] * stride_n + offs_d[None, :], out.to(O.dtype.element_ty),
                 mask=(offs_m[:, None] < N) & d_ok)

    return triton, sliding_window_fwd


def sliding_window_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int,
                           block_m: int = 64, block_n: int = 64) -> torch.Tensor:
    """(B, N, H, D) -> (B, N, H, D); forward only."""
    triton, kernel = _kernel()
    q, k, v = (x.contiguous() for x in (q, k, v))
    bsz, n, heads, d = q.shape
    out = torch.empty_like(q)
    d_pad = max(16, triton.next_power_of_2(d))
    grid = (triton.cdiv(n, block_m), bsz * heads)
    kernel[grid](
        q, k, v, out,
        q.stride(0), q.stride(1), q.stride(2),
        heads, n, window, d**-0.5,
        HEAD_DIM=d, D_PAD=d_pad, BLOCK_M=block_m, BLOCK_N=block_n,
    )
    return out
