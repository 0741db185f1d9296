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


def test_recall_run_records_accuracy_per_setting(tmp_path):
    out = tmp_path / "runs"
    run_cli(
        "recall",
        "--variants",
        "fused.sdpa,linear.elu.chunked:chunk=16",
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
    rows = results.read_rows(only_run(out))
    evals = [r for r in rows if r["pass"] == "eval"]
    assert {(r["seq_len"], r["kv_pairs"]) for r in evals} == {
        (32, 2),
        (32, 4),
        (64, 2),
        (64, 4),
        (64, 16),
    }
    assert len(evals) == 10 and all(0 <= r["accuracy"] <= 1 for r in evals)
    assert all(r["status"] == "ok" for r in rows)


def test_recall_rows_carry_chance_and_the_state_size(tmp_path):
    out = tmp_path / "runs"
    run_cli(
        "recall",
        "--variants",
        "fused.sdpa,sliding_window.blocked:window=8,linear.elu.chunked:chunk=16",
        "--seq-lens",
        "32",
        "--kv-pairs",
        "2,4",
        "--train-steps",
        "5",
        "--eval-sequences",
        "16",
        "--out",
        str(out),
        "--quiet",
    )
    evals = {
        (r["variant"], r["kv_pairs"]): r
        for r in results.read_rows(only_run(out))
        if r["pass"] == "eval"
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
