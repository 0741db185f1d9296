"""The local launcher's sweep: measures planned cases (``plan.py``) in isolated worker
processes (``process.py``), finishing each row the way every launcher does (``rows.py``).

    run(suite, run_dir)         writes run.json, then one results.jsonl row per case

Failures are results: an unsupported case is recorded with its reasons; an exception in the worker
is an ``error`` / ``oom`` row; a case that outlives ``timing.timeout_s`` is killed (``timeout``);
a worker that dies (segfault, abort) is a ``crash`` row, and a fresh worker takes the next case.
After an ``oom``, the same variant at larger N is recorded as ``skipped_after_oom``.
Resuming a run folder measures only the cases it lacks, and refuses a different suite or code
(git commit) unless forced, which run.json records.

Each launcher slot has three workers (``attnbench.bench.worker``): one that times (on a CPU a heap
kept for reuse within a case, ``timing.cpu_heap``, then the suite's ``timing.env``), one that
measures peak memory on the CPU (allocator settings that return memory to the system: they cost page
faults and never touch a timing), and one that trains (quality and recall cases).
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from attnbench import tune
from attnbench.bench import measure, results, rows
from attnbench.bench.plan import balance, case_timeout, groups_of, plan, unsupported_reasons
from attnbench.bench.process import Worker
from attnbench.bench.provenance import start_info
from attnbench.bench.suite import Suite
from attnbench.case import Case
from attnbench.registry import load_plugin

__all__ = ["execute", "plan", "run"]


class _Lines:
    """tqdm's output when stderr is not a terminal (a CI log): one plain line per update."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.strip("\r\n")
        if text.strip():
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(total: int, enabled: bool, unit: str = "case") -> tqdm:
    """A tqdm bar with ETA on a terminal; in a log, a line every tenth of the run."""
    tty = sys.stderr.isatty()
    if not tty:  # tqdm's monitor thread would drop miniters to 1 after a slow case: a line per case
        tqdm.monitor_interval = 0
    return tqdm(
        total=total,
        disable=not enabled or not total,
        unit=unit,
        dynamic_ncols=tty,
        file=sys.stderr if tty else _Lines(sys.stderr),
        mininterval=0.5 if tty else 0,
        miniters=1 if tty else max(1, total // 10),
        ascii=not tty,
    )


def run(
    suite: Suite,
    run_dir: str | Path,
    *,
    plugins: list[str] = (),
    command: list[str] | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    workers: int = 1,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    deadline: float | None = None,
    cases: list[Case] | None = None,
) -> Path:
    """Measure every case of ``suite`` not yet in ``run_dir``; returns the run folder.
    ``workers`` > 1: that many worker slots share the cases (see ``execute``). ``deadline``
    (``time.time()`` seconds): no case starts after it; the cases left are listed in run.json
    (``deadline``) and get no row, so ``--resume`` measures them later. ``cases``: the plan,
    when the caller has built it (``launch`` plans once)."""
    run_dir = Path(run_dir)
    for path in plugins:
        load_plugin(path)
    cases = plan(suite) if cases is None else cases
    writer = results.ResultWriter(run_dir)
    todo = [c for c in cases if c.case_id not in writer.done]
    info = start_info(suite, run_dir, cases, todo, plugins, command, resume, force)
    info["launcher"] = {"kind": "local", "workers": workers}
    execute(
        todo,
        suite,
        run_dir,
        writer,
        info,
        plugins=plugins,
        progress=progress,
        workers=workers,
        on_row=on_row,
        deadline=deadline,
    )
    info["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    results.write_run_json(run_dir, info)
    return run_dir


class Slot:
    """One launcher slot: its timing, memory and training workers, its host and ceilings."""

    def __init__(
        self,
        init: dict[str, Any],
        timing_env: dict[str, str],
        pin: dict[str, str],
        train_init: dict[str, Any] | None = None,
    ):
        self.timing_env = {**timing_env, **pin}
        self.time = Worker(init, env=self.timing_env)
        self.memory = Worker(init, env={**self.timing_env, **measure.MEMORY_ENV})
        self.train = Worker(train_init or init, env=self.timing_env)
        self.ceilings: dict[str, Any] = {}
        self.ceilings_at = 0.0  # time.time() of the ceilings in use
        self.samples: list[dict[str, Any]] = []  # every measurement of this slot's ceilings
        self.ceilings_s = 0.0  # wall time spent measuring them

    def worker_for(self, case: Case) -> Worker:
        return self.train if case.level in ("quality", "recall") else self.time

    def measure_ceilings(self, dtypes: list[str], device: str) -> dict[str, Any]:
        t0 = time.time()
        out = self.time.ask("ceilings", {"dtypes": dtypes, "device": device}, timeout=600)
        self.ceilings, self.ceilings_at = out, time.time()
        self.ceilings_s += self.ceilings_at - t0
        self.samples.append(
            {
                "at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.ceilings_at)),
                "matmul_flops_per_s": out.get("matmul_flops_per_s"),
                "copy_bytes_per_s": out.get("copy_bytes_per_s"),
                "probe_flops_per_s": out.get("probe_flops_per_s"),
            }
        )
        return out

    def refresh_ceilings(
        self, dtypes: list[str], device: str, every_s: float, deadline: float | None
    ) -> None:
        """Re-measure the ceilings once they are ``every_s`` old (0: never), so that each row is
        divided by a ceiling measured at most that long before it: the measurement nearest in
        time when the row is written (a machine's rate drifts over a run: other tenants,
        clocks). Not past the run's deadline."""
        if not dtypes or every_s <= 0 or not self.ceilings:
            return
        now = time.time()
        if now - self.ceilings_at >= every_s and (deadline is None or now < deadline):
            self.measure_ceilings(dtypes, device)

    def stop(self) -> None:
        for w in (self.time, self.memory, self.train):
            w.stop()


def execute(
    todo: list[Case],
    suite: Suite,
    run_dir: Path,
    writer,
    info: dict[str, Any],
    *,
    plugins=(),
    progress: bool = True,
    workers: int = 1,
    on_row=None,
    deadline: float | None = None,
) -> None:
    """Measure ``todo`` into ``writer``: each slot's ceilings (at its start and end) and the
    environment into ``info`` (and run.json), then the sweep. With ``workers`` = K > 1, K slots
    take whole (variant, device) groups, each pinned to one GPU (``CUDA_VISIBLE_DEVICES``) or to a
    1/K share of the CPU threads."""
    device = suite.resolved_device()
    groups = groups_of(todo)
    k = max(1, min(workers, len(groups) or 1))
    threads = suite.timing.threads
    if k > 1 and not device.startswith("cuda"):  # a 1/K share of the CPU each
        threads = max(1, (threads or os.cpu_count() or 1) // k)
    init = {
        "threads": threads,
        "plugins": list(plugins),
        "timing": vars(suite.timing),
        "suite": suite.to_dict(),
        "run_dir": str(run_dir),
    }
    # The timing and memory workers on a CPU: one thread unless the suite says otherwise (as
    # torch.utils.benchmark does): two threads on two shared cores made 62 of 135 quick-suite
    # rows noisy; training keeps PyTorch's default.
    timing_init = dict(
        init,
        threads=suite.timing.threads or (0 if device.startswith("cuda") else TIMING_THREADS_CPU),
    )
    timing_env = measure.timing_env(suite.timing, device)
    slots = [
        Slot(
            timing_init,
            timing_env,
            {"CUDA_VISIBLE_DEVICES": str(i)} if k > 1 and device.startswith("cuda") else {},
            train_init=init,
        )
        for i in range(k)
    ]
    dtypes = sorted({c.dtype_label for c in todo if c.level in ("op", "model")})
    session = info["resumed"][-1] if info.get("resumed") else info
    try:
        if dtypes:
            for slot in slots:
                slot.measure_ceilings(dtypes, device)
            session["ceilings"] = {**slots[0].ceilings, "by_slot": [s.ceilings for s in slots]}
        env = results.environment(device)
        env.update(
            worker_threads=slots[0].time.threads or _probe_threads(slots[0].time),
            worker_processes=k,
            timing_env=timing_env,
            memory_env=dict(measure.MEMORY_ENV),
            mem_method="cuda_allocator" if device.startswith("cuda") else "cpu_peak_rss",
        )
        session["environment"] = env
        results.write_run_json(run_dir, info)
        bar = progress_bar(len(todo), progress)
        lock = threading.Lock()

        def done(row):
            with lock:
                bar.update(1)
                bar.set_postfix_str(
                    f"{row['variant'][:40]} {row['pass']} N={row['seq_len']}", refresh=False
                )
                if on_row:
                    on_row(row)

        sweeps = [(slot, cases) for slot, cases in zip(slots, balance(groups, k))]
        late: list[str] = []  # cases the deadline left unstarted
        if deadline is not None:
            session["deadline"] = {
                "at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(deadline)),
                "skipped_cases": late,
            }
        sweep = functools.partial(
            _sweep,
            writer=writer,
            info=info,
            suite=suite,
            env=env,
            done=done,
            deadline=deadline,
            late=late,
            dtypes=dtypes,
            device=device,
        )
        if k == 1:
            sweep(todo, slots[0])
        else:
            errors: list[BaseException] = []

            def work(slot, cases):
                try:
                    sweep(cases, slot)
                except BaseException as e:  # surfaced after the other slots finish
                    errors.append(e)

            threads_ = [threading.Thread(target=work, args=sc, daemon=True) for sc in sweeps]
            for t in threads_:
                t.start()
            for t in threads_:
                t.join()
            if errors:
                raise errors[0]
        bar.close()
        if dtypes and deadline is not None and time.time() >= deadline:
            session["ceilings"]["end"] = "not measured: past the run's deadline"
        elif dtypes:
            start = [slot.samples[0] for slot in slots]
            end = [slot.measure_ceilings(dtypes, device) for slot in slots]
            session["ceilings"]["end"] = end[0]
            session["ceilings"]["drift"] = _drift(start[0], end[0])
        session["harness_cost"] = harness_cost(run_dir, todo, slots)
        chosen = tuned_sizes(run_dir, todo)
        if chosen:
            session["tuned"] = chosen
        if dtypes:
            session["ceilings"]["samples"] = [s.samples for s in slots]
            session["ceilings"]["every_s"] = suite.timing.ceiling_every_s
        results.write_run_json(run_dir, info)
    finally:
        for slot in slots:
            slot.stop()


COST_PARTS = (  # row field (ms) -> the share of a case's wall time it measures
    ("timed_ms", "timed repetitions"),
    ("timing_ms", "warm-up and timing overhead"),  # minus the timed repetitions
    ("gate_ms", "gating"),
    ("first_call_ms", "first calls (compilation)"),
    ("setup_ms", "inputs, masks and plans"),
    ("memory_ms", "memory measurement"),
)


def harness_cost(run_dir: Path, todo: list[Case], slots: list[Slot]) -> dict[str, Any]:
    """How this session's wall time divides, per level: the timed repetitions, warm-up, gating,
    first calls, setup, memory measurement, the rest of each case (its worker's reply, training
    for quality and recall), and the worker processes' start-ups (``run.json``'s
    ``harness_cost``)."""
    ids = {c.case_id for c in todo}
    out: dict[str, Any] = {}
    for row in results.read_rows(run_dir):
        if row.get("case_id") not in ids or row.get("wall_s") is None:
            continue
        level = out.setdefault(row["level"], {"cases": 0, "wall_s": 0.0})
        level["cases"] += 1
        level["wall_s"] += row["wall_s"]
        parts = {f: (row.get(f) or 0.0) / 1e3 for f, _ in COST_PARTS}
        parts["timing_ms"] = max(0.0, parts["timing_ms"] - parts["timed_ms"])
        for f, name in COST_PARTS:
            level[name] = level.get(name, 0.0) + parts[f]
        level["the rest"] = level.get("the rest", 0.0) + max(
            0.0, row["wall_s"] - sum(parts.values())
        )
    for level in out.values():
        for k in list(level):
            if isinstance(level[k], float):
                level[k] = round(level[k], 3)
    workers = [w for s in slots for w in (s.time, s.memory, s.train)]
    out["worker start-ups"] = {
        "starts": sum(w.starts for w in workers),
        "seconds": round(sum(w.startup_s for w in workers), 2),
    }
    out["ceilings"] = {
        "measurements": sum(len(s.samples) for s in slots),
        "seconds": round(sum(s.ceilings_s for s in slots), 2),
    }
    return out


def tuned_sizes(run_dir: Path, todo: list[Case]) -> dict[str, list[dict[str, Any]]]:
    """The sizes variants chose on this machine (``attnbench.tune``) in this session, per variant:
    each (param, key) once, with the choice and every candidate's time (``run.json``'s
    ``tuned``)."""
    ids = {c.case_id for c in todo}
    out: dict[str, dict[tuple, dict[str, Any]]] = {}
    for row in results.read_rows(run_dir):
        if row.get("case_id") in ids:
            for e in row.get("tuned") or ():
                out.setdefault(row["variant"], {}).setdefault(
                    (e["param"], e["key"]), tune.choice(e)
                )
    return {v: list(chosen.values()) for v, chosen in out.items()}


def _drift(start: dict, end: dict) -> dict[str, float]:
    """end / start - 1 of each ceiling: how much the machine moved while the run measured."""
    out = {}
    for name, value in (start.get("matmul_flops_per_s") or {}).items():
        other = (end.get("matmul_flops_per_s") or {}).get(name)
        if value and other:
            out[f"matmul_{name}"] = other / value - 1
    if start.get("copy_bytes_per_s") and end.get("copy_bytes_per_s"):
        out["copy"] = end["copy_bytes_per_s"] / start["copy_bytes_per_s"] - 1
    return out


def _probe_threads(worker: Worker) -> int | None:
    if worker.proc is None:
        worker.start()
    return worker.threads


def _sweep(
    todo: list[Case],
    slot: Slot,
    writer,
    info,
    suite: Suite,
    env: dict,
    done,
    deadline: float | None = None,
    late: list[str] | None = None,
    dtypes: list[str] = (),
    device: str = "cpu",
) -> None:
    oom_at: dict[tuple, int] = {}
    for case in todo:
        if deadline is not None and time.time() >= deadline:
            late.append(case.case_id)  # not started: no row, so a resume measures it
            continue
        group = (
            case.level,
            case.variant,
            case.pass_,
            case.dtype_label,
            case.head_dim,
            case.kv_heads,
            case.causal,
        )
        if case.level in ("op", "model"):
            slot.refresh_ceilings(dtypes, device, suite.timing.ceiling_every_s, deadline)
        t0 = time.time()
        reasons = unsupported_reasons(case)
        if reasons:
            out = {"status": "unsupported", "reason": "; ".join(reasons)}
        elif group in oom_at and case.seq_len > oom_at[group]:
            out = {
                "status": "skipped_after_oom",
                "reason": f"out of memory at N={oom_at[group]} for this variant and pass",
            }
        else:
            out = slot.worker_for(case).ask("case", case, timeout=case_timeout(case, suite))
            if out["status"] == "oom":
                oom_at[group] = min(oom_at.get(group, case.seq_len), case.seq_len)
            if (
                out["status"] == "ok"
                and case.level in ("op", "model")
                and suite.timing.memory
                and not case.device.startswith("cuda")
            ):
                t_mem = time.time()
                out.update(_memory(slot, case, suite, out.get("tuned")))
                out["memory_ms"] = (time.time() - t_mem) * 1e3
        parts = out.pop("rows", [])
        row = {**case.row(), **out}
        if case.level in ("op", "model"):
            row.setdefault("gated", suite.timing.gate)
            row["timing_env"] = dict(env["timing_env"])  # what the timing worker got
            row["ceiling_age_s"] = round(time.time() - slot.ceilings_at, 1)
        rows.finish(
            row,
            run_id=info["run_id"],
            threads=slot.time.threads,
            ceilings=slot.ceilings,
            device_name=env.get("device_name", ""),
        )
        row["wall_s"] = round(time.time() - t0, 3)
        stamp = rows.stamp(info["run_id"], slot.time.threads)
        writer.write_case(row, [dict(part, **stamp) for part in parts])
        done(row)


def _memory(slot: Slot, case: Case, suite: Suite, tuned=None) -> dict[str, Any]:
    """Peak memory of the case, measured in the slot's memory worker (at the sizes the timing
    worker chose, ``tuned``)."""
    mem = slot.memory.ask("memory", (case, tuned), timeout=suite.timing.timeout_s)
    if "peak_mem_bytes" in mem:
        return mem
    return {
        "peak_mem_bytes": None,
        "mem_method": "failed",
        "mem_reason": f"{mem.get('status')}: {mem.get('reason', '')}",
    }


TIMING_THREADS_CPU = 1  # torch threads of a CPU timing worker when the suite sets none
