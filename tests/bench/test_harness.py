"""The measurement harness measured: time and memory of planted variants, failures as rows,
the correctness gate of every timed pass, kill-and-resume, suite validation, results loading."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import attnbench
from attnbench.bench import gate, measure, results, runner
from attnbench.bench.flops import attention_flops
from attnbench.bench.suite import from_dict, load_suite, with_overrides

ROOT = Path(__file__).resolve().parents[2]
PLANTED = str(Path(__file__).parents[1] / "plugins" / "planted.py")
NAN_ROW = 101  # where tests/plugins/planted.py puts its NaN


pytestmark = pytest.mark.usefixtures("planted_variants")  # tests/conftest.py


def _suite(variants, seq_lens=(256,), passes=("fwd",), dtypes=("float32",), model=None, **timing):
    t = {
        "budget_s": 0.05,
        "min_reps": 5,
        "max_reps": 10,
        "timeout_s": 60,
        "ceiling_s": 0.3,
        **timing,
    }
    data = {
        "name": "t",
        "device": "cpu",
        "op": {
            "variants": list(variants),
            "seq_lens": list(seq_lens),
            "heads": 2,
            "head_dims": [32],
            "passes": list(passes),
            "dtypes": list(dtypes),
        },
        "timing": t,
    }
    if model:
        data["model"] = model
    return from_dict(data)


def _rows(run_dir):
    return {(r["variant"], r["pass"], r["seq_len"]): r for r in results.read_rows(run_dir)}


@pytest.mark.slow  # runs a suite through the runner's worker processes, three repeats
def test_time_scales_with_planted_work(tmp_path):
    # Each variant is measured three times and its fastest median kept: a neighbour on this shared
    # machine can only slow a measurement down, so the minimum is the least disturbed one.
    suite = from_dict(
        {
            "name": "t",
            "device": "cpu",
            "op": {
                "variants": ["fused.planted_work:times=1", "fused.planted_work:times=4"],
                "seq_lens": [1024],
                "heads": 8,
                "head_dims": [64],
                "passes": ["fwd"],
            },
            "timing": {
                "budget_s": 0.4,
                "min_reps": 5,
                "max_reps": 200,
                "threads": 1,
                "repeats": 3,
                "memory": False,
            },
        }
    )
    runner.run(suite, tmp_path / "run", plugins=[PLANTED], progress=False)
    rows = results.read_rows(tmp_path / "run")
    assert [r["status"] for r in rows] == ["ok"] * 6
    fastest = {}
    for r in rows:
        fastest[r["variant"]] = min(fastest.get(r["variant"], float("inf")), r["time_ms"])
    one, four = (fastest[f"fused.planted_work:times={t}"] for t in (1, 4))
    assert 4 * 0.85 <= four / one <= 4 * 1.15, four / one
    assert all(r["time_ms_p20"] <= r["time_ms"] <= r["time_ms_p80"] for r in rows)


@pytest.mark.slow  # runs a suite through the runner's worker processes
def test_memory_sees_a_planted_buffer(tmp_path):
    """A buffer written during the call, one allocated and never written, and 64 MiB of
    per-shape state built in ``prepare``: each counts in the variant's footprint."""
    suite = _suite(
        [
            "fused.planted_work",
            "fused.planted_buffer",
            "fused.planted_untouched",
            "fused.planted_setup",
        ],
        seq_lens=[512],
    )
    runner.run(suite, tmp_path / "run", plugins=[PLANTED], progress=False)
    rows = {r["variant"].split(":")[0]: r for r in results.read_rows(tmp_path / "run")}
    assert all(r["mem_method"] == "cpu_peak_rss" for r in rows.values())  # the memory worker
    base = rows["fused.planted_work"]["peak_mem_bytes"]
    want = 64 * 2**20
    for name in ("fused.planted_buffer", "fused.planted_untouched", "fused.planted_setup"):
        extra = rows[name]["peak_mem_bytes"] - base
        assert abs(extra - want) <= 0.1 * want, (name, extra / 2**20)
    setup = rows["fused.planted_setup"]["setup_mem_bytes"]
    assert abs(setup - want) <= 0.1 * want and rows["fused.planted_work"]["setup_mem_bytes"] < want


