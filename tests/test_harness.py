"""The measurement harness measured: time and memory of planted variants, failures as rows,
kill-and-resume, suite validation, results loading."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import attnbench
from attnbench.bench import results
from attnbench.bench import runner
from attnbench.bench.suite import Suite, from_dict, load_suite, with_overrides

ROOT = Path(__file__).resolve().parent.parent
PLANTED = str(Path(__file__).parent / "plugins" / "planted.py")


@pytest.fixture(scope="module", autouse=True)
def planted_variants():
    attnbench.load_plugin(PLANTED)
    yield
    for name in attnbench.variant_names():
        if ".planted_" in name:
            attnbench.unregister_variant(name)
    attnbench.registry._PLUGINS.discard(os.path.realpath(PLANTED))


def _suite(variants, seq_lens=(256,), passes=("fwd",), **timing):
    t = {"budget_s": 0.05, "min_reps": 2, "max_reps": 10, "timeout_s": 60, **timing}
    return from_dict({"name": "t", "device": "cpu",
                      "op": {"variants": list(variants), "seq_lens": list(seq_lens), "heads": 2,
                             "head_dims": [32], "passes": list(passes)},
                      "timing": t})


def _rows(run_dir):
    return {(r["variant"], r["pass"], r["seq_len"]): r for r in results.read_rows(run_dir)}


def test_time_scales_with_planted_work(tmp_path):
    # Each variant is measured three times and its fastest median kept: a neighbour on this shared
    # machine can only slow a measurement down, so the minimum is the least disturbed one.
    suite = from_dict({"name": "t", "device": "cpu",
                       "op": {"variants": ["fused.planted_work:times=1", "fused.planted_work:times=4"],
                              "seq_lens": [1024], "heads": 8, "head_dims": [64], "passes": ["fwd"]},
                       "timing": {"budget_s": 0.4, "min_reps": 5, "max_reps": 200, "threads": 1,
                                  "repeats": 3}})
    runner.run(suite, tmp_path / "run", plugins=[PLANTED], progress=False)
    rows = results.read_rows(tmp_path / "run")
    assert [r["status"] for r in rows] == ["ok"] * 6
    fastest = {}
    for r in rows:
        fastest[r["variant"]] = min(fastest.get(r["variant"], float("inf")), r["time_ms"])
    one, four = (fastest[f"fused.planted_work:times={t}"] for t in (1, 4))
    assert 4 * 0.85 <= four / one <= 4 * 1.15, four / one
    assert all(r["time_ms_p20"] <= r["time_ms"] <= r["time_ms_p80"] for r in rows)


def test_memory_sees_a_planted_buffer(tmp_path):
    suite = _suite(["fused.planted_work", "fused.planted_buffer"], seq_lens=[512])
    runner.run(suite, tmp_path / "run", plugins=[PLANTED], progress=False)
    rows = results.read_rows(tmp_path / "run")
    assert all(r["mem_method"] == "cpu_peak_rss" for r in rows)
    extra = rows[1]["peak_mem_bytes"] - rows[0]["peak_mem_bytes"]
    want = 64 * 2**20
    assert abs(extra - want) <= 0.1 * want, extra / 2**20


def test_failures_are_rows_and_the_sweep_goes_on(tmp_path):
    suite = _suite(["fused.planted_oom", "fused.planted_abort", "fused.planted_hang",
                    "fused.planted_wrong", "fused.sdpa", "fused.flash_attn"],
                   seq_lens=[64, 128], timeout_s=8)
    runner.run(suite, tmp_path / "run", plugins=[PLANTED], progress=False)
    rows = _rows(tmp_path / "run")
    status = {k: r["status"] for k, r in rows.items()}
    assert status[("fused.planted_oom", "fwd", 64)] == "oom"
    assert status[("fused.planted_oom", "fwd", 128)] == "skipped_after_oom"
    assert status[("fused.planted_abort", "fwd", 64)] == "crash"
    assert "SIGABRT" in rows[("fused.planted_abort", "fwd", 64)]["reason"]
    assert status[("fused.planted_hang", "fwd", 64)] == "timeout"
    assert status[("fused.planted_wrong", "fwd", 64)] == "incorrect"
    assert rows[("fused.planted_wrong", "fwd", 64)]["time_ms"] is None  # no speed for a wrong answer
    assert status[("fused.sdpa", "fwd", 64)] == status[("fused.sdpa", "fwd", 128)] == "ok"
    assert status[("fused.flash_attn", "fwd", 64)] == "unsupported"
    assert "not installed" in rows[("fused.flash_attn", "fwd", 64)]["reason"]


def test_killed_run_resumes_with_every_case_once(tmp_path):
    out = tmp_path / "runs"
    cmd = [sys.executable, str(ROOT / "run_bench.py"), "run", "--suite", "smoke", "--out", str(out),
           "--quiet", "--budget", "0.02"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    run_dir = None
    while time.time() < deadline:
        found = list(out.glob("*/results.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= 5:
            run_dir = found[0].parent
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert run_dir is not None, "the run wrote no rows"
    with open(run_dir / "results.jsonl", "a") as f:
        f.write('{"case_id": "torn')  # what a kill in the middle of a write leaves
    with pytest.warns(UserWarning, match="torn last line"):
        before = results.read_rows(run_dir)
    assert 5 <= len(before) < len(runner.plan(load_suite("smoke")))
    done = subprocess.run([sys.executable, str(ROOT / "run_bench.py"), "run", "--resume",
                           str(run_dir), "--quiet"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert str(run_dir) in done.stdout
    rows = results.read_rows(run_dir)
    ids = [r["case_id"] for r in rows]
    assert len(ids) == len(set(ids)) == len(runner.plan(load_suite("smoke")))
    assert {r["status"] for r in rows} == {"ok"}
    frame = results.load(run_dir)
    assert set(results.CORE_FIELDS) <= set(frame.columns) and len(frame) == len(rows)
    info = results.read_run_json(run_dir)
    assert info["resumed"] and info["ceilings"]["matmul_flops_per_s"]["float32"] > 0
    assert info["environment"]["packages"]["torch"].startswith("2.")
    assert {"git_commit", "git_dirty", "worker_threads", "device_name"} <= set(info["environment"])


def test_rows_carry_the_core_fields(tmp_path):
    runner.run(_suite(["fused.sdpa"], passes=("fwd", "fwd_bwd", "decode")), tmp_path / "run",
               progress=False)
    for row in results.read_rows(tmp_path / "run"):
        assert set(results.CORE_FIELDS) <= set(row)
        assert row["status"] == "ok" and row["level"] == "op"
        assert row["flops"] == attnbench.get_variant("fused.sdpa").flops(
            attnbench.Case(batch=1, seq_len=256, heads=2, head_dim=32, pass_=row["pass"]))
        assert 0 < row["frac_of_ceiling"] < 2
    decode = [r for r in results.read_rows(tmp_path / "run") if r["pass"] == "decode"][0]
    assert decode["cache_bytes"] == 2 * 1 * 256 * 2 * 32 * 4 + 2 * 1 * 2 * 32 * 4


@pytest.mark.parametrize("data, needle", [
    ({"op": {"variants": ["fused.sdpa"], "seqlens": [1]}}, "op.seqlens: unknown key; valid keys: variants, seq_lens"),
    ({"op": {"variants": ["fused.sdpa"], "passes": ["fwd", "bwd"]}}, "unknown pass 'bwd'; valid: fwd, fwd_bwd, decode"),
    ({"op": {"variants": ["fused.sdpa"], "dtypes": ["fp8"]}}, "unknown dtype 'fp8'"),
    ({"op": {"variants": ["fused.sdpx"]}}, "unknown variant 'fused.sdpx'"),
    ({"op": {"variants": ["fused.sdpa"], "seq_lens": [0]}}, "op.seq_lens: items must be positive integers"),
    ({"model": {"variants": ["fused.sdpa"], "preset": "huge"}}, "unknown preset 'huge'"),
    ({"timing": {"budget_s": -1}, "op": {"variants": ["fused.sdpa"]}}, "timing.budget_s: must be a positive number"),
    ({"name": "x"}, "needs an [op], [model], [quality] or [recall] section"),
    ({"colour": "red"}, "colour: unknown key"),
    ({"quality": {"variants": ["fused.sdpa"], "dataset": "enwik9"}}, "unknown dataset 'enwik9'; valid: pystdlib"),
    ({"quality": {"variants": ["fused.sdpa"], "eval_method": "strided"}}, "valid: windows, sliding"),
    ({"quality": {"variants": ["fused.sdpa"], "mode": "dropin"}}, "dropin mode needs a checkpoint file"),
    ({"quality": {"variants": ["fused.sdpa"], "mode": "eval"}}, "unknown mode 'eval'; valid: train, dropin"),
    ({"quality": {"variants": []}}, "quality.variants: must name at least one variant"),
    ({"recall": {"variants": ["fused.sdpa"], "seq_lens": [16], "kv_pairs": [8]}}, "no (seq_len, kv_pairs) setting fits"),
])
def test_bad_suites_are_rejected_before_anything_runs(data, needle):
    with pytest.raises(ValueError) as info:
        from_dict(data)
    assert needle in str(info.value)


def test_every_committed_suite_loads_and_overrides_apply():
    for name in ("smoke", "quick", "standard", "gpu", "perf"):
        suite = load_suite(name)
        assert runner.plan(suite)
    quick = with_overrides(load_suite("quick"), {"op.seq_lens": [512], "timing.budget_s": 0.1})
    assert quick.op.seq_lens == (512,) and quick.timing.budget_s == 0.1
    gpu = load_suite("gpu")
    for c in (c for c in runner.plan(gpu) if c["level"] == "op"):  # constant tokens per batch
        assert c["batch"] == max(1, gpu.op.total_tokens // c["seq_len"])
    with pytest.raises(ValueError, match="no suite 'nope'; known suites: gpu, perf, quick, smoke, standard"):
        load_suite("nope")


def test_cli_op_command_and_errors(tmp_path):
    cmd = [sys.executable, str(ROOT / "run_bench.py")]
    ok = subprocess.run(cmd + ["op", "--variants", "fused.sdpa,sliding_window.blocked:window=32",
                               "--seq-lens", "64", "--passes", "fwd", "--budget", "0.02",
                               "--out", str(tmp_path), "--quiet"],
                        cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "run folder:" in ok.stdout and "sliding_window.blocked" in ok.stdout
    bad = subprocess.run(cmd + ["op", "--variants", "fused.sdpx", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown variant 'fused.sdpx'" in bad.stderr
