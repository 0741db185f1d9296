"""Quality: identical training, evaluation windows, drop-in exactness, divergence as a status,
data-parallel training under torchrun. On the always-available ``pystdlib`` corpus (the
corpus does not matter here), so a clone without ../shared runs them all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import attnbench
from attnbench.bench import results
from attnbench.quality.data import load_corpus
from attnbench.quality.train import (
    TrainSettings,
    batch_offsets,
    build_model,
    checkpoint_name,
    copy_probe,
    eval_windows,
    evaluate,
    load_checkpoint,
    train,
)
from helpers import only_run, run_cli

ROOT = Path(__file__).resolve().parents[2]
PLANTED = str(Path(__file__).parents[1] / "plugins" / "planted.py")


@pytest.fixture(scope="module")
def corpus():
    return load_corpus("pystdlib")


def test_data_order_and_initial_weights_do_not_depend_on_the_variant():
    a = batch_offsets(10_000, 64, 8, seed=3, step=5)
    assert np.array_equal(a, batch_offsets(10_000, 64, 8, seed=3, step=5))
    assert not np.array_equal(a, batch_offsets(10_000, 64, 8, seed=3, step=6))
    m1 = build_model("tiny", "fused.sdpa", 0, "cpu")
    m2 = build_model("tiny", "linear.elu.chunked", 0, "cpu")
    for (n, p1), p2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(p1, p2), n


def test_exact_variants_train_the_same_model(corpus):
    s = TrainSettings(train_len=64, batch=4, train_tokens=64 * 4 * 30, log_every=10)
    a = train(corpus.split("train"), "fused.sdpa", s)
    b = train(corpus.split("train"), "naive.softmax", s)
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


def test_sliding_with_a_full_stride_equals_windows_and_positions_add_up(corpus):
    model = build_model("tiny", "fused.sdpa", 0, "cpu")
    held = corpus.split("val")[:2049]
    w = evaluate(model, held, 64, method="windows")
    s = evaluate(model, held, 64, method="sliding", stride=64)
    assert w["bits_per_byte"] == pytest.approx(s["bits_per_byte"], rel=1e-6)
    assert w["eval_targets"] == 2048 and w["eval_method"] == "windows"
    # equal buckets
    assert np.mean(w["position_bpb"]) == pytest.approx(w["bits_per_byte"], rel=1e-6)
    assert 7.5 < w["bits_per_byte"] < 8.5  # an untrained model: about log2(256)


@pytest.mark.slow  # trains six models through the command line
def test_quality_run_dropin_and_every_family_beats_order0(tmp_path):
    """The whole loop through the CLI and the worker: n-gram floor, one variant per family trained
    on the same budget, checkpoints, and the drop-in table of the first variant's checkpoint."""
    variants = [
        "fused.sdpa",
        "naive.softmax",
        "sliding_window.blocked:window=64",
        "sliding_window.blocked:window=8",
        "sparse.bigbird.blocked:block=16",
        "linear.elu.chunked:chunk=32",
    ]
    out = tmp_path / "runs"
    proc = run_cli(
        "quality",
        "--dataset",
        "pystdlib",
        "--variants",
        ",".join(variants),
        "--train-tokens",
        "240K",
        "--train-len",
        "64",
        "--batch",
        "16",
        "--eval-lens",
        "32,64",
        "--eval-tokens",
        "8K",
        "--out",
        str(out),
        "--quiet",
    )
    run = only_run(out)
    rows = results.read_rows(run)
    assert all(r["status"] == "ok" for r in rows), [
        (r["case_id"], r["reason"]) for r in rows if r["status"] != "ok"
    ]
    info = results.read_run_json(run)
    assert info["datasets"]["pystdlib"]["sha256"] == load_corpus("pystdlib").sha256
    evals = {(r["variant"], r["eval_len"]): r for r in rows if r["pass"] == "eval"}
    order0 = evals[("fused.sdpa", 64)]["order0_bpb"]
    assert 4.4 < order0 < 4.7  # Python source, order 0
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
    dropin = {
        (r["variant"], r["eval_len"]): r for r in rows if r["pass"] == "dropin" and "eval_len" in r
    }
    assert abs(dropin[("naive.softmax", 64)]["rel_diff"]) < 1e-4
    assert abs(dropin[("sliding_window.blocked:window=64,block=64", 64)]["rel_diff"]) < 1e-4
    assert dropin[("sliding_window.blocked:window=8,block=64", 32)]["rel_diff"] > 1e-3  # worse
    assert dropin[("linear.elu.chunked:chunk=32", 32)]["rel_diff"] > 1e-2
    assert "drop-in" in proc.stdout and "ngram:order=4" in proc.stdout
    # the checkpoint loads with weights_only=True and evaluates to the recorded number
    ckpt = run / "checkpoints" / checkpoint_name("fused.sdpa", 0)
    model, payload = load_checkpoint(ckpt)
    assert payload["meta"]["dataset"] == "pystdlib"
    # drop-in mode from the command line, on that checkpoint
    out2 = tmp_path / "dropin"
    run_cli(
        "quality",
        "--mode",
        "dropin",
        "--checkpoint",
        str(ckpt),
        "--variants",
        "naive.softmax,sliding_window.masked:window=32",
        "--eval-lens",
        "32",
        "--eval-tokens",
        "8K",
        "--ngram-order",
        "0",
        "--out",
        str(out2),
        "--quiet",
    )
    rows2 = [r for r in results.read_rows(only_run(out2)) if "eval_len" in r]
    assert all(r["status"] == "ok" and abs(r["rel_diff"]) < 1e-4 for r in rows2)
    assert rows2[0]["trained_bpb"] == pytest.approx(
        dropin[("naive.softmax", 32)]["trained_bpb"], rel=1e-6
    )


