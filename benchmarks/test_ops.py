"""Op-level pytest-benchmark cases generated from the registry (see conftest.py for usage)."""

from __future__ import annotations

import pytest
import torch

import attnbench
from attnbench.bench.flops import attention_flops
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
                yield pytest.param(variant.label, pass_, (b, n, h, d),
                                   id=f"{variant.label}-{pass_}-B{b}-N{n}-H{h}-D{d}")


@pytest.mark.parametrize("spec, pass_, shape", list(_params()))
def test_attention(benchmark, spec, pass_, shape):
    variant = attnbench.get_variant(spec)
    b, n, h, d = shape
    case = Case(batch=b, seq_len=n, heads=h, head_dim=d, pass_=pass_)
    reasons = variant.not_supported_reasons(case)
    if reasons:
        pytest.skip("; ".join(reasons))
    q, k, v = (torch.randn(shape, requires_grad=pass_ == "fwd_bwd") for _ in range(3))
    variant.prepare(case)
    if pass_ == "fwd":
        def run():
            with torch.no_grad():
                return variant(q, k, v)
    else:
        grad = torch.randn(shape)

        def run():
            return torch.autograd.grad(variant(q, k, v), (q, k, v), grad)
    run()  # compile / warm caches outside the measurement
    benchmark.extra_info["flops"] = attention_flops(variant, case)
    benchmark(run)