@pytest.mark.slow  # runs a suite through the runner's workers; one case waits for its timeout
def test_failures_are_rows_and_the_sweep_goes_on(tmp_path):
    suite = _suite(
        [
            "fused.planted_oom",
            "fused.planted_abort",
            "fused.planted_hang",
            "fused.planted_wrong",
            "fused.sdpa",
            "fused.flash_attn",
        ],
        seq_lens=[64, 128],
        timeout_s=8,
    )
    runner.run(suite, tmp_path / "run", plugins=[PLANTED], progress=False)
    rows = _rows(tmp_path / "run")
    status = {k: r["status"] for k, r in rows.items()}
    assert status[("fused.planted_oom", "fwd", 64)] == "oom"
    assert status[("fused.planted_oom", "fwd", 128)] == "skipped_after_oom"
    assert status[("fused.planted_abort", "fwd", 64)] == "crash"
    assert "SIGABRT" in rows[("fused.planted_abort", "fwd", 64)]["reason"]
    assert status[("fused.planted_hang", "fwd", 64)] == "timeout"
    assert status[("fused.planted_wrong", "fwd", 64)] == "incorrect"
    # no speed for a wrong answer
    assert rows[("fused.planted_wrong", "fwd", 64)]["time_ms"] is None
    assert status[("fused.sdpa", "fwd", 64)] == status[("fused.sdpa", "fwd", 128)] == "ok"
    assert status[("fused.flash_attn", "fwd", 64)] == "unsupported"
    assert "not installed" in rows[("fused.flash_attn", "fwd", 64)]["reason"]


def test_every_timed_pass_is_gated_and_planted_errors_are_incorrect(tmp_path):
    """Each planted error fails the gate of the pass that shows it and gets no time; the
    unplanted controls (the same SDPA) pass every gate."""
    # where the sample does not look
    assert NAN_ROW not in gate.sample_rows(256, 48, "cpu").tolist()
    suite = _suite(
        [
            "fused.sdpa",
            "fused.planted_wrong_dk",
            "fused.planted_nan_row",
            "fused.planted_drop_oldest",
        ],
        passes=("fwd", "fwd_bwd", "bwd", "decode"),
        model={
            "preset": "tiny",
            "variants": ["fused.sdpa", "fused.planted_wrong"],
            "seq_lens": [32],
            "batch": 2,
        },
    )
    runner.run(suite, tmp_path / "run", plugins=[PLANTED], progress=False)
    rows = {(r["level"], r["variant"], r["pass"]): r for r in results.read_rows(tmp_path / "run")}
    incorrect = {k for k, r in rows.items() if r["status"] == "incorrect"}
    assert incorrect == {
        ("op", "fused.planted_wrong_dk", "fwd_bwd"),
        ("op", "fused.planted_wrong_dk", "bwd"),
        ("op", "fused.planted_nan_row", "fwd"),
        ("op", "fused.planted_nan_row", "fwd_bwd"),
        ("op", "fused.planted_nan_row", "bwd"),
        ("op", "fused.planted_drop_oldest", "decode"),
        ("model", "fused.planted_wrong", "train_step"),
        ("model", "fused.planted_wrong", "prefill"),
        ("model", "fused.planted_wrong", "decode"),
    }, {k: r["reason"] for k, r in rows.items() if r["status"] != "ok"}
    assert "dk" in rows[("op", "fused.planted_wrong_dk", "fwd_bwd")]["reason"]
    assert "non-finite" in rows[("op", "fused.planted_nan_row", "fwd")]["reason"]
    assert "decoded token" in rows[("op", "fused.planted_drop_oldest", "decode")]["reason"]
    for key, r in rows.items():
        assert r["gated"] is True
        if r["status"] == "incorrect":
            assert r["time_ms"] is None  # no speed for a wrong answer
        else:
            assert r["status"] == "ok", (key, r["reason"])
    decoders = {r["decoder"] for k, r in rows.items() if k[2] == "decode" and k[0] == "op"}
    assert decoders == {"kv_cache.sdpa", "kv_cache.planted_drop_oldest"}


