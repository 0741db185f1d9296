"""Shared test helpers: variant instances with small parameters, shapes, tolerances."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

import attnbench
from attnbench.attention.reference import reference_error
from attnbench.case import Case, dtype_name, parse_dtype

# Parameters that make each pattern non-trivial at test sizes (window < N, several blocks).
SMALL_PARAMS = {
    "sliding_window": {"window": 24, "block": 16},
    "strided": {"block": 16, "stride": 3},
    "bigbird": {"block": 16, "window": 2, "globals": 1, "randoms": 2, "seed": 3},
    "longformer": {"window": 20, "globals": 5, "block": 16},
    "elu": {"chunk": 16},
    "performer": {"chunk": 16, "features": 48, "seed": 1},
    "taylor": {"chunk": 16, "feature_dim": 8, "seed": 1},
}

# (B, N, H, D, H_kv): N = 1, N not a multiple of any block, batch > 1, head dim 80, and
# grouped-query attention (4 query heads sharing 2 key/value heads).
SHAPES = [(1, 1, 1, 32, 1), (2, 77, 4, 32, 2), (1, 150, 2, 80, 2)]
FLEX_SHAPES = [(2, 77, 4, 32, 2)]  # each flex shape compiles a kernel: keep them few
DTYPES = [torch.float32, torch.bfloat16]


# The benchmark's timing settings for a gated case in a test: every step the worker takes (first
# call, the gate of each input set, timing, the gate of the timed outputs), few repetitions.
GATE_TIMING = {
    "gate": True,
    "gate_rows": 48,
    "warmup": 1,
    "budget_s": 0.01,
    "min_reps": 5,
    "max_reps": 6,
    "l2_flush": False,
    "cuda_graphs": False,
    "noisy": 0.1,
    "memory": False,
    "cooldown_s": 0,
}


def case_for(
    spec: str,
    pass_: str = "fwd",
    dtype: str | torch.dtype = "float32",
    n: int = 256,
    batch: int = 2,
    heads: int = 2,
    head_dim: int = 32,
    level: str = "op",
    **extra,
) -> Case:
    """The CPU case of ``spec`` at a test shape, as the planner would build it."""
    return Case(
        level=level,
        **attnbench.get_variant(spec).case_fields,
        batch=batch,
        seq_len=n,
        heads=heads,
        kv_heads=heads,
        head_dim=head_dim,
        dtype=parse_dtype(dtype),
        device="cpu",
        pass_=pass_,
        **extra,
    )


def small_variant(name: str) -> attnbench.Variant:
    """The variant with the small test parameters its math and implementation accept."""
    info_params = attnbench.get_variant(name).params
    params = SMALL_PARAMS.get(attnbench.get_variant(name).info.math, {})
    return attnbench.get_variant(name, **{k: v for k, v in params.items() if k in info_params})


def variant_specs() -> list[str]:
    """Every registered variant twice: default parameters (window >= N at test sizes) and small
    ones."""
    specs = []
    for name in attnbench.variant_names():
        specs.append(attnbench.get_variant(name).label)
        small = small_variant(name).label
        if small not in specs:
            specs.append(small)
    return specs


def is_flex(spec: str) -> bool:
    return ".flex" in spec.split(":")[0]


def shape_id(shape, dtype) -> str:
    b, n, h, d, kv = shape
    return f"B{b}-N{n}-H{h}" + (f"-KV{kv}" if kv != h else "") + f"-D{d}-{dtype_name(dtype)}"


def random_qkv(shape, dtype, device="cpu", seed=0, requires_grad=False):
    """q (B, N, H, D) and k, v (B, N, H_kv, D) for a (B, N, H, D[, H_kv]) shape."""
    b, n, h, d, *kv = shape
    g = torch.Generator().manual_seed(seed)
    out = []
    for heads in (h, kv[0] if kv else h, kv[0] if kv else h):
        t = torch.randn((b, n, heads, d), generator=g, dtype=torch.float64)
        out.append(t.to(device=device, dtype=dtype).requires_grad_(requires_grad))
    return out


def assert_close_to_reference(
    name, got, plain, ref, dtype, multiple=3.0, gradient=False, scale=0.0, conditioning=0.0
):
    """Self-calibrating check (``attnbench.attention.reference.reference_error``, the benchmark
    gate's rule)."""
    why = reference_error(
        got, plain, ref, dtype, multiple, gradient=gradient, scale=scale, conditioning=conditioning
    )
    assert why is None, f"{name}: {why}"


ROOT = Path(__file__).resolve().parents[1]


def run_cli(
    *args: str, env: dict | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """``python run_bench.py ARGS`` from the project root; fails the test unless it exits 0."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run_bench.py"), *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def only_run(out: Path) -> Path:
    """The one run folder a command wrote under ``out``."""
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run
