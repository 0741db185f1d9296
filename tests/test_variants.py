"""Every registered variant against the float64 reference of its own math, forward and gradients.

Generated from the registry: a variant added anywhere (``variants/``, a plugin) is tested where it
declares it runs, and skipped with its reasons (``pytest -rs``) where it does not.
"""

from __future__ import annotations

import pytest
import torch

import attnbench
from attnbench.registry import Case

from helpers import (DTYPES, FLEX_SHAPES, SHAPES, assert_close_to_reference, is_flex, random_qkv,
                     shape_id, variant_specs)


def _cases():
    for spec in variant_specs():
        for shape in FLEX_SHAPES if is_flex(spec) else SHAPES:
            for dtype in DTYPES:
                yield pytest.param(spec, shape, dtype, id=f"{spec}-{shape_id(shape, dtype)}")


def _skip_unless_runs(variant, shape, dtype, pass_, device="cpu", causal=True):
    b, n, h, d = shape
    case = Case(batch=b, seq_len=n, heads=h, head_dim=d, dtype=dtype, device=device,
                pass_=pass_, causal=causal)
    reasons = variant.not_supported_reasons(case)
    if reasons:
        pytest.skip(f"{variant.label} [{pass_}, {device}, {dtype}]: " + "; ".join(reasons))


@pytest.mark.parametrize("spec, shape, dtype", list(_cases()))
def test_forward_matches_reference(spec, shape, dtype, poison_uninitialized):
    variant = attnbench.get_variant(spec)
    _skip_unless_runs(variant, shape, dtype, "fwd")
    q, k, v = random_qkv(shape, dtype)
    out = variant(q, k, v)
    assert out.shape == q.shape and out.dtype == dtype
    ref = variant.reference(q, k, v)  # float64
    plain = variant.reference(q, k, v, dtype=dtype)  # plain PyTorch in the same dtype
    assert_close_to_reference(variant.label, out, plain, ref, dtype)


@pytest.mark.parametrize("spec, shape, dtype", list(_cases()))
def test_gradients_match_reference(spec, shape, dtype):
    variant = attnbench.get_variant(spec)
    _skip_unless_runs(variant, shape, dtype, "fwd_bwd")
    q, k, v = random_qkv(shape, dtype, requires_grad=True)
    grad_out = random_qkv(shape, torch.float64, seed=7)[0]

    def grads(fn, inputs):
        out = fn(*inputs)
        return torch.autograd.grad(out, inputs, grad_out.to(out.dtype))

    got = grads(variant, (q, k, v))
    ref = grads(variant.reference, [t.detach().double().requires_grad_() for t in (q, k, v)])
    plain = grads(lambda *x: variant.reference(*x, dtype=dtype),
                  [t.detach().clone().requires_grad_() for t in (q, k, v)])
    for name, g, p, r in zip("qkv", got, plain, ref):
        assert g.dtype == dtype
        assert_close_to_reference(f"{variant.label} d{name}", g, p, r, dtype)


NONCAUSAL = [n for n in attnbench.variant_names()
             if attnbench.get_variant(n).info.takes_causal and not is_flex(n)]


@pytest.mark.parametrize("name", NONCAUSAL)
def test_noncausal_matches_reference(name):
    variant = attnbench.get_variant(name)
    shape = (2, 33, 2, 32)
    _skip_unless_runs(variant, shape, torch.float32, "fwd", causal=False)
    q, k, v = random_qkv(shape, torch.float32)
    out = variant(q, k, v, causal=False)
    ref = variant.reference(q, k, v, causal=False)
    plain = variant.reference(q, k, v, causal=False, dtype=torch.float32)
    assert_close_to_reference(variant.label, out, plain, ref, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("name", attnbench.variant_names())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_cuda_forward_and_backward_match_reference(name, dtype):
    variant = attnbench.get_variant(name)
    shape = (2, 333, 4, 128)
    _skip_unless_runs(variant, shape, dtype, "fwd", device="cuda")
    q, k, v = random_qkv(shape, dtype, device="cuda")
    assert_close_to_reference(variant.label, variant(q, k, v),
                              variant.reference(q, k, v, dtype=dtype),
                              variant.reference(q, k, v), dtype)
