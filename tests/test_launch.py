"""One launch function for every caller: the run folder, one plan, the launcher, the report at
the end, and a report that cannot be written reported as such with the rows kept."""

from __future__ import annotations

import pytest

from attnbench import launch as launch_mod
from attnbench.bench import results, runner
from attnbench.bench.suite import from_dict
from attnbench.launch import Launcher, launch


def _suite():
    return from_dict(
        {
            "name": "t",
            "device": "cpu",
            "op": {
                "variants": ["fused.sdpa", "naive.softmax"],
                "seq_lens": [32, 64],
                "heads": 2,
                "head_dims": [16],
                "passes": ["fwd"],
            },
            "timing": {"budget_s": 0.02, "max_reps": 5, "ceiling_s": 0.1, "memory": False},
        }
    )


@pytest.mark.slow  # runs a suite through the runner's worker processes
def test_one_plan_then_the_rows_and_the_report(tmp_path, monkeypatch):
    calls = []
    real = launch_mod.plan
    monkeypatch.setattr(launch_mod, "plan", lambda s: calls.append(1) or real(s))
    monkeypatch.setattr(runner, "plan", lambda s: pytest.fail("the runner planned again"))
    done = launch(_suite(), out=tmp_path, progress=False)
    assert calls == [1] and done.cases_planned == 4
    assert done.run_dir.parent == tmp_path and len(done.rows) == 4
    assert all(r["status"] == "ok" and r["threads"] >= 1 and r["host"] for r in done.rows)
    assert done.report_error is None and (done.run_dir / "report.md").is_file()
    with pytest.raises(ValueError, match="no such run folder"):
        launch(_suite(), resume=tmp_path / "missing")


@pytest.mark.slow  # runs a suite through the runner's worker processes
def test_a_full_disk_keeps_the_rows_and_says_how_to_write_the_report(tmp_path, monkeypatch):
    import attnbench.report.document as document

    def full(run_dir):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(document, "write_report", full)
    done = launch(_suite(), out=tmp_path, progress=False)
    assert done.report is None and len(results.read_rows(done.run_dir)) == 4
    assert "the results are complete (4 rows" in done.report_error
    assert "No space left on device" in done.report_error
    assert f"run_bench.py report {done.run_dir}" in done.report_error


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"kind": "slurm"}, "unknown launcher 'slurm'; valid: local, submitit, torchrun"),
        ({"workers": 0}, "workers must be >= 1, got 0"),
        ({"kind": "submitit", "submitit": {"max_jobs": 0}}, "max_jobs must be >= 1, got 0"),
        ({"time_limit_s": -1}, "time_limit_s must be >= 0"),
    ],
)
def test_bad_launchers_are_refused_by_name(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        Launcher(**kwargs)