@pytest.mark.slow  # runs a suite through the runner's worker processes
def test_a_bfloat16_output_halved_on_most_rows_is_incorrect(tmp_path):
    """Rows far into a long sequence have small values: a tolerance scaled by the largest value
    of the whole output would let them be off by a factor of two in bfloat16."""
    suite = _suite(["fused.sdpa", "fused.planted_half_rows"], seq_lens=[2048], dtypes=["bfloat16"])
    runner.run(suite, tmp_path / "run", plugins=[PLANTED], progress=False)
    status = {r["variant"]: (r["status"], r["reason"]) for r in results.read_rows(tmp_path / "run")}
    assert status["fused.sdpa"][0] == "ok", status
    assert status["fused.planted_half_rows"][0] == "incorrect", status


@pytest.mark.slow  # runs a suite through the runner's worker processes
def test_an_ungated_run_says_so_in_every_row_and_the_report(tmp_path):
    from attnbench.report.document import write_report

    suite = _suite(["fused.planted_wrong"], gate=False)
    runner.run(suite, tmp_path / "run", plugins=[PLANTED], progress=False)
    (row,) = results.read_rows(tmp_path / "run")
    assert row["status"] == "ok" and row["gated"] is False
    assert "Not gated" in write_report(tmp_path / "run")["markdown"].read_text()


