"""One way to launch a suite, whoever asks (the CLI, the GPU check, a script):

    outcome = launch(suite, out="runs")        # or resume="runs/<id>"

creates the run folder (or checks the one to resume), plans once, hands the cases to the
launcher (local worker processes, submitit jobs, or torchrun's data-parallel training, which is
chosen when torchrun started this process), and writes the report at the end on every path. A
report that cannot be written (a full disk) is not a traceback: the rows are complete, and the
outcome says so and how to write the report again.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attnbench.bench import results
from attnbench.bench.plan import plan
from attnbench.bench.suite import Suite

LAUNCHERS = ("local", "submitit", "torchrun")


@dataclass(frozen=True)
class Launcher:
    """Where the cases run. ``kind``: ``local`` (``workers`` slots on this machine),
    ``submitit`` (jobs; ``submitit`` holds ``attnbench.bench.scaleout.launch``'s options:
    ``local``, ``max_jobs``, ``partition``, ``gpus_per_job``, ``cpus_per_job``,
    ``timeout_min``) or ``torchrun`` (quality training data-parallel; chosen automatically when
    torchrun started this process). ``time_limit_s``: the local launcher starts no case after
    that many seconds (the rest are measured by a resume)."""

    kind: str = "local"
    workers: int = 1
    time_limit_s: float | None = None
    submitit: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in LAUNCHERS:
            raise ValueError(f"unknown launcher {self.kind!r}; valid: {', '.join(LAUNCHERS)}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.submitit.get("max_jobs", 1) < 1:
            raise ValueError(f"max_jobs must be >= 1, got {self.submitit['max_jobs']}")
        if self.time_limit_s is not None and self.time_limit_s < 0:
            raise ValueError(f"time_limit_s must be >= 0, got {self.time_limit_s}")


@dataclass
class Outcome:
    """What a launch left: the run folder (None on a torchrun process other than 0), its rows,
    the report's files (``report.write_report``'s dict) or why it could not be written."""

    run_dir: Path | None
    rows: list[dict[str, Any]]
    report: dict[str, Any] | None
    report_error: str | None
    seconds: float
    cases_planned: int


def run_folder(suite: Suite, out: str | Path = "runs", resume: str | Path | None = None) -> Path:
    """The folder of a new run under ``out`` (refused if it exists), or the one to resume
    (refused if it does not)."""
    if resume:
        run_dir = Path(resume)
        if not run_dir.is_dir():
            raise ValueError(f"--resume {resume}: no such run folder")
        return run_dir
    run_dir = Path(out) / results.new_run_id(suite.name)
    if run_dir.exists():
        raise ValueError(f"{run_dir} already exists; use --resume to continue it")
    return run_dir


def launch(
    suite: Suite,
    *,
    out: str | Path = "runs",
    resume: str | Path | None = None,
    run_dir: str | Path | None = None,
    force: bool = False,
    plugins=(),
    command: list[str] | None = None,
    progress: bool = True,
    launcher: Launcher | None = None,
    deadline: float | None = None,
    report: bool = True,
) -> Outcome:
    """Measure ``suite`` into a run folder and write its report (see the module docstring).
    ``run_dir``: a folder chosen by the caller (created if missing) instead of a new one under
    ``out``; ``deadline`` (``time.time()`` seconds) overrides the launcher's time limit."""
    from attnbench.bench import torchrun

    start = time.time()
    launcher = launcher or Launcher()
    if torchrun.launched_by_torchrun():
        launcher = Launcher("torchrun")
    if run_dir is not None:
        run_dir = Path(run_dir)
    else:
        run_dir = run_folder(suite, out, resume)
    resuming = bool(resume) or (run_dir / results.RUN_FILE).exists()
    if deadline is None and launcher.time_limit_s is not None:
        deadline = start + launcher.time_limit_s
    if launcher.kind == "torchrun":
        if suite.quality is None or any(
            getattr(suite, s) is not None for s in ("op", "model", "recall")
        ):
            raise ValueError("only a quality-only suite trains data-parallel under torchrun")
        cases_planned = -1  # planned by the training processes
        where = torchrun.run_quality(
            suite, run_dir, resume=resuming, force=force, plugins=plugins, command=command
        )
        if where is None:  # a process other than 0: process 0 writes the rows and the report
            return Outcome(None, [], None, None, time.time() - start, cases_planned)
    else:
        cases = plan(suite)
        cases_planned = len(cases)
        print(
            f"attnbench: {len(cases)} cases of suite {suite.name!r} -> {run_dir}", file=sys.stderr
        )
        common = dict(
            cases=cases,
            plugins=plugins,
            command=command,
            resume=resuming,
            force=force,
            progress=progress,
        )
        if launcher.kind == "submitit":
            from attnbench.bench.scaleout import launch as submit

            submit(suite, run_dir, **common, **launcher.submitit)
        else:
            from attnbench.bench import runner

            runner.run(suite, run_dir, **common, workers=launcher.workers, deadline=deadline)
    rows = results.read_rows(run_dir)
    written, error = write_report_safely(run_dir, rows) if report else (None, None)
    return Outcome(run_dir, rows, written, error, time.time() - start, cases_planned)


def write_report_safely(
    run_dir: Path, rows: list[dict[str, Any]]
) -> tuple[dict[str, Any] | None, str | None]:
    """(the report's files, None), or (None, why) when it could not be written: the rows are
    complete either way, and ``report`` writes it again from them."""
    if not rows:
        return None, None
    from attnbench.report.document import write_report

    try:
        return write_report(run_dir), None
    except Exception as e:  # noqa: BLE001 - a full disk, a read-only folder: the rows stand
        return None, (
            f"the results are complete ({len(rows)} rows in {run_dir / results.RESULTS_FILE}), "
            f"but writing the report failed: {type(e).__name__}: {e}. Make room, then run "
            f"`python run_bench.py report {run_dir}`"
        )
