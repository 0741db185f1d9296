"""Recall (MQAR): the sequence generator and a recall run through the command line."""

from __future__ import annotations

import numpy as np
import pytest

from attnbench.bench import results
from attnbench.quality import recall
from helpers import only_run, run_cli


def test_mqar_sequences_ask_for_the_values_of_earlier_keys():
    rng = np.random.default_rng(0)
    x, y = recall.mqar_batch(16, 64, 8, key_vocab=16, rng=rng)
    assert x.shape == y.shape == (16, 64)
    for b in range(16):
        pairs = {int(x[b, 2 * i]): int(x[b, 2 * i + 1]) for i in range(8)}
        assert len(pairs) == 8 and all(1 <= k < 17 and 128 <= v < 144 for k, v in pairs.items())
        asked = (y[b] != recall.IGNORE).nonzero().flatten().tolist()
        assert len(asked) == 8 and min(asked) >= 16
        for p in asked:
            assert pairs[int(x[b, p])] == int(y[b, p]) == int(x[b, p + 1])
        assert sorted(int(x[b, p]) for p in asked) == sorted(pairs)
    with pytest.raises(ValueError, match="needs seq_len >= 32"):
        recall.mqar_batch(1, 31, 8, rng=rng)


@pytest.fixture(scope="module")
def recall_rows(tmp_path_factory):
    """One short recall run through the command line, read by the two tests below."""
    out = tmp_path_factory.mktemp("recall")
    run_cli(
        "recall",
        "--variants",
        "fused.sdpa,sliding_window.blocked:window=8,linear.elu.chunked:chunk=16",
        "--seq-lens",
        "32,64",
        "--kv-pairs",
        "2,4,16",
        "--train-steps",
        "20",
        "--eval-sequences",
        "32",
        "--out",
        str(out),
        "--quiet",
    )
    return results.read_rows(only_run(out))


@pytest.mark.slow  # trains through the command line and the worker
def test_recall_run_records_accuracy_per_setting(recall_rows):
    evals = [r for r in recall_rows if r["pass"] == "eval"]
    settings = {(32, 2), (32, 4), (64, 2), (64, 4), (64, 16)}  # 16 pairs do not fit in 32 tokens
    for variant in {r["variant"] for r in evals}:
        assert {(r["seq_len"], r["kv_pairs"]) for r in evals if r["variant"] == variant} == settings
    assert len(evals) == 3 * len(settings) and all(0 <= r["accuracy"] <= 1 for r in evals)
    assert all(r["status"] == "ok" for r in recall_rows)


@pytest.mark.slow  # trains through the command line and the worker
def test_recall_rows_carry_chance_and_the_state_size(recall_rows):
    evals = {
        (r["variant"], r["kv_pairs"]): r
        for r in recall_rows
        if r["pass"] == "eval" and r["seq_len"] == 32
    }
    sdpa = evals[("fused.sdpa", 2)]
    assert sdpa["chance"] == 0.5 and sdpa["near_chance"] == (sdpa["accuracy"] < 0.75)
    # one layer's state at N = 32 (recall preset: 2 heads of 32, float32): the KV cache, the ring
    # buffer of 8 tokens, the linear state F x D (+ F) per head
    assert sdpa["state_bytes"] == 32 * 2 * 2 * 32 * 4
    assert (
        evals[("sliding_window.blocked:window=8,block=64", 2)]["state_bytes"] == 8 * 2 * 2 * 32 * 4
    )
    assert evals[("linear.elu.chunked:chunk=16", 2)]["state_bytes"] == 2 * (32 * 32 + 32) * 4


@pytest.mark.slow  # trains three models for 300 steps
def test_the_recall_recipe_separates_the_families():
    """On a setting that trains in seconds: softmax attention recalls every pair, elu+1 linear
    attention is at least 0.2 below it, and a window that cannot see the pairs is near chance."""
    from attnbench.settings import NEAR_CHANCE, RecallSettings, chance

    s = RecallSettings(seq_lens=(32,), kv_pairs=(2, 4), key_vocab=16, train_steps=300)
    acc = {}
    for spec in ("fused.sdpa", "linear.elu.chunked:chunk=16", "sliding_window.blocked:window=4"):
        model = recall.train_recall(spec, s).model
        acc[spec] = [recall.accuracy(model, 32, kv, sequences=256, key_vocab=16) for kv in (2, 4)]
    soft, lin, win = acc.values()
    assert min(soft) >= 0.9, acc
    assert all(s_ - lin_ >= 0.2 for s_, lin_ in zip(soft, lin)), acc
    assert all(a < NEAR_CHANCE * chance(kv) for a, kv in zip(win, (2, 4))), acc


@pytest.mark.slow  # trains twice through the command line
def test_a_learning_rate_grid_trains_every_rate_and_reports_the_best(tmp_path):
    """`--lrs` (derived from RecallConfig.lrs): one training per rate, every rate's rows kept,
    the report's grid table marks the winner and the tables below use only its rows."""
    from attnbench.report.summary import best_lr

    out = tmp_path / "runs"
    run_cli(
        "recall",
        "--variants",
        "fused.sdpa",
        "--seq-lens",
        "32",
        "--kv-pairs",
        "2,4",
        "--train-steps",
        "30",
        "--eval-sequences",
        "32",
        "--lrs",
        "1e-5,3e-3",
        "--out",
        str(out),
        "--quiet",
    )
    run = only_run(out)
    rows = results.read_rows(run)
    trains = [r for r in rows if r["pass"] == "train"]
    assert sorted(r["lr"] for r in trains) == [1e-5, 3e-3]
    assert len({r["case_id"] for r in trains}) == 2 and all("lr" in r["case_id"] for r in trains)
    frame = results.load(run)
    kept, grid = best_lr(frame)
    assert set(kept.loc[kept["level"] == "recall", "lr"]) == {3e-3}  # 1e-5 learns nothing
    assert grid.loc[("recall", "fused.sdpa", 0), "0.003"].endswith("✓")
    assert "Learning-rate grid" in (run / "report.md").read_text()


def test_a_quality_grid_plans_a_case_and_a_checkpoint_per_rate():
    from attnbench.bench.suite import from_dict
    from attnbench.quality.cases import plan_quality

    s = from_dict({"quality": {"variants": ["fused.sdpa"], "lrs": [1e-3, 3e-3], "seeds": [0, 1]}})
    trains = [c for c in plan_quality(s.quality, "cpu") if c.pass_ == "train"]
    assert sorted((c.seed, c.lr) for c in trains) == [(0, 1e-3), (0, 3e-3), (1, 1e-3), (1, 3e-3)]
    assert len({c.checkpoint for c in trains}) == 4
    plain = from_dict({"quality": {"variants": ["fused.sdpa"]}})
    (case,) = [c for c in plan_quality(plain.quality, "cpu") if c.pass_ == "train"]
    assert case.lr == 0.0 and "lr" not in case.case_id  # ids without a grid are unchanged
    import pytest

    with pytest.raises(ValueError, match="quality.lrs: items must be positive numbers, got -1"):
        from_dict({"quality": {"variants": ["fused.sdpa"], "lrs": [-1]}})