@pytest.mark.slow  # the whole smoke suite, killed and resumed
def test_killed_run_resumes_with_every_case_once(tmp_path):
    out = tmp_path / "runs"
    cmd = [
        sys.executable,
        str(ROOT / "run_bench.py"),
        "run",
        "--suite",
        "smoke",
        "--out",
        str(out),
        "--quiet",
        "--budget",
        "0.02",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
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
    done = subprocess.run(
        [sys.executable, str(ROOT / "run_bench.py"), "run", "--resume", str(run_dir), "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
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
    # the killed session measured its start ceilings; the resume its own, at start and end
    session = info["resumed"][-1]["ceilings"]
    assert (
        session["end"]["matmul_flops_per_s"]["float32"] > 0 and "matmul_float32" in session["drift"]
    )
    assert info["environment"]["packages"]["torch"].startswith("2.")
    assert {"git_commit", "git_dirty", "worker_threads", "device_name"} <= set(info["environment"])
    # every row carries the host and the ceiling it was divided by
    assert all(r["host"] and r["ceiling_flops_per_s"] > 0 for r in rows if r["level"] == "op")
    # resuming with another suite mixes settings: refused, unless forced (and then recorded)
    other = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run_bench.py"),
            "run",
            "--resume",
            str(run_dir),
            "--suite",
            "smoke",
            "--budget",
            "0.03",
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert (
        other.returncode == 2 and "the suite differs" in other.stderr and "--force" in other.stderr
    )
    forced = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run_bench.py"),
            "run",
            "--resume",
            str(run_dir),
            "--suite",
            "smoke",
            "--budget",
            "0.03",
            "--force",
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert forced.returncode == 0, forced.stderr
    last = results.read_run_json(run_dir)["resumed"][-1]
    assert last["forced"] and "the suite differs from the run's" in last["changes"]


@pytest.mark.slow  # runs a suite through the runner's worker processes
def test_rows_carry_the_core_fields(tmp_path):
    suite = _suite(
        ["fused.sdpa"],
        passes=("fwd", "bwd", "fwd_bwd", "decode"),
        env={"THP_MEM_ALLOC_ENABLE": "1"},
    )
    runner.run(suite, tmp_path / "run", progress=False)
    for row in results.read_rows(tmp_path / "run"):
        assert set(results.CORE_FIELDS) <= set(row)
        assert row["status"] == "ok" and row["level"] == "op" and row["exact"] is True
        assert row["flops"] == attention_flops(
            attnbench.get_variant("fused.sdpa"),
            attnbench.Case(batch=1, seq_len=256, heads=2, head_dim=32, pass_=row["pass"]),
        )
        assert 0 < row["frac_of_ceiling"] < 2
        assert row["timing_env"] == {
            **measure.KEEP_HEAP_ENV,
            measure.HEAP_HOLD_ENV: str(measure.heap_hold_bytes()),
            "THP_MEM_ALLOC_ENABLE": "1",
        }
        assert row["reps"] >= 5
        assert row["time_ms_p20"] <= row["time_ms"] <= row["time_ms_p80"]
        assert row["noisy"] == (row["spread"] > 0.10)
    decode = [r for r in results.read_rows(tmp_path / "run") if r["pass"] == "decode"][0]
    assert decode["cache_bytes"] == 2 * 1 * 256 * 2 * 32 * 4  # 256 tokens of K and V
    assert decode["read_bytes"] == 2 * 1 * 257 * 2 * 32 * 4 and decode["bytes_per_s"] > 0
    assert decode["decoder"] == "kv_cache.sdpa"


@pytest.mark.slow  # a sweep through the command line
def test_grouped_query_attention_through_every_family(tmp_path):
    """`op --kv-heads 2 --heads 8`: every family runs gated, and the decode cache is a quarter
    of the kv_heads = 8 cache."""
    variants = [
        "naive.softmax",
        "fused.sdpa",
        "sliding_window.banded:window=64",
        "sparse.bigbird.union:block=32",
        "linear.elu.chunked:chunk=32",
    ]
    cmd = [
        sys.executable,
        str(ROOT / "run_bench.py"),
        "op",
        "--variants",
        ",".join(variants),
        "--heads",
        "8",
        "--kv-heads",
        "8,2",
        "--head-dims",
        "32",
        "--seq-lens",
        "256",
        "--passes",
        "fwd,fwd_bwd,decode",
        "--budget",
        "0.02",
        "--out",
        str(tmp_path),
        "--quiet",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = list(tmp_path.iterdir())
    rows = results.read_rows(run)
    assert len(rows) == len(variants) * 2 * 3
    assert all(r["status"] == "ok" and r["gated"] for r in rows), [
        (r["variant"], r["pass"], r["kv_heads"], r["reason"]) for r in rows if r["status"] != "ok"
    ]
    cache = {(r["variant"], r["kv_heads"]): r["cache_bytes"] for r in rows if r["pass"] == "decode"}
    for v in variants:
        label = attnbench.get_variant(v).label
        if v.startswith("linear"):  # a state per key/value head
            assert cache[(label, 2)] * 4 == cache[(label, 8)]
        else:
            assert cache[(label, 2)] * 4 == cache[(label, 8)], (v, cache)


@pytest.mark.slow  # runs a suite through the runner's worker processes
def test_noncausal_bwd_head_dim_256_and_the_total_token_sweep(tmp_path):
    suite = from_dict(
        {
            "name": "t",
            "device": "cpu",
            "op": {
                "variants": ["fused.sdpa", "naive.softmax", "linear.elu.chunked"],
                "seq_lens": [64, 128],
                "total_tokens": 256,
                "model_dim": 512,
                "head_dims": [256],
                "causal": [True, False],
                "passes": ["fwd", "bwd"],
            },
            "timing": {"budget_s": 0.02, "min_reps": 5, "max_reps": 5, "memory": False},
        }
    )
    runner.run(suite, tmp_path / "run", progress=False)
    rows = results.read_rows(tmp_path / "run")
    assert len(rows) == 3 * 2 * 2 * 2
    assert all(r["status"] == "ok" for r in rows), [
        (r["case_id"], r["reason"]) for r in rows if r["status"] != "ok"
    ]
    assert {(r["seq_len"], r["batch"], r["heads"]) for r in rows} == {(64, 4, 2), (128, 2, 2)}
    assert {r["causal"] for r in rows} == {True, False}


@pytest.mark.parametrize(
    "data, needle",
    [
        (
            {"op": {"variants": ["fused.sdpa"], "seqlens": [1]}},
            "op.seqlens: unknown key; valid keys: variants, seq_lens",
        ),
        (
            {"op": {"variants": ["fused.sdpa"], "passes": ["fwd", "back"]}},
            "unknown pass 'back'; valid: fwd, bwd, fwd_bwd, decode",
        ),
        (
            {"op": {"variants": ["fused.sdpa"], "heads": 8, "kv_heads": [3]}},
            "op.kv_heads: 3 does not divide heads=8",
        ),
        ({"op": {"variants": ["fused.sdpa"]}, "timing": {"min_reps": 3}}, "5 <= min_reps"),
        ({"op": {"variants": ["fused.sdpa"]}, "timing": {"warmup": 0}}, "warmup >= 1"),
        ({"op": {"variants": ["fused.sdpa"], "dtypes": ["fp8"]}}, "unknown dtype 'fp8'"),
        ({"op": {"variants": ["fused.sdpx"]}}, "unknown variant 'fused.sdpx'"),
        (
            {"op": {"variants": ["fused.sdpa"], "seq_lens": [0]}},
            "op.seq_lens: items must be positive integers",
        ),
        ({"model": {"variants": ["fused.sdpa"], "preset": "huge"}}, "unknown preset 'huge'"),
        (
            {"timing": {"budget_s": -1}, "op": {"variants": ["fused.sdpa"]}},
            "timing.budget_s: must be a positive number",
        ),
        ({"name": "x"}, "needs an [op], [model], [quality] or [recall] section"),
        ({"colour": "red"}, "colour: unknown key"),
        (
            {"quality": {"variants": ["fused.sdpa"], "dataset": "enwik9"}},
            "unknown dataset 'enwik9'; valid: pystdlib",
        ),
        (
            {"quality": {"variants": ["fused.sdpa"], "eval_method": "strided"}},
            "valid: windows, sliding",
        ),
        (
            {"quality": {"variants": ["fused.sdpa"], "mode": "dropin"}},
            "dropin mode needs a checkpoint file",
        ),
        (
            {"quality": {"variants": ["fused.sdpa"], "mode": "eval"}},
            "unknown mode 'eval'; valid: train, dropin",
        ),
        ({"quality": {"variants": []}}, "quality.variants: must name at least one variant"),
        (
            {"recall": {"variants": ["fused.sdpa"], "seq_lens": [16], "kv_pairs": [8]}},
            "no (seq_len, kv_pairs) setting fits",
        ),
    ],
)
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
    for c in (c for c in runner.plan(gpu) if c.level == "op"):  # constant tokens per batch
        assert c.batch == max(1, gpu.op.total_tokens // c.seq_len)
        assert c.heads == 2048 // c.head_dim  # flash-attention's heads = 2048 / D
    known = "gpu, perf, quick, reproduce, smoke, standard"
    with pytest.raises(ValueError, match=f"no suite 'nope'; known suites: {known}"):
        load_suite("nope")


@pytest.mark.slow  # a sweep through the command line
def test_cli_op_command_and_errors(tmp_path):
    cmd = [sys.executable, str(ROOT / "run_bench.py")]
    ok = subprocess.run(
        cmd
        + [
            "op",
            "--variants",
            "fused.sdpa,sliding_window.blocked:window=32",
            "--seq-lens",
            "64",
            "--passes",
            "fwd",
            "--budget",
            "0.02",
            "--out",
            str(tmp_path),
            "--quiet",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert "run folder:" in ok.stdout and "sliding_window.blocked" in ok.stdout
    bad = subprocess.run(
        cmd + ["op", "--variants", "fused.sdpx", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "unknown variant 'fused.sdpx'" in bad.stderr


@pytest.mark.slow  # runs a suite through the runner's worker processes, twice
def test_a_deadline_starts_no_case_after_it_and_a_resume_measures_the_rest(tmp_path):
    suite = _suite(["fused.sdpa", "naive.softmax"], seq_lens=(64, 128), memory=False)
    run_dir = tmp_path / "run"
    runner.run(suite, run_dir, progress=False, deadline=time.time() - 1)
    info = results.read_run_json(run_dir)
    left = info["deadline"]["skipped_cases"]
    assert results.read_rows(run_dir) == [] and len(left) == 4
    assert info["ceilings"]["end"].startswith("not measured")
    runner.run(suite, run_dir, progress=False, resume=True)
    rows = results.read_rows(run_dir)
    assert sorted(r["case_id"] for r in rows) == sorted(left)
    assert all(r["status"] == "ok" for r in rows)


@pytest.mark.slow  # runs a suite through the runner's worker processes
def test_an_unavailable_corpus_fails_its_quality_cases_not_the_suite(tmp_path, monkeypatch):
    from attnbench.quality.data import CorpusError

    monkeypatch.setenv("ATTNBENCH_OFFLINE", "1")
    monkeypatch.setenv("ATTNBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("ATTNBENCH_DATA_DIR", raising=False)
    quality = {
        "dataset": "enwik8",
        "variants": ["fused.sdpa"],
        "preset": "tiny",
        "train_len": 32,
        "batch": 2,
        "train_tokens": 256,
        "eval_lens": [32],
        "eval_tokens": 64,
        "ngram_order": 0,
        "dropin": False,
    }
    data = {**_suite(["fused.sdpa"], seq_lens=(64,), memory=False).to_dict(), "quality": quality}
    runner.run(from_dict(data), tmp_path / "run", progress=False)
    rows = results.read_rows(tmp_path / "run")
    assert {r["status"] for r in rows if r["level"] == "op"} == {"ok"}
    assert {r["status"] for r in rows if r["level"] == "quality"} == {"error"}
    info = results.read_run_json(tmp_path / "run")
    assert "unavailable" in info["datasets"]["enwik8"]
    only_quality = from_dict({"name": "q", "device": "cpu", "quality": quality})
    with pytest.raises(CorpusError):  # alone, it still fails at once
        runner.run(only_quality, tmp_path / "run2", progress=False)


@pytest.mark.slow  # runs a suite through the runner's workers, a ceiling before each case
def test_each_row_divides_by_a_ceiling_measured_near_it(tmp_path):
    suite = _suite(["fused.sdpa"], seq_lens=(64, 128, 256), memory=False, ceiling_every_s=1e-3)
    runner.run(suite, tmp_path / "run", progress=False)
    info = results.read_run_json(tmp_path / "run")
    (samples,) = info["ceilings"]["samples"]  # one slot: start, one per case, end
    assert len(samples) == 1 + 3 + 1 and info["ceilings"]["every_s"] == 1e-3
    rates = [s["matmul_flops_per_s"]["float32"] for s in samples]
    for row in results.read_rows(tmp_path / "run"):
        assert row["ceiling_age_s"] < 5  # measured just before this case
        assert row["ceiling_measured_flops_per_s"] in rates[1:4]
        # brought to the row's own moment by the rate probe (test_rate_probe.py)
        probes = {s["matmul_flops_per_s"]["float32"]: s["probe_flops_per_s"] for s in samples}
        assert row["machine_rate"] == pytest.approx(
            row["probe_flops_per_s"] / probes[row["ceiling_measured_flops_per_s"]]
        )
        assert row["ceiling_flops_per_s"] == pytest.approx(
            row["ceiling_measured_flops_per_s"] * row["machine_rate"]
        )
        assert row["frac_of_ceiling"] == pytest.approx(
            row["flops_per_s"] / row["ceiling_flops_per_s"]
        )
    never = _suite(["fused.sdpa"], seq_lens=(64, 128), memory=False, ceiling_every_s=0)
    runner.run(never, tmp_path / "never", progress=False)
    (samples,) = results.read_run_json(tmp_path / "never")["ceilings"]["samples"]
    assert len(samples) == 2  # the start and the end only
    with pytest.raises(ValueError, match="ceiling_every_s: must be a non-negative number"):
        _suite(["fused.sdpa"], ceiling_every_s=-1)


@pytest.mark.slow  # runs a suite through the runner's worker processes
def test_run_json_says_where_the_wall_time_went(tmp_path):
    suite = _suite(["fused.sdpa"], seq_lens=(64, 128), passes=("fwd", "fwd_bwd"))
    runner.run(suite, tmp_path / "run", progress=False)
    cost = results.read_run_json(tmp_path / "run")["harness_cost"]
    op = cost["op"]
    assert op["cases"] == 4
    parts = [
        "timed repetitions",
        "warm-up and timing overhead",
        "gating",
        "first calls (compilation)",
        "inputs, masks and plans",
        "memory measurement",
        "the rest",
    ]
    assert all(op[p] >= 0 for p in parts)
    assert op["timed repetitions"] > 0 and op["gating"] > 0
    assert sum(op[p] for p in parts) == pytest.approx(op["wall_s"], abs=0.01)
    assert cost["worker start-ups"]["starts"] >= 2 and cost["worker start-ups"]["seconds"] > 0
    assert cost["ceilings"]["measurements"] >= 2 and cost["ceilings"]["seconds"] > 0
    for row in results.read_rows(tmp_path / "run"):
        assert row["timing_ms"] >= row["timed_ms"] > 0 and row["setup_ms"] >= 0
        assert row["memory_ms"] > 0  # a few ms at these sizes: the level's sum may round to 0
