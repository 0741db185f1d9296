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
- Tile sizes, warps and pipeline stages are chosen per head dim and dtype (``TILES``) from an
  ahead-of-time compile for Hopper on the CPU (``aot_resources``, via
  ``attnbench.attention.triton_aot``): the largest pipelined tiles that spill no registers.
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
        Q,
        K,
        V,
        Out,
        stride_b,
        stride_n,
        stride_h,  # shared by q, k, v, o (contiguous (B, N, H, D))
        H,
        N,
        WINDOW,
        scale,
        HEAD_DIM: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
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
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION).to(
                tl.float32
            )
            m_i = m_new
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(
            Out + base + rows_m + offs_d[None, :],
            out.to(Out.dtype.element_ty),
            mask=offs_m[:, None] < N,
        )

    return triton, sliding_window_fwd


HEAD_DIMS = (16, 32, 64, 128, 256)

# Tiles (BLOCK_M, BLOCK_N, num_warps, num_stages) by head dim, for 2-byte dtypes ("half":
# bfloat16 and float16, which compile alike) and float32, chosen from an ahead-of-time compile
# for Hopper (``aot_resources``: GPUTarget("cuda", 90, 32), Triton 3.9.0, its ptxas 13.4 with
# Triton's flags; no GPU needed). Rule: zero stack frame and zero spill stores and loads in both
# specializations a launch gets (``SPECS``), shared memory within Hopper's 227 KiB per block,
# software-pipelined (num_stages >= 2: one stage waits out every k/v load); then the most work
# per CTA (BLOCK_M * BLOCK_N), fewer warps, larger BLOCK_M (fewer passes over k and v), more
# stages. Swept (``choose_tile`` redoes it): half BLOCK_M 64/128, BLOCK_N 32/64/128, 4/8 warps,
# 1-3 stages in both specs (bfloat16; float16 at aligned N, identical), and 32x128 at D = 256;
# float32 BLOCK_M 32/64/128, BLOCK_N 16/32/64/128, 4/8 warps, 2-3 stages at aligned N (up to
# 4096 S elements at D = 128, 2048 at D = 256), the spill-free ones again at ragged N. Head dims
# 16 and 32 were not swept (their tiles do not spill).
#
# ptxas figures: registers / stack bytes / spill store bytes / spill load bytes
#   D    dtype  tile: M x N, warps, stages   aligned N             ragged N              shared
#   64   half   old   64 x 64,  4, 3         140/0/0/0             128/0/0/0              56 KiB
#               new  128 x 128, 8, 3         212/0/0/0             252/0/0/0             112 KiB
#   128  half   old   64 x 64,  4, 3         192/0/0/0             208/0/0/0             112 KiB
#               new  128 x 64,  8, 3         219/0/0/0             234/0/0/0             128 KiB
#   256  half   old   64 x 32,  8, 2         175/0/0/0             210/0/0/0              96 KiB
#               new  128 x 32,  8, 3         243/0/0/0             251/0/0/0             160 KiB
#   64   fp32   old   64 x 64,  4, 3         32/6560/14760/21544   32/7144/15308/21376    96 KiB
#               new   32 x 64,  4, 3         254/0/0/0             192/0/0/0              80 KiB
#   128  fp32   old   64 x 32,  4, 2         32/8536/18472/24224   32/8528/18524/23788    72 KiB
#               new   32 x 64,  8, 3         96/0/0/0              106/0/0/0             152 KiB
#   256  fp32   old   32 x 32,  8, 2         126/0/0/0             156/0/0/0             100 KiB
#               new   32 x 32,  8, 3         126/0/0/0             160/0/0/0             164 KiB
#   16, 32      both  64 x 64,  4, 3         (unchanged) half 85-95 registers, fp32 168-228; no
#                                            stack, no spill
# The old half tiles spill only when compiled with no divisibility at all (a bare ASTSource; a
# launch never compiles that for D >= 16, see ``sliding_window_forward``): D = 64 24 B stack,
# D = 128 680 B stack (708 B spill stores), D = 256 880 B stack (928 B stores), the order of the
# 632 and 616 B once reported; compiled that way the new tiles spill too (104, 232, 1704 B).
# D = 256 (half) still caps the tile at 4096 S elements per CTA: every pipelined larger tile
# spills or overflows shared memory. FlashAttention-2's usual 128x64 (8 warps, 2 stages) spills
# 40 B (40 B stores and loads) at aligned N and 168 B (164 B) at ragged N (``STILL_SPILLS``);
# with 4 warps 64x64 spills 96-432 B and 128x32 about 1.5 KB; 64x128 with 2 stages needs 288 KiB
# of shared memory; 128x64 spills nothing at aligned N only unpipelined (1 stage, 254 registers)
# and 16 B at ragged N. float32 at D = 256 stays at 1024 (32x32): 64x16 spills 28 B at ragged N,
# and every 2048 tile spills 0.8-19 KB.
TILES = {
    16: {"half": (64, 64, 4, 3), "float32": (64, 64, 4, 3)},
    32: {"half": (64, 64, 4, 3), "float32": (64, 64, 4, 3)},
    64: {"half": (128, 128, 8, 3), "float32": (32, 64, 4, 3)},
    128: {"half": (128, 64, 8, 3), "float32": (32, 64, 8, 3)},
    256: {"half": (128, 32, 8, 3), "float32": (32, 32, 8, 3)},
}
# tiles larger than the chosen one that still spill, with their (stack, spill stores, spill
# loads) bytes per spec, from the same compile (Triton 3.9.0)
STILL_SPILLS = {
    (256, "half"): ((128, 64, 8, 2), {"aligned N": (40, 40, 40), "ragged N": (168, 164, 164)}),
}
TILES_FROM = "3.9.0"  # the Triton version the figures above come from
HOPPER_SHARED = 227 * 1024  # bytes of shared memory one block may use on sm_90

