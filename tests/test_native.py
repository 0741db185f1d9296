"""The native CPU kernels: built on first use, cached per source, compiler and processor, and a
machine that cannot build them gets a reason, not a crash. (Their numbers are checked like every
variant's: tests/test_variants.py runs linear.*.fused against the float64 reference.)"""

from __future__ import annotations

import pytest
import torch

from attnbench.attention import native
from attnbench.registry import get_variant
from tests.helpers import case_for


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """An empty cache and no loaded libraries, restored afterwards."""
    monkeypatch.setenv("ATTNBENCH_NATIVE_CACHE", str(tmp_path / "cache"))
    native.library.cache_clear()
    native.unavailable.cache_clear()
    yield tmp_path / "cache"
    native.library.cache_clear()
    native.unavailable.cache_clear()


def test_a_kernel_is_built_once_and_rebuilt_for_another_processor(fresh, monkeypatch):
    first = native.build("linear_chunked")
    assert first.parent == fresh and first.is_file()
    stamp = first.stat().st_mtime_ns
    assert native.build("linear_chunked") == first and first.stat().st_mtime_ns == stamp
    monkeypatch.setattr(native, "_processor", lambda: "model name: another\nflags: sse2")
    other = native.build("linear_chunked")
    assert other != first and other.is_file()  # never an AVX-512 build for an AVX2 machine


def test_no_compiler_is_a_reason_and_the_variant_is_not_supported(fresh, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(native.NativeUnavailable, match="/nonexistent/cc"):
        native.build("linear_chunked")
    (reason,) = native.unavailable("linear_chunked")
    assert "no C compiler" in reason
    reasons = get_variant("linear.elu.fused").not_supported_reasons(case_for("linear.elu.fused"))
    assert any("/nonexistent/cc" in r for r in reasons), reasons


def test_a_source_that_does_not_compile_says_what_the_compiler_said(fresh, monkeypatch, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "broken.c").write_text("int f(void) { return undeclared_name; }\n")
    monkeypatch.setattr(native, "SOURCES", src)
    with pytest.raises(native.NativeUnavailable, match="undeclared_name"):
        native.build("broken")
    assert not list(fresh.glob("*.so")) and not list(fresh.glob(".*"))  # no half-written file
    with pytest.raises(ValueError, match="known: broken"):
        native.build("missing")


def test_heads_split_between_threads_give_the_same_bits():
    from attnbench.variants.linear import FEAT_ELU, _FusedChunked

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 300, 5, 32).transpose(1, 2) for _ in range(3))
    outs = []
    for threads in (1, 2):
        prev = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            x = [t.detach().requires_grad_() for t in (q, k, v)]
            out = _FusedChunked.apply(*x, 64, FEAT_ELU)
            grads = torch.autograd.grad(out, x, torch.ones_like(out))
        finally:
            torch.set_num_threads(prev)
        outs.append((out, *grads))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_the_kernel_takes_cpu_tensors_only():
    lib = native.library("linear_chunked")
    with pytest.raises(TypeError, match="CPU tensors"):
        native.over_heads(lib.linear_chunked_fwd, 1, torch.empty(1, device="meta"))


@pytest.mark.parametrize(
    ("spec", "n", "pass_"),
    [
        ("linear.elu.fused:chunk=32", 4096, "fwd"),
        ("linear.elu.fused:chunk=64", 16384, "fwd_bwd"),
        ("linear.performer.fused:chunk=64", 16384, "fwd"),
    ],
)
def test_the_fused_kernel_passes_the_gate_at_long_sequences(spec, n, pass_):
    """The states sum N tokens. Accumulated token by token in place, their rounding grew with N:
    this gate failed at N = 16384 (the perf suite's, with 8 heads, from 4096 on), while the
    awkward shapes of tests/test_variants.py (N <= 150) passed."""
    from attnbench.bench import worker
    from tests.helpers import GATE_TIMING

    case = case_for(spec, pass_, n=n, batch=1, heads=2, head_dim=64)
    row = worker.time_case(case, GATE_TIMING)
    assert row["status"] == "ok", row.get("reason")
