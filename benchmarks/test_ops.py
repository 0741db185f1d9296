"""Op-level pytest-benchmark cases generated from the registry (see conftest.py for usage).

Each case is built and gated by the harness itself (``attnbench.bench.worker.prepare_op``): both
input sets' first outputs are checked against the float64 reference before anything is timed,
and the result of the last timed call after, so this second way of timing keeps the project's
promise: a wrong variant fails here instead of being timed.
"""

from __future__ import annotations

import pytest

import attnbench
from attnbench.bench import worker
from attnbench.case import Case

SIZES = [(1, 1024, 8, 64), (1, 4096, 8, 64)]  # (B, N, H, D)
# too slow on purpose (token loops) or only a correctness path on a CPU (Triton's interpreter)
EXCLUDED_IMPLS = {"recurrent", "triton"}


def _params():
    for name in attnbench.variant_names():
        variant = attnbench.get_variant(name)
        if variant.impl in EXCLUDED_IMPLS:
            continue
        for pass_ in ("fwd", "fwd_bwd"):
            for b, n, h, d in SIZES:
                yield pytest.param(
                    variant.label,
                    pass_,
                    (b, n, h, d),
                    id=f"{variant.label}-{pass_}-B{b}-N{n}-H{h}-D{d}",
                )


def gated(spec: str, pass_: str, shape: tuple[int, int, int, int]) -> worker.Prepared:
    """The case's pass, prepared and gated as the benchmark's worker does (``pytest.skip`` where
    the variant cannot run; ``AssertionError`` naming the reason where it is incorrect)."""
    variant = attnbench.get_variant(spec)
    b, n, h, d = shape
    case = Case(
        level="op",
        **variant.case_fields,
        batch=b,
        seq_len=n,
        heads=h,
        kv_heads=h,
        head_dim=d,
        pass_=pass_,
    )
    reasons = variant.not_supported_reasons(case)
    if reasons:
        pytest.skip("; ".join(reasons))
    p = worker.prepare_op(case, rows=48)
    for run, check in zip(p.fns, p.checks):  # first calls (compile, caches) and their gate
        why = check(run())
        assert why is None, f"{variant.label} {pass_}: incorrect: {why}"
    return p


@pytest.mark.parametrize("spec, pass_, shape", list(_params()))
def test_attention(benchmark, spec, pass_, shape):
    p = gated(spec, pass_, shape)
    benchmark.extra_info["flops"] = p.flops
    result = benchmark(p.fns[0])
    why = p.timed_checks[0](result)  # what was timed is what was checked
    assert why is None, f"{spec} {pass_}: a timed call is incorrect: {why}"
