"""The gate judged by what it rejects: one planted wrong variant per way a kernel can be wrong
(``tests/plugins/planted.py``), each measured the way the benchmark measures it
(``attnbench.bench.worker.time_case``: first call, the gate of both input sets, timing over them
alternately, the gate of the timed outputs) and each ``incorrect`` in exactly the passes and
dtypes it breaks; the honest controls stay ``ok`` in float32, bfloat16 and float16."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import attnbench
from attnbench.bench import gate, worker
from helpers import GATE_TIMING, case_for

PLANTED = str(Path(__file__).parents[1] / "plugins" / "planted.py")
TIMING = GATE_TIMING
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


pytestmark = pytest.mark.usefixtures("planted_variants")  # tests/conftest.py


def measure(
    spec: str,
    pass_: str = "fwd",
    dtype: str = "float32",
    n: int = 256,
    batch: int = 2,
    heads: int = 2,
    head_dim: int = 32,
) -> dict:
    case = case_for(spec, pass_, dtype, n, batch, heads, head_dim)
    v = attnbench.get_variant(spec)
    reasons = v.not_supported_reasons(case)
    if reasons:
        pytest.skip("; ".join(reasons))
    return worker.time_case(case, TIMING)


# (planted variant, pass, dtypes where it must be incorrect, dtypes where it must be ok, N, needle)
PLANTS = [
    ("fused.planted_memoised", "fwd", ("float32", "bfloat16"), (), 256, "input set 1"),
    ("fused.planted_right_once", "fwd", ("float32",), (), 256, "a timed repetition"),
    ("fused.planted_batch0", "fwd", ("float32", "bfloat16"), (), 256, "rows exceed"),
    ("fused.planted_bad_tile", "fwd", ("float32", "bfloat16"), (), 1024, "rows exceed"),
    ("fused.planted_late_dk", "fwd_bwd", ("float32", "bfloat16", "float16"), (), 256, "dk"),
    ("fused.planted_late_dk", "fwd", (), ("float32", "bfloat16"), 256, ""),
    ("fused.planted_scaled", "fwd", ("float32", "bfloat16", "float16"), (), 256, "exceed"),
    ("fused.planted_fp8_values", "fwd", ("bfloat16", "float16"), (), 256, "exceed"),
    ("fused.planted_bf16_inside", "fwd", ("float16", "float32"), ("bfloat16",), 256, "exceed"),
    ("fused.planted_no_max", "fwd", ("float32", "bfloat16", "float16"), (), 256, "large_scores"),
    ("fused.planted_leaky", "fwd", ("float32", "bfloat16"), (), 256, "exceed"),
    ("fused.planted_decoder_once", "decode", ("float32", "bfloat16"), (), 256, "step 2 of"),
    ("fused.planted_decoder_once", "fwd", (), ("float32",), 256, ""),
    ("linear.taylor.planted_off", "fwd", ("float32", "bfloat16"), (), 256, "exceed"),
]


@pytest.mark.parametrize(
    "spec, pass_, bad, good, n, needle",
    PLANTS,
    ids=[f"{p[0].split('.')[-1]}-{p[1]}" for p in PLANTS],
)
def test_each_planted_defect_is_incorrect_exactly_where_it_breaks(
    spec, pass_, bad, good, n, needle
):
    plugin = attnbench.get_variant(spec).info.fn.__globals__  # the planted module's state
    for dtype in bad:
        plugin["_MEMO"].clear()
        plugin["_CALLS"]["n"] = 0
        row = measure(spec, pass_, dtype, n=n)
        assert row["status"] == "incorrect", (dtype, row.get("reason"))
        assert needle in row["reason"], row["reason"]
        assert "time_ms" not in row
    for dtype in good:
        row = measure(spec, pass_, dtype, n=n)
        assert row["status"] == "ok", (dtype, row.get("reason"))


CONTROLS = [
    "fused.sdpa",
    "naive.softmax",
    "linear.elu.chunked:chunk=16",
    "linear.taylor.chunked:chunk=16",
    "sliding_window.banded:window=48,block=16",
]


@pytest.mark.parametrize("spec", CONTROLS)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_honest_controls_pass_every_gate(spec, dtype):
    for pass_ in ("fwd", "fwd_bwd", "decode"):
        row = measure(spec, pass_, dtype, n=200)
        assert row["status"] == "ok", (pass_, row.get("reason"))
        assert row["gate_inputs"][:2] == ["normal", "normal"] and len(row["gate_inputs"]) == 3
        assert row["gated"] and isinstance(row["gate_seed"], int)


def test_sampled_rows_cover_every_tile_and_both_ends_and_follow_the_seed():
    n = 2048
    rows = gate.sample_rows(n, 48, "cpu", seed=3)
    tiles = set((rows // gate.TILE).tolist())
    assert tiles == set(range(n // gate.TILE))
    assert 0 in rows and n - 1 in rows
    assert torch.equal(rows, gate.sample_rows(n, 48, "cpu", seed=3))
    assert not torch.equal(rows, gate.sample_rows(n, 48, "cpu", seed=4))
    many = gate.sample_rows(64 * 1000, 48, "cpu")  # beyond MAX_TILES: a seeded sample of tiles
    assert len(set((many // gate.TILE).tolist())) >= gate.MAX_TILES


def test_the_upstream_gradient_reaches_every_key_tile_of_a_window():
    """With a 16-token window, every 64-key tile gets a checked, non-zero reference gradient."""
    v = attnbench.get_variant("sliding_window.masked", window=16)
    g = torch.Generator().manual_seed(0)
    q, k, vv = (torch.randn(2, 1024, 2, 32, generator=g) for _ in range(3))
    gg = gate.GradientGate(v, q, k, vv, True, 48, seed=1)
    ref, _ = gg.reference()
    dk = ref[2].abs().amax(dim=(0, 2, 3))  # per key
    tiles = dk.view(-1, gate.TILE).amax(-1)
    assert (tiles > 0).all()


def test_the_input_distributions_are_what_they_say():
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 512, 2, 64, generator=g) for _ in range(2))
    lq, lk = gate.shape_inputs(q, k, "large_scores")
    scores = torch.einsum("bqhd,bkhd->bhqk", lq, lk) / 8
    assert scores.abs().max() > 30
    oq, _ = gate.shape_inputs(q, k, "outliers")
    assert oq[..., :2].abs().mean() > 6 * oq[..., 2:].abs().mean()
    with pytest.raises(ValueError, match="unknown input distribution 'huge'; valid: normal"):
        gate.shape_inputs(q, k, "huge")
    assert gate.distributions_for(attnbench.get_variant("fused.sdpa")) == ("normal", "large_scores")
    assert gate.distributions_for(attnbench.get_variant("linear.elu.chunked"))[1] == "outliers"


def test_a_wrong_dtype_or_shape_is_incorrect():
    v = attnbench.get_variant("fused.sdpa")
    q = torch.randn(1, 64, 2, 32)
    out = v(q, q, q)
    assert "float64, expected float32" in gate.check_forward(v, q, q, q, out.double(), True, 48)
    assert "shape" in gate.check_forward(v, q, q, q, out[:, :32], True, 48)
    assert gate.check_forward(v, q, q, q, out, True, 48) is None


def measure_model(spec: str, pass_: str, dtype: str = "float32") -> dict:
    case = case_for(spec, pass_, dtype, n=64, level="model", preset="tiny")
    return worker.time_case(case, TIMING)


@pytest.mark.parametrize(
    "spec, bad, good",
    [
        ("fused.planted_layer2_dk", ("train_step",), ("prefill", "decode")),
        # (its decoder is the default KV-cache SDPA over a cache its prefill filled wrongly)
        ("fused.planted_ignores_qk", ("train_step", "prefill"), ()),
        ("fused.sdpa", (), ("train_step", "prefill", "decode")),
    ],
)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_model_level_gate_sees_attention_and_every_layer(spec, bad, good, dtype):
    for pass_ in bad:
        row = measure_model(spec, pass_, dtype)
        assert row["status"] == "incorrect", (pass_, row.get("reason"))
    for pass_ in good:
        row = measure_model(spec, pass_, dtype)
        assert row["status"] == "ok", (pass_, row.get("reason"))
        assert row["qk_scale"] == gate.PEAK_QK


def test_the_pytest_benchmark_suite_gates_before_it_times():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "test_ops.py"
    spec = importlib.util.spec_from_file_location("attnbench_benchmarks_ops", path)
    ops = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ops)
    p = ops.gated("fused.sdpa", "fwd", (1, 128, 2, 32))
    assert p.timed_checks[0](p.fns[0]()) is None
    with pytest.raises(AssertionError, match="incorrect"):
        ops.gated("fused.planted_wrong", "fwd", (1, 128, 2, 32))
