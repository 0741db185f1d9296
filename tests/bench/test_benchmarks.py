"""The pytest-benchmark suite (``benchmarks/test_ops.py``) gates before it times and checks what
it timed: its test function, run with a stand-in for pytest-benchmark's fixture, times an honest
variant, fails a wrong one before timing it, and fails one that is right only on its first calls
after timing it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import attnbench

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "test_ops.py"
_spec = importlib.util.spec_from_file_location("attnbench_benchmarks_ops", PATH)
ops = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ops)

SHAPE = (1, 128, 2, 32)  # (B, N, H, D)
CALLS = {"n": 0}


class Benchmark:
    """pytest-benchmark's ``benchmark`` fixture, reduced to what the suite uses."""

    def __init__(self):
        self.extra_info: dict = {}
        self.timed = 0

    def __call__(self, fn):
        for _ in range(3):
            result = fn()
            self.timed += 1
        return result


def _sdpa(q, k, v):
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)


@pytest.fixture
def wrong_variants():
    @attnbench.register_variant("fused.bench_wrong", family="fused")
    def bench_wrong(q, k, v):
        """SDPA plus a small bias: wrong from its first call."""
        return _sdpa(q, k, v) + 1e-2

    @attnbench.register_variant("fused.bench_right_once", family="fused")
    def bench_right_once(q, k, v):
        """Right on its first three calls (the first call of each input set the gate checks),
        zeros after."""
        CALLS["n"] += 1
        out = _sdpa(q, k, v)
        return out if CALLS["n"] <= 3 else torch.zeros_like(out)

    CALLS["n"] = 0
    yield
    attnbench.unregister_variant("fused.bench_wrong")
    attnbench.unregister_variant("fused.bench_right_once")


def test_an_honest_variant_is_timed():
    bench = Benchmark()
    ops.test_attention(bench, "fused.sdpa", "fwd", SHAPE)
    assert bench.timed == 3 and bench.extra_info["flops"] > 0


@pytest.mark.usefixtures("wrong_variants")
def test_a_wrong_variant_fails_before_it_is_timed():
    bench = Benchmark()
    with pytest.raises(AssertionError, match="fused.bench_wrong fwd: incorrect"):
        ops.test_attention(bench, "fused.bench_wrong", "fwd", SHAPE)
    assert bench.timed == 0


@pytest.mark.usefixtures("wrong_variants")
def test_a_variant_wrong_after_its_first_calls_fails_on_what_was_timed():
    bench = Benchmark()
    with pytest.raises(AssertionError, match="a timed call is incorrect"):
        ops.test_attention(bench, "fused.bench_right_once", "fwd", SHAPE)
    assert bench.timed == 3
