"""Sizes chosen per machine (``attnbench.tune``): the fastest candidate beyond a margin, tuned once
per key, recorded in the row that used it, reused by the memory worker, and gated like any size."""

from __future__ import annotations

import time

import pytest

import attnbench
from attnbench import tune
from attnbench.bench import worker
from attnbench.bench.flops import chunked_linear_flops
from attnbench.case import Case
from helpers import GATE_TIMING as TIMING
from helpers import case_for


@pytest.fixture(autouse=True)
def _fresh_choices():
    tune.clear()
    yield
    tune.clear()


def _sleeper(ms: dict, calls: list):
    def run(c):
        calls.append(c)
        time.sleep(ms[c] / 1e3)

    return run


def test_the_fastest_candidate_wins_beyond_the_margin_and_is_tuned_once():
    calls: list = []
    run = _sleeper({32: 30.0, 64: 20.0, 128: 10.0}, calls)
    with tune.recording() as chosen:
        assert tune.choose("chunk", ("k",), (32, 64, 128), run, default=64) == 128
        n = len(calls)
        assert n == 3 * (1 + tune.REPS)  # each candidate: one untimed call, then REPS timed
        assert tune.choose("chunk", ("k",), (32, 64, 128), run, default=64) == 128
        assert len(calls) == n  # cached: not tuned again
    (entry,) = chosen  # once per key, tuned there
    assert entry["choice"] == 128 and entry["tuned"] and set(entry["ms"]) == {32, 64, 128}
    assert entry["ms"][128] < entry["ms"][64] < entry["ms"][32]
    with tune.recording() as again:
        tune.choose("chunk", ("k",), (32, 64, 128), run, default=64)
    assert again[0]["tuned"] is False  # reused


def test_a_candidate_within_the_margin_does_not_replace_the_default():
    # 1 % faster than the default: noise, not a reason to change what repeats measure
    run = _sleeper({32: 40.0, 64: 20.0, 128: 19.8}, [])
    assert tune.choose("chunk", ("tie",), (32, 64, 128), run, default=64) == 64


def test_seeded_choices_are_reused_without_tuning():
    calls: list = []
    tune.seed([{"param": "chunk", "key": "a|1", "choice": 32, "ms": {32: 1.0}}])
    run = _sleeper({32: 1.0, 64: 1.0}, calls)
    assert tune.choose("chunk", ("a", 1), (32, 64), run, default=64) == 32 and not calls


def test_auto_chunk_is_the_default_and_a_bad_one_names_the_valid_values():
    v = attnbench.get_variant("linear.elu.chunked")
    assert v.params["chunk"] == "auto"
    assert attnbench.get_variant("linear.elu.chunked:chunk=32").params["chunk"] == 32
    with pytest.raises(ValueError, match="chunk='big' is not an integer or \"auto\""):
        attnbench.get_variant("linear.elu.chunked:chunk=big")
    with pytest.raises(ValueError, match='positive integer or "auto", got 0'):
        attnbench.get_variant("linear.elu.chunked:chunk=0")
    case = Case(seq_len=256, heads=2, head_dim=32)
    with pytest.raises(ValueError, match="chosen per machine"):
        chunked_linear_flops(v, case)
    assert chunked_linear_flops(v, case, chunk=64) == chunked_linear_flops(
        attnbench.get_variant("linear.elu.chunked:chunk=64"), case
    )


@pytest.mark.parametrize("pass_", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize(
    "spec", ["linear.elu.chunked", "linear.performer.chunked:features=32", "linear.elu.fused"]
)
def test_a_tuned_variant_is_gated_and_its_row_says_what_was_chosen(spec, pass_):
    row = worker.time_case(case_for(spec, pass_, n=384), TIMING)
    assert row["status"] == "ok", row.get("reason")
    (entry,) = row["tuned"]
    assert entry["param"] == "chunk" and entry["choice"] in (32, 64, 128)
    assert entry["key"].endswith(pass_) and set(entry["ms"]) == {32, 64, 128}


def test_the_memory_worker_measures_at_the_timed_size():
    case = case_for("linear.elu.chunked")
    shape = "x".join(map(str, (case.batch, case.seq_len, case.heads, case.head_dim)))
    key = tune.key_text(("Elu", 32, "chunked", "cpu", "float32", shape, case.kv_heads, "fwd"))
    timed = [{"param": "chunk", "key": key, "choice": 32, "ms": {32: 1.0}}]
    with tune.recording() as chosen:
        out = worker.memory_case(case, TIMING, timed)
    assert out["mem_method"] and [e["choice"] for e in chosen] == [32]
    assert chosen[0]["tuned"] is False  # the timing worker's choice, not tuned again


@pytest.mark.parametrize("n", [1, 77])
def test_auto_chunk_on_awkward_shapes_matches_the_reference(n):
    import torch

    v = attnbench.get_variant("linear.elu.chunked")
    g = torch.Generator().manual_seed(n)
    q, k, x = (torch.randn(2, n, 4, 32, generator=g) for _ in range(3))
    k, x = k[:, :, :2], x[:, :, :2]  # grouped-query heads
    out = v(q, k, x)
    ref = v.reference(q, k, x)
    assert out.shape == q.shape and torch.allclose(out.double(), ref, atol=1e-5, rtol=1e-4)