@pytest.fixture(scope="module")
def planted_quality_rows(tmp_path_factory):
    """One short quality run of two planted variants and a control (one command, read by the
    divergence and the future-leak tests): a NaN output at the first step, and attention that
    sees the next token."""
    out = tmp_path_factory.mktemp("planted")
    run_cli(
        "quality",
        "--dataset",
        "pystdlib",
        "--variants",
        "fused.planted_nan,fused.planted_leaky,fused.sdpa",
        "--train-tokens",
        "4K",
        "--train-len",
        "32",
        "--batch",
        "4",
        "--eval-lens",
        "32",
        "--eval-tokens",
        "1K",
        "--ngram-order",
        "0",
        "--no-dropin",
        "--plugins",
        PLANTED,
        "--out",
        str(out),
        "--quiet",
    )
    return results.read_rows(only_run(out))


@pytest.mark.slow  # trains through the command line and the worker
def test_divergence_is_a_status(planted_quality_rows):
    rows = {(r["variant"], r["pass"]): r for r in planted_quality_rows}
    assert rows[("fused.planted_nan", "train")]["status"] == "diverged"
    assert "at step 1" in rows[("fused.planted_nan", "train")]["reason"]
    assert rows[("fused.planted_nan", "eval")]["status"] == "diverged"
    assert rows[("fused.sdpa", "eval")]["status"] == "ok"


@pytest.mark.slow  # trains through the command line and the worker
def test_a_variant_that_sees_the_future_gets_no_quality_number(planted_quality_rows):
    rows = planted_quality_rows
    leaky = [r for r in rows if r["variant"] == "fused.planted_leaky"]
    assert leaky and all(r["status"] == "incorrect" for r in leaky)
    assert all("sees the future" in r["reason"] for r in leaky)
    assert all(r.get("bits_per_byte") is None for r in leaky)
    assert {r["status"] for r in rows if r["variant"] == "fused.sdpa"} == {"ok"}


def test_the_precheck_passes_every_trained_variant_and_rejects_leaks():
    from attnbench.quality.precheck import check_in_model

    attnbench.load_plugin(PLANTED)
    for spec in (
        "fused.sdpa",
        "linear.elu.chunked:chunk=16",
        "sliding_window.banded:window=16",
        "sparse.bigbird.blocked:block=16",
    ):
        assert check_in_model("tiny", spec, 64) is None, spec
    assert "sees the future" in check_in_model("tiny", "fused.planted_leaky", 64)
    assert "differ from the reference" in check_in_model("tiny", "fused.planted_scaled", 64)


