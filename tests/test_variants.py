"""Every registered variant against the float64 reference of its own math, forward and gradients.

Generated from the registry: a variant added anywhere (``variants/``, a plugin) is tested where it
declares it runs, and skipped with its reasons (``pytest -rs``) where it does not. Shapes include
N = 1, N not a multiple of any block, head dim 80, batch > 1 and grouped-query attention.
"""

from __future__ import annotations

import os

import pytest
import torch

import attnbench
from attnbench.bench.gate import conditioning
from attnbench.case import Case
from helpers import (
    DTYPES,
    FLEX_SHAPES,
    SHAPES,
    assert_close_to_reference,
    is_flex,
    random_qkv,
    shape_id,
    variant_specs,
)


def _cases(slow_impls: frozenset[str] = frozenset()):
    """(spec, shape, dtype) of every variant; ``slow_impls`` are marked ``slow`` where N > 1."""
    for spec in variant_specs():
        slow = attnbench.get_variant(spec).impl in slow_impls
        for shape in FLEX_SHAPES if is_flex(spec) else SHAPES:
            marks = [pytest.mark.slow] if slow and shape[1] > 1 else []
            for dtype in DTYPES:
                yield pytest.param(
                    spec, shape, dtype, id=f"{spec}-{shape_id(shape, dtype)}", marks=marks
                )


def _skip_unless_runs(variant, shape, dtype, pass_, device="cpu", causal=True):
    b, n, h, d, kv = shape
    case = Case(
        batch=b,
        seq_len=n,
        heads=h,
        kv_heads=kv,
        head_dim=d,
        dtype=dtype,
        device=device,
        pass_=pass_,
        causal=causal,
    )
    reasons = variant.not_supported_reasons(case)
    if reasons:
        pytest.skip(f"{variant.label} [{pass_}, {device}, {dtype}]: " + "; ".join(reasons))


def linear_conditioning(variant, q, k) -> float:
    """The gate's score conditioning for a feature map that declares it (FAVOR+, Taylor: their
    float32 state forms round with the scores, where the materialised plain form may be exact,
    as on a row with one key); none otherwise, so softmax variants keep the strict floor here."""
    return conditioning(variant, q, k) if variant.math.kind == "linear" else 0.0


def check_forward(variant, shape, dtype, device="cpu"):
    q, k, v = random_qkv(shape, dtype, device=device)
    out = variant(q, k, v)
    assert out.shape == q.shape and out.dtype == dtype
    ref = variant.reference(q, k, v)  # float64
    plain = variant.reference(q, k, v, dtype=dtype)  # plain PyTorch in the same dtype
    assert_close_to_reference(
        variant.label, out, plain, ref, dtype, conditioning=linear_conditioning(variant, q, k)
    )


def check_gradients(variant, shape, dtype, device="cpu"):
    q, k, v = random_qkv(shape, dtype, device=device, requires_grad=True)
    b, n, h, d, _ = shape
    grad_out = random_qkv((b, n, h, d), torch.float64, seed=7)[0].to(device)

    def grads(fn, inputs):
        out = fn(*inputs)
        return torch.autograd.grad(out, inputs, grad_out.to(out.dtype))

    got = grads(variant, (q, k, v))
    ref = grads(variant.reference, [t.detach().double().requires_grad_() for t in (q, k, v)])
    plain = grads(
        lambda *x: variant.reference(*x, dtype=dtype),
        [t.detach().clone().requires_grad_() for t in (q, k, v)],
    )
    scale = max(float(r.abs().max()) for r in ref)  # the call's gradients' scale
    for name, g, p, r in zip("qkv", got, plain, ref):
        assert g.dtype == dtype and g.shape == r.shape
        assert_close_to_reference(
            f"{variant.label} d{name}", g, p, r, dtype, gradient=True, scale=scale
        )


@pytest.mark.parametrize("spec, shape, dtype", list(_cases()))
def test_forward_matches_reference(spec, shape, dtype, poison_uninitialized):
    variant = attnbench.get_variant(spec)
    _skip_unless_runs(variant, shape, dtype, "fwd")
    check_forward(variant, shape, dtype)


# the recurrent forms backpropagate through a loop over tokens: seconds per case, so the full
# set (`make test`) checks their gradients and `make test-fast` leaves them out
@pytest.mark.parametrize("spec, shape, dtype", list(_cases(frozenset({"recurrent"}))))
def test_gradients_match_reference(spec, shape, dtype):
    variant = attnbench.get_variant(spec)
    _skip_unless_runs(variant, shape, dtype, "fwd_bwd")
    check_gradients(variant, shape, dtype)


NONCAUSAL = [
    n
    for n in attnbench.variant_names()
    if attnbench.get_variant(n).info.takes_causal and not is_flex(n)
]


@pytest.mark.parametrize("name", NONCAUSAL)
def test_noncausal_matches_reference(name):
    variant = attnbench.get_variant(name)
    shape = (2, 33, 4, 32, 2)
    _skip_unless_runs(variant, shape, torch.float32, "fwd", causal=False)
    q, k, v = random_qkv(shape, torch.float32)
    out = variant(q, k, v, causal=False)
    ref = variant.reference(q, k, v, causal=False)
    plain = variant.reference(q, k, v, causal=False, dtype=torch.float32)
    assert_close_to_reference(
        variant.label,
        out,
        plain,
        ref,
        torch.float32,
        conditioning=linear_conditioning(variant, q, k),
    )


def test_chunked_linear_attention_under_autocast():
    """Under mixed precision the chunked form's matmuls must not come out in bfloat16 and meet
    its float32 accumulators in place (CPU autocast reproduces what CUDA autocast does)."""
    variant = attnbench.get_variant("linear.performer.chunked:chunk=16,features=32")
    q, k, v = random_qkv((1, 70, 2, 32, 2), torch.float32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = variant(q, k, v)
    out.sum().backward()
    ref = variant.reference(q.detach(), k.detach(), v.detach())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))


@pytest.mark.gpu
@pytest.mark.parametrize("name", attnbench.variant_names())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize(
    "shape",
    [(2, 333, 4, 128, 4), (1, 1000, 8, 64, 2)],
    ids=["B2-N333-H4-D128", "B1-N1000-H8-KV2-D64"],
)
def test_cuda_forward_and_backward_match_reference(name, dtype, shape):
    assert os.environ.get("TRITON_INTERPRET") != "1", "GPU tests must run compiled Triton kernels"
    variant = attnbench.get_variant(name)
    _skip_unless_runs(variant, shape, dtype, "fwd", device="cuda")
    check_forward(variant, shape, dtype, device="cuda")
    if not variant.not_supported_reasons(
        device="cuda", dtype=dtype, head_dim=shape[3], pass_="fwd_bwd"
    ):
        check_gradients(variant, shape, dtype, device="cuda")
