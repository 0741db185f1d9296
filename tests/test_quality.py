"""Quality and recall: identical training, evaluation windows, drop-in exactness, divergence as a
status, data-parallel training under torchrun, and the MQAR generator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from attnbench.quality import recall

from attnbench.bench import results
from attnbench.quality.data import load_corpus
from attnbench.quality.train import (TrainSettings, batch_offsets, build_model, eval_windows, evaluate,
                               load_checkpoint, train)

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
PLANTED = str(Path(__file__).parent / "plugins" / "planted.py")
needs_shared = pytest.mark.skipif(not (SHARED / "SOURCES.md").exists(),
                                  reason=f"the shared corpus files are not at {SHARED}")


@pytest.fixture(scope="module")
def shakespeare():
    if not (SHARED / "SOURCES.md").exists():
        pytest.skip(f"the shared corpus files are not at {SHARED}")
    return load_corpus("tinyshakespeare", data_dir=SHARED)


def _cli(*args, env=None, timeout=600):
    env = {**os.environ, "ATTNBENCH_DATA_DIR": str(SHARED), **(env or {})}
    proc = subprocess.run([sys.executable, str(ROOT / "run_bench.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _run_dir(out: Path) -> Path:
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run


def test_data_order_and_initial_weights_do_not_depend_on_the_variant():
    a = batch_offsets(10_000, 64, 8, seed=3, step=5)
    assert np.array_equal(a, batch_offsets(10_000, 64, 8, seed=3, step=5))
    assert not np.array_equal(a, batch_offsets(10_000, 64, 8, seed=3, step=6))
    m1 = build_model("tiny", "fused.sdpa", 0, "cpu")
    m2 = build_model("tiny", "linear.elu.chunked", 0, "cpu")
    for (n, p1), p2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(p1, p2), n


def test_exact_variants_train_the_same_model(shakespeare):
    s = TrainSettings(train_len=64, batch=4, train_tokens=64 * 4 * 30, log_every=10)
    a = train(shakespeare.split("train"), "fused.sdpa", s)
    b = train(shakespeare.split("train"), "naive.softmax", s)
    assert a.steps == b.steps == 30 and a.status == "ok"
    assert [p[0] for p in a.curve] == [10, 20, 30]
    for pa, pb in zip(a.curve, b.curve):
        assert abs(pa[3] - pb[3]) < 1e-4 * pa[3]
    assert a.curve[-1][3] < a.curve[0][3]  # it learns


def test_schedule_warms_up_then_decays():
    s = TrainSettings(lr=1e-3, warmup_frac=0.1, min_lr_frac=0.1)
    assert s.lr_at(0.05) == pytest.approx(5e-4, rel=1e-6)
    assert s.lr_at(0.1) == pytest.approx(1e-3)
    assert s.lr_at(1.0) == pytest.approx(1e-4)
    assert s.lr_at(0.55) == pytest.approx(1e-4 + 0.9e-3 * 0.5)


def test_evaluation_windows_score_each_byte_once():
    wins = eval_windows(1001, 100, "windows", 0, 0)
    assert wins == [(s, 0) for s in range(0, 1000, 100)]
    slide = eval_windows(1001, 100, "sliding", 25, 0)
    scored = set()
    for start, first in slide:
        targets = range(start + first + 1, start + 101)
        assert not scored & set(targets)
        scored |= set(targets)
        assert first == 0 or first == 75  # every later byte sees >= 75 bytes of context
    assert scored == set(range(1, 1001))
    assert len(eval_windows(1001, 100, "windows", 0, 300)) == 3
    with pytest.raises(ValueError, match="valid: windows, sliding"):
        eval_windows(1001, 100, "strided", 0, 0)


def test_sliding_with_a_full_stride_equals_windows_and_positions_add_up(shakespeare):
    model = build_model("tiny", "fused.sdpa", 0, "cpu")
    held = shakespeare.split("val")[:2049]
    w = evaluate(model, held, 64, method="windows")
    s = evaluate(model, held, 64, method="sliding", stride=64)
    assert w["bits_per_byte"] == pytest.approx(s["bits_per_byte"], rel=1e-6)
    assert w["eval_targets"] == 2048 and w["eval_method"] == "windows"
    assert np.mean(w["position_bpb"]) == pytest.approx(w["bits_per_byte"], rel=1e-6)  # equal buckets
    assert 7.5 < w["bits_per_byte"] < 8.5  # an untrained model: about log2(256)


@needs_shared
def test_quality_run_dropin_and_every_family_beats_order0(tmp_path):
    """The whole loop through the CLI and the worker: n-gram floor, one variant per family trained
    on the same budget, checkpoints, and the drop-in table of the first variant's checkpoint."""
    variants = ["fused.sdpa", "naive.softmax", "sliding_window.blocked:window=64",
                "sliding_window.blocked:window=8", "sparse.bigbird.blocked:block=16",
                "linear.elu.chunked:chunk=32"]
    out = tmp_path / "runs"
    proc = _cli("quality", "--dataset", "tinyshakespeare", "--variants", ",".join(variants),
                "--train-tokens", "240K", "--train-len", "64", "--batch", "16",
                "--eval-lens", "32,64", "--eval-tokens", "8K", "--out", str(out), "--quiet")
    run = _run_dir(out)
    rows = results.read_rows(run)
    assert all(r["status"] == "ok" for r in rows), [(r["case_id"], r["reason"]) for r in rows
                                                     if r["status"] != "ok"]
    info = results.read_run_json(run)
    assert info["datasets"]["tinyshakespeare"]["sha256"] == load_corpus(
        "tinyshakespeare", data_dir=SHARED).sha256
    evals = {(r["variant"], r["eval_len"]): r for r in rows if r["pass"] == "eval"}
    order0 = evals[("fused.sdpa", 64)]["order0_bpb"]
    assert 4.7 < order0 < 5.0
    trained = [r for (name, n), r in evals.items() if n == 64 and r["family"] != "baseline"]
    assert len(trained) == len(variants)
    for r in trained:  # a model that learned nothing is a bug, not a result
        assert r["bits_per_byte"] < order0 - 0.8, (r["variant"], r["bits_per_byte"], order0)
        assert r["eval_method"] == "windows" and len(r["position_bpb"]) == 8
    assert evals[("ngram:order=4", 64)]["bits_per_byte"] < 2.7
    train_rows = [r for r in rows if r["pass"] == "train"]
    assert all(r["tokens_trained"] == 240_000 // (64 * 16) * 64 * 16 for r in train_rows)
    assert all(len(r["loss_curve"]) >= 2 and r["tokens_per_s"] > 0 for r in train_rows)
    # drop-in: exact variants and a window as wide as the evaluation match the trained model
    dropin = {(r["variant"], r["eval_len"]): r for r in rows if r["pass"] == "dropin" and "eval_len" in r}
    assert dropin[("naive.softmax", 64)]["rel_diff"] < 1e-4
    assert dropin[("sliding_window.blocked:window=64,block=64", 64)]["rel_diff"] < 1e-4
    assert dropin[("sliding_window.blocked:window=8,block=64", 32)]["rel_diff"] > 1e-3
    assert dropin[("linear.elu.chunked:chunk=32", 32)]["rel_diff"] > 1e-2
    assert "drop-in" in proc.stdout and "ngram:order=4" in proc.stdout
    # the checkpoint loads with weights_only=True and evaluates to the recorded number
    ckpt = run / "checkpoints" / "fused.sdpa.pt"
    model, payload = load_checkpoint(ckpt)
    assert payload["meta"]["dataset"] == "tinyshakespeare"
    # drop-in mode from the command line, on that checkpoint
    out2 = tmp_path / "dropin"
    _cli("quality", "--mode", "dropin", "--checkpoint", str(ckpt), "--variants",
         "naive.softmax,sliding_window.masked:window=32", "--eval-lens", "32", "--eval-tokens", "8K",
         "--ngram-order", "0", "--out", str(out2), "--quiet")
    rows2 = [r for r in results.read_rows(_run_dir(out2)) if "eval_len" in r]
    assert all(r["status"] == "ok" and r["rel_diff"] < 1e-4 for r in rows2)
    assert rows2[0]["trained_bpb"] == pytest.approx(dropin[("naive.softmax", 32)]["trained_bpb"], rel=1e-6)


@needs_shared
def test_divergence_is_a_status(tmp_path):
    out = tmp_path / "runs"
    _cli("quality", "--dataset", "tinyshakespeare", "--variants", "fused.planted_nan,fused.sdpa",
         "--train-tokens", "4K", "--train-len", "32", "--batch", "4", "--eval-lens", "32",
         "--eval-tokens", "1K", "--ngram-order", "0", "--no-dropin", "--plugins", PLANTED,
         "--out", str(out), "--quiet")
    rows = {(r["variant"], r["pass"]): r for r in results.read_rows(_run_dir(out))}
    assert rows[("fused.planted_nan", "train")]["status"] == "diverged"
    assert "at step 1" in rows[("fused.planted_nan", "train")]["reason"]
    assert rows[("fused.planted_nan", "eval")]["status"] == "diverged"
    assert rows[("fused.sdpa", "eval")]["status"] == "ok"


@needs_shared
def test_torchrun_two_processes_train_like_one(tmp_path):
    args = ["quality", "--dataset", "tinyshakespeare", "--variants", "fused.sdpa",
            "--train-tokens", "16K", "--train-len", "64", "--batch", "8", "--eval-lens", "64",
            "--eval-tokens", "4K", "--ngram-order", "0", "--no-dropin", "--quiet"]
    _cli(*args, "--out", str(tmp_path / "one"))
    env = {**os.environ, "ATTNBENCH_DATA_DIR": str(SHARED), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", str(ROOT / "run_bench.py"), *args, "--out",
                           str(tmp_path / "two")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = {r["pass"]: r for r in results.read_rows(_run_dir(tmp_path / "one"))}
    two_dir = _run_dir(tmp_path / "two")
    two = {r["pass"]: r for r in results.read_rows(two_dir)}
    assert one["train"]["status"] == two["train"]["status"] == "ok", one["train"]["reason"]
    assert two["train"]["world_size"] == 2
    assert results.read_run_json(two_dir)["distributed"] == {"world_size": 2, "backend": "gloo",
                                                              "launcher": "torchrun"}
    assert one["train"]["train_steps"] == two["train"]["train_steps"] == 31
    for (a, b) in zip(one["train"]["loss_curve"], two["train"]["loss_curve"]):
        assert a[3] == pytest.approx(b[3], rel=1e-4)
    assert one["eval"]["bits_per_byte"] == pytest.approx(two["eval"]["bits_per_byte"], rel=1e-4)


# ---------------------------------------------------------------------------------------------
# recall

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
    _cli("recall", "--variants", "fused.sdpa,linear.elu.chunked:chunk=16", "--seq-lens", "32,64",
         "--kv-pairs", "2,4,16", "--train-steps", "20", "--eval-sequences", "32", "--out", str(out),
         "--quiet")
    rows = results.read_rows(_run_dir(out))
    evals = [r for r in rows if r["pass"] == "eval"]
    assert {(r["seq_len"], r["kv_pairs"]) for r in evals} == {(32, 2), (32, 4), (64, 2), (64, 4), (64, 16)}
    assert len(evals) == 10 and all(0 <= r["accuracy"] <= 1 for r in evals)
    assert all(r["status"] == "ok" for r in rows)
