"""Scale-out: the smoke suite through submitit (its local executor: real job processes, the Slurm
code path) and through several local workers gives the cases of the plain local launcher; a job
killed mid-way leaves its finished cases, and --resume submits only what is missing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnbench.bench import results, runner
from attnbench.bench.suite import load_suite, with_overrides
from helpers import only_run, run_cli

pytest.importorskip("submitit")
pytestmark = pytest.mark.slow  # whole suites through every launcher, several times

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--quiet", "--budget", "0.02", "--set", "timing.max_reps=5"]
# one sequence length: the sharding does not depend on the size of the suite (the killed-job
# test keeps both, so the job it kills still has cases left after its third row)
ONE_N = ["--set", "op.seq_lens=[128]"]


def _ids(run: Path) -> list[str]:
    return [r["case_id"] for r in results.read_rows(run)]


def _smoke_ids(overrides: dict | None = None) -> set[str]:
    return {c.case_id for c in runner.plan(with_overrides(load_suite("smoke"), overrides or {}))}


def test_two_local_workers_and_two_submitit_jobs_give_the_local_cases(tmp_path):
    run_cli("run", "--suite", "smoke", "--out", str(tmp_path / "one"), *FAST, *ONE_N)
    run_cli(
        "run", "--suite", "smoke", "--out", str(tmp_path / "two"), "--workers", "2", *FAST, *ONE_N
    )
    run_cli(
        "run",
        "--suite",
        "smoke",
        "--out",
        str(tmp_path / "slurm"),
        "--launcher",
        "submitit",
        "--submitit-local",
        "--max-jobs",
        "2",
        *FAST,
        *ONE_N,
    )
    one, two, slurm = (only_run(tmp_path / d) for d in ("one", "two", "slurm"))
    want = _smoke_ids({"op.seq_lens": [128]})
    for run in (one, two, slurm):
        ids = _ids(run)
        assert len(ids) == len(set(ids)) and set(ids) >= want, run
        assert {r["status"] for r in results.read_rows(run)} == {"ok"}
    assert set(_ids(one)) == set(_ids(two)) == set(_ids(slurm))
    info = results.read_run_json(two)
    assert (
        info["environment"]["worker_processes"] == 2 and info["environment"]["worker_threads"] == 1
    )
    info = results.read_run_json(slurm)
    (sub,) = info["launcher"]["submissions"]
    assert len(sub["jobs"]) == 2 and sub["missing_cases"] == 0
    for job in sub["jobs"]:
        assert job["job_id"] and job["node"] and Path(job["stdout"]).exists() and job["ceilings"]
    # whole variants per job: each variant's cases come from one shard
    shard_of = {}
    for shard in (slurm / "shards").iterdir():
        for r in results.read_rows(shard):
            assert shard_of.setdefault(r["variant"], shard.name) == shard.name
    assert (slurm / "report.md").exists()


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def test_a_killed_job_leaves_its_cases_and_resume_submits_the_rest(tmp_path):
    out = tmp_path / "runs"
    cmd = [
        sys.executable,
        str(ROOT / "run_bench.py"),
        "run",
        "--suite",
        "smoke",
        "--out",
        str(out),
        "--launcher",
        "submitit",
        "--submitit-local",
        "--max-jobs",
        "2",
        *FAST,
    ]
    launcher = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    victim = None
    while time.time() < deadline and victim is None:
        time.sleep(0.5)
        runs = [p for p in out.glob("*/run.json")]
        if not runs:
            continue
        info = results.read_run_json(runs[0].parent)
        subs = info.get("launcher", {}).get("submissions", [])
        if not subs:
            continue
        job = subs[0]["jobs"][0]
        shard = runs[0].parent / "shards" / job["shard"]
        if len(results.read_rows(shard)) >= 3:
            victim = job
    assert victim is not None, "the first job never wrote three rows"
    for pid in reversed(_descendants(int(victim["job_id"]))):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _, err = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, err[-2000:]
    run = only_run(out)
    info = results.read_run_json(run)
    sub = info["launcher"]["submissions"][0]
    assert sub["missing_cases"] > 0 and "cases missing" in err
    killed = next(j for j in sub["jobs"] if j["shard"] == victim["shard"])
    assert killed.get("error") and killed["state"] != "COMPLETED"
    kept = set(_ids(run))
    assert len(kept) >= 3
    run_cli(
        "run",
        "--resume",
        str(run),
        "--launcher",
        "submitit",
        "--submitit-local",
        "--max-jobs",
        "2",
        *FAST,
    )
    ids = _ids(run)
    assert len(ids) == len(set(ids)) and set(ids) >= _smoke_ids() and kept <= set(ids)
    info = results.read_run_json(run)
    assert len(info["launcher"]["submissions"]) == 2
    assert info["launcher"]["submissions"][1]["missing_cases"] == 0
    resubmitted = sum(j["cases"] for j in info["launcher"]["submissions"][1]["jobs"])
    assert resubmitted == len(_smoke_ids()) - len(kept)  # only what was missing