@pytest.mark.slow  # three training processes, two under torchrun
def test_torchrun_two_processes_train_like_one(tmp_path):
    args = [
        "quality",
        "--dataset",
        "pystdlib",
        "--variants",
        "fused.sdpa",
        "--train-tokens",
        "16K",
        "--train-len",
        "64",
        "--batch",
        "8",
        "--eval-lens",
        "64",
        "--eval-tokens",
        "4K",
        "--ngram-order",
        "0",
        "--no-dropin",
        "--quiet",
    ]
    run_cli(*args, "--out", str(tmp_path / "one"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(ROOT / "run_bench.py"),
            *args,
            "--out",
            str(tmp_path / "two"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = {r["pass"]: r for r in results.read_rows(only_run(tmp_path / "one"))}
    two_dir = only_run(tmp_path / "two")
    two = {r["pass"]: r for r in results.read_rows(two_dir)}
    assert one["train"]["status"] == two["train"]["status"] == "ok", one["train"]["reason"]
    assert two["train"]["world_size"] == 2
    assert results.read_run_json(two_dir)["distributed"] == {
        "world_size": 2,
        "backend": "gloo",
        "launcher": "torchrun",
    }
    assert one["train"]["train_steps"] == two["train"]["train_steps"] == 31
    for a, b in zip(one["train"]["loss_curve"], two["train"]["loss_curve"]):
        assert a[3] == pytest.approx(b[3], rel=1e-4)
    assert one["eval"]["bits_per_byte"] == pytest.approx(two["eval"]["bits_per_byte"], rel=1e-4)
    assert two["train"]["data_parallel"] == "ddp, gloo, world 2" and two["train"]["threads"] >= 1
    assert one["train"]["data_parallel"] == ""  # no process group: plain training
    assert (two_dir / "report.md").is_file()  # the torchrun path ends with the same report


@pytest.mark.slow  # trains under torchrun
def test_torchrun_with_one_process_still_trains_through_its_process_group(tmp_path):
    """What the GPU check's NCCL check relies on: one process under torchrun takes the torchrun
    path, and DDP (which all-reduces even at world size 1) with the collectives."""
    from attnbench.bench.torchrun import launched_by_torchrun

    assert not launched_by_torchrun({"WORLD_SIZE": "1"})
    assert launched_by_torchrun({"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "1"})
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "1",
            str(ROOT / "run_bench.py"),
            "quality",
            "--dataset",
            "pystdlib",
            "--variants",
            "fused.sdpa",
            "--train-tokens",
            "2K",
            "--train-len",
            "32",
            "--batch",
            "4",
            "--eval-lens",
            "32",
            "--eval-tokens",
            "1K",
            "--ngram-order",
            "0",
            "--no-dropin",
            "--quiet",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = only_run(tmp_path)
    assert results.read_run_json(run)["distributed"]["backend"] == "gloo"
    train = next(r for r in results.read_rows(run) if r["pass"] == "train")
    assert train["data_parallel"] == "ddp, gloo, world 1" and train["status"] == "ok"


class _Copier(torch.nn.Module):
    """A 'language model' that predicts the byte ``lag`` positions back, or nothing before that."""

    def __init__(self, lag: int):
        super().__init__()
        self.lag = lag
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, idx):
        logits = torch.zeros(*idx.shape, 256)
        nxt = idx[:, 1 - self.lag :] if self.lag > 1 else idx
        logits[:, self.lag - 1 :].scatter_(-1, nxt[:, : idx.shape[1] - self.lag + 1, None], 50.0)
        return logits


def test_copy_probe_scores_the_second_copy():
    perfect = copy_probe(_Copier(32), 32, sequences=4)
    assert perfect["copy_bpb"] < 0.3 and perfect["first_copy_bpb"] > 7.9  # log2(256): uniform
    blind = copy_probe(_Copier(5), 32, sequences=4)  # looks back 5: cannot reach the first copy
    assert blind["copy_bpb"] > 7.9