# arguments a launch specializes as divisible by 16: pointers (16-byte aligned, which
# ``sliding_window_forward`` ensures), strides (multiples of D >= 16), and N and the window
# where they are multiples of 16 (the GPU suite: N 512 .. 32k, window 1024); the window's
# divisibility alone leaves the figures as they are, N's changes them
_ALIGNED = ("Q", "K", "V", "Out", "stride_b", "stride_n", "stride_h")
SPECS = {"aligned N": _ALIGNED + ("N", "WINDOW"), "ragged N": _ALIGNED}
_KEYS = ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")


def _kind(dtype: torch.dtype) -> str:
    return "float32" if dtype == torch.float32 else "half"


def config(head_dim: int, dtype: torch.dtype) -> dict:
    """BLOCK_M, BLOCK_N, num_warps and num_stages for ``head_dim`` and ``dtype`` from ``TILES``
    (a head dim between two listed ones takes the next larger one's tiles)."""
    d = min((h for h in TILES if h >= head_dim), default=max(TILES))
    return dict(zip(_KEYS, TILES[d][_kind(dtype)]))


_TRITON_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _jit_kernel():
    return _kernel()[1]


def _aot_job(
    head_dim: int, dtype: torch.dtype, tile: tuple | None, spec: str, target: tuple[int, int]
) -> dict:
    block_m, block_n, num_warps, num_stages = tile or TILES[head_dim][_kind(dtype)]
    ptr = f"*{_TRITON_DTYPES[dtype]}"
    signature = {
        "Q": ptr,
        "K": ptr,
        "V": ptr,
        "Out": ptr,
        "stride_b": "i32",
        "stride_n": "i32",
        "stride_h": "i32",
        "H": "i32",
        "N": "i32",
        "WINDOW": "i32",
        "scale": "fp32",
        "HEAD_DIM": "constexpr",
        "BLOCK_M": "constexpr",
        "BLOCK_N": "constexpr",
        "PRECISION": "constexpr",
    }
    constexprs = dict(
        HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n, PRECISION=_precision(dtype)
    )
    attrs = {(list(signature).index(name),): [["tt.divisibility", 16]] for name in SPECS[spec]}
    return dict(
        signature=signature,
        constexprs=constexprs,
        attrs=attrs,
        target=target,
        options=dict(num_warps=num_warps, num_stages=num_stages),
    )


def aot_batch(requests, target: tuple[int, int] = (90, 32)) -> list:
    """ptxas's figures (``triton_aot.Resources``) of the forward kernel compiled ahead of time
    for ``target`` (Hopper by default; no GPU needed), one per request (head_dim, dtype, tile
    or None for the shipped one, spec: a key of ``SPECS``); one child process under the
    interpreter."""
    from attnbench.attention import triton_aot

    jobs = [_aot_job(*r, target) for r in requests]
    return triton_aot.resources_batch(f"{__name__}:_jit_kernel", jobs)


def aot_resources(
    head_dim: int,
    dtype: torch.dtype,
    tile: tuple | None = None,
    spec: str = "aligned N",
    target: tuple[int, int] = (90, 32),
):
    """``aot_batch`` of one request: ``tile`` (BLOCK_M, BLOCK_N, num_warps, num_stages; default
    the shipped one) specialized as a launch is (``SPECS[spec]``)."""
    return aot_batch([(head_dim, dtype, tile, spec)], target)[0]


def pick_tile(figures: dict) -> tuple | None:
    """The tile ``TILES`` takes among ``figures`` ({tile: [Resources per spec]}), by its rule;
    None where none qualifies."""
    ok = [
        t
        for t, rs in figures.items()
        if t[3] >= 2 and all(r.spill_free and r.shared <= HOPPER_SHARED for r in rs)
    ]
    return max(ok, key=lambda t: (t[0] * t[1], -t[2], t[0], t[3]), default=None)


def choose_tile(head_dim: int, dtype: torch.dtype, candidates=None) -> tuple | None:
    """Compile every candidate tile (default: the sweep behind ``TILES``) in both specs and pick
    one; minutes of CPU."""
    import itertools

    if candidates is None:
        candidates = itertools.product((32, 64, 128), (16, 32, 64, 128), (4, 8), (2, 3))
    tiles = list(map(tuple, candidates))
    figures = aot_batch([(head_dim, dtype, t, spec) for t in tiles for spec in SPECS])
    return pick_tile(
        {t: figures[i * len(SPECS) : (i + 1) * len(SPECS)] for i, t in enumerate(tiles)}
    )


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _aligned(x: torch.Tensor) -> torch.Tensor:
    """Contiguous and 16-byte aligned, the specialization ``TILES`` was chosen for."""
    x = x.contiguous()
    return x if x.data_ptr() % 16 == 0 else x.clone()


def sliding_window_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, *, tile: tuple | None = None
) -> torch.Tensor:
    """(B, N, H, D) -> (B, N, H, D); forward only; D one of ``HEAD_DIMS``; ``tile`` (BLOCK_M,
    BLOCK_N, num_warps, num_stages) overrides ``config`` (the tests run every shipped tile)."""
    triton, kernel = _kernel()
    q, k, v = (_aligned(x) for x in (q, k, v))
    bsz, n, heads, d = q.shape
    if d not in HEAD_DIMS:
        raise ValueError(f"head_dim {d} not supported by the Triton kernel; valid: {HEAD_DIMS}")
    out = torch.empty_like(q)
    cfg = config(d, q.dtype) if tile is None else dict(zip(_KEYS, tile))
    grid = (triton.cdiv(n, cfg["BLOCK_M"]), bsz * heads)
    kernel[grid](
        q,
        k,
        v,
        out,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        heads,
        n,
        window,
        d**-0.5,
        HEAD_DIM=d,
        PRECISION=_precision(q.dtype),
        **cfg,
    )
    return out
