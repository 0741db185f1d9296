"""The local launcher: plans a suite's cases and measures them in isolated worker processes.

    plan(suite) -> [Case]       every (variant, shape, dtype, pass, repeat), smallest N first
    run(suite, run_dir)         writes run.json, then one results.jsonl row per case

Failures are results: an unsupported case is recorded with its reasons; an exception in the worker
is an ``error`` / ``oom`` row; a case that outlives ``timing.timeout_s`` is killed (``timeout``);
a worker that dies (segfault, abort) is a ``crash`` row, and a fresh worker takes the next case.
After an ``oom``, the same variant at larger N is recorded as ``skipped_after_oom``.
Resuming a run folder measures only the cases it lacks, and refuses a different suite or code
(git commit) unless forced, which run.json records.

Each launcher slot has three workers (``attnbench.bench.worker``): one that times (the default
allocator and the suite's ``timing.env``, nothing else), one that measures peak memory on the CPU
(allocator settings that return memory to the system: they cost page faults and never touch a
timing), and one that trains (quality and recall cases).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tqdm import tqdm

from attnbench.bench import measure, results
from attnbench.bench.suite import Suite
from attnbench.case import Case
from attnbench.model import model_shape
from attnbench.quality.cases import corpus_for, plan_quality, plan_recall
from attnbench.registry import get_variant, load_plugin


def plan(suite: Suite) -> list[Case]:
    """Every case of ``suite``, grouped by variant with N ascending (so OOM skipping works); with
    ``timing.repeats`` > 1 the whole op and model sweep is repeated, so the measurements of one
    case are interleaved with the other variants' rather than taken back to back (a slow spell
    of the machine then spreads over every variant instead of landing on one)."""
    device = suite.resolved_device()
    cases: list[Case] = []
    reps = range(1)
    if suite.op is not None:
        op = suite.op
        for spec in op.variants:
            v = get_variant(spec)
            ident = dict(
                variant=v.label,
                family=v.family,
                math=v.info.math,
                impl=v.impl,
                exact=v.exact,
                device=device,
            )
            for dtype in op.dtypes:
                for d in op.head_dims:
                    heads = op.heads_for(d)
                    for kv in op.kv_heads or (heads,):
                        for causal in op.causal:
                            for pass_ in op.passes:
                                for n in sorted(op.seq_lens):
                                    cases += [
                                        Case(
                                            level="op",
                                            **ident,
                                            pass_=pass_,
                                            batch=op.batch_for(n),
                                            seq_len=n,
                                            heads=heads,
                                            kv_heads=kv,
                                            head_dim=d,
                                            dtype=dtype,
                                            causal=causal,
                                            repeat=r,
                                        )
                                        for r in reps
                                    ]
    if suite.model is not None:
        m = suite.model
        heads, kv_heads, head_dim = model_shape(m.preset)
        for spec in m.variants:
            v = get_variant(spec)
            for dtype in m.dtypes:
                for pass_ in m.passes:
                    for n in sorted(m.seq_lens):
                        cases += [
                            Case(
                                level="model",
                                variant=v.label,
                                family=v.family,
                                math=v.info.math,
                                impl=v.impl,
                                exact=v.exact,
                                pass_=pass_,
                                batch=m.batch,
                                seq_len=n,
                                heads=heads,
                                kv_heads=kv_heads,
                                head_dim=head_dim,
                                dtype=dtype,
                                device=device,
                                preset=m.preset,
                                repeat=r,
                            )
                            for r in reps
                        ]
    cases = [c.replace(repeat=r) for r in range(suite.timing.repeats) for c in cases]
    if suite.quality is not None:
        cases += plan_quality(suite.quality, device)
    if suite.recall is not None:
        cases += plan_recall(suite.recall, device)
    return cases


def unsupported_reasons(case: Case) -> list[str]:
    """What the launcher can tell without running a kernel (probes run in the worker)."""
    if case.family == "baseline":  # the n-gram floor: no attention
        return []
    return get_variant(case.variant).not_supported_reasons(case, probe=False)


def _timeout(case: Case, suite: Suite) -> float:
    if case.level in ("quality", "recall"):
        return getattr(suite, case.level).timeout_s
    return suite.timing.timeout_s


class Worker:
    """A worker process and its pipes; restarted after a crash or a timeout."""

    def __init__(self, init: dict[str, Any], env: dict[str, str]):
        self.init = init
        self.env = env
        self.proc = None
        self.conn = None
        self.send_conn = None
        self.threads = None

    def start(self) -> None:
        """Start ``python -m attnbench.bench.worker`` with two pipes (never re-imports the
        caller's ``__main__``, unlike multiprocessing's spawn)."""
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = {**os.environ, **self.env}
        root = str(Path(__file__).resolve().parents[2])  # a source checkout that is not installed
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "attnbench.bench.worker", str(to_child_r), str(from_child_w)],
            pass_fds=(to_child_r, from_child_w),
            env=env,
            stdin=subprocess.DEVNULL,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self.send_conn = Connection(to_child_w, readable=False)
        self.conn = Connection(from_child_r, writable=False)
        self.send_conn.send(self.init)
        if not self.conn.poll(300):
            self.kill()
            raise RuntimeError("the benchmark worker did not start within 300 s")
        try:
            hello = self.conn.recv()
        except EOFError:
            code = self.proc.wait()
            raise RuntimeError(f"the benchmark worker failed to start (exit code {code})") from None
        self.threads = hello["threads"]

    def ask(self, kind: str, payload: Any, timeout: float) -> dict[str, Any]:
        """Send one request; a row-like dict back, or a timeout/crash status."""
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        try:
            self.send_conn.send((kind, payload))
            if self.conn.poll(timeout):
                return self.conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            return self._crashed()
        if self.proc.poll() is not None:
            return self._crashed()
        self.kill()
        return {"status": "timeout", "reason": f"still running after {timeout:g} s; worker killed"}

    def _crashed(self) -> dict[str, Any]:
        try:
            code = self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._close()
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            why = f"worker process killed by signal {name}"
        else:
            why = f"worker process exited with code {code}"
        return {"status": "crash", "reason": why}

    def _close(self) -> None:
        for c in (self.conn, self.send_conn):
            if c is not None:
                c.close()
        self.conn = self.send_conn = None
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None:
            self._close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.send_conn.send(("stop", None))
                self.proc.wait(10)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                pass
        self.kill()


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
) -> Path:
    """Measure every case of ``suite`` not yet in ``run_dir``; returns the run folder.
    ``workers`` > 1: that many worker slots share the cases (see ``execute``). ``deadline``
    (``time.time()`` seconds): no case starts after it; the cases left are listed in run.json
    (``deadline``) and get no row, so ``--resume`` measures them later."""
    run_dir = Path(run_dir)
    for path in plugins:
        load_plugin(path)
    cases = plan(suite)
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


def _suite_json(suite: Suite) -> str:
    return json.dumps(suite.to_dict(), sort_keys=True, default=str)


def start_info(
    suite: Suite, run_dir: Path, cases, todo, plugins, command, resume, force: bool = False
) -> dict[str, Any]:
    """run.json's content at the start (or on resume, with the resume recorded); the corpus is
    loaded here, so a missing one fails at once. A resume with another suite or another commit
    is refused unless ``force``, and then recorded."""
    if resume and (run_dir / results.RUN_FILE).exists():
        info = results.read_run_json(run_dir)
        changes = []
        if json.loads(_suite_json(suite)) != json.loads(
            json.dumps(info.get("suite"), sort_keys=True, default=str)
        ):
            changes.append("the suite differs from the run's")
        env = info.get("environment") or {}
        was, was_dirty = env.get("git_commit"), env.get("git_dirty")
        now = results.git_state()
        if (
            was
            and now["git_commit"]
            and (was != now["git_commit"] or (now["git_dirty"] and not was_dirty))
        ):
            changes.append(
                f"the code differs: the run was measured at commit {was[:12]}"
                + (" with uncommitted changes" if was_dirty else "")
                + f", this is "
                f"{now['git_commit'][:12]}"
                + (" with uncommitted changes" if now["git_dirty"] else "")
            )
        if changes and not force:
            raise ValueError(
                f"--resume {run_dir}: "
                + "; ".join(changes)
                + ". Its rows would mix settings; resume with the same suite and "
                "commit, or pass --force (recorded in run.json)"
            )
        info.setdefault("resumed", []).append(
            {
                "command": command or sys.argv,
                "time": time.time(),
                "cases_left": len(todo),
                "forced": bool(changes),
                "changes": changes,
                **now,
            }
        )
    else:
        info = {
            "run_id": run_dir.name,
            "command": command or sys.argv,
            "suite": suite.to_dict(),
            "plugins": list(plugins),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "cases_planned": len(cases),
        }
    if suite.quality is not None:
        info.setdefault("datasets", {})[suite.quality.dataset] = _corpus_info(suite)
    return info


def _corpus_info(suite: Suite) -> dict[str, Any]:
    """The quality corpus's provenance. A corpus that cannot be had (offline, no data folder)
    stops a quality-only suite at once; in a suite with other sections it is recorded as
    unavailable, the quality cases become ``error`` rows with the reason, and the rest runs (the
    ``gpu`` suite on a machine without the network still measures its kernels)."""
    from attnbench.quality.data import CorpusError

    try:
        return corpus_for(suite.quality).info()
    except CorpusError as e:
        if all(getattr(suite, s) is None for s in ("op", "model", "recall")):
            raise
        print(f"attnbench: warning: {e}; its quality cases will be error rows", file=sys.stderr)
        return {"unavailable": str(e)}


def groups_of(cases: list[Case]) -> list[list[Case]]:
    """Cases split by (variant, device), in plan order: compilation and warm-up are paid once per
    group, and a group's N stay ascending (so skipping after an OOM works)."""
    out: dict[tuple, list] = {}
    for c in cases:
        out.setdefault((c.variant, c.device), []).append(c)
    return list(out.values())


def balance(groups: list[list[Case]], k: int) -> list[list[Case]]:
    """At most ``k`` bins of whole groups, largest first into the emptiest bin."""
    bins: list[list[Case]] = [[] for _ in range(min(k, len(groups)))]
    for g in sorted(groups, key=len, reverse=True):
        min(bins, key=len).extend(g)
    return [b for b in bins if b]


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
        self.memory = Worker(init, env={**measure.MEMORY_ENV, **self.timing_env})
        self.train = Worker(train_init or init, env=self.timing_env)
        self.ceilings: dict[str, Any] = {}
        self.ceilings_at = 0.0  # time.time() of the ceilings in use
        self.samples: list[dict[str, Any]] = []  # every measurement of this slot's ceilings

    def worker_for(self, case: Case) -> Worker:
        return self.train if case.level in ("quality", "recall") else self.time

    def measure_ceilings(self, dtypes: list[str], device: str) -> dict[str, Any]:
        out = self.time.ask("ceilings", {"dtypes": dtypes, "device": device}, timeout=600)
        self.ceilings, self.ceilings_at = out, time.time()
        self.samples.append(
            {
                "at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.ceilings_at)),
                "matmul_flops_per_s": out.get("matmul_flops_per_s"),
                "copy_bytes_per_s": out.get("copy_bytes_per_s"),
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
    slots = [
        Slot(
            timing_init,
            dict(suite.timing.env),
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
            timing_env=dict(suite.timing.env),
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
        if dtypes:
            session["ceilings"]["samples"] = [s.samples for s in slots]
            session["ceilings"]["every_s"] = suite.timing.ceiling_every_s
        results.write_run_json(run_dir, info)
    finally:
        for slot in slots:
            slot.stop()


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
    host = platform.node()
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
            out = slot.worker_for(case).ask("case", case, timeout=_timeout(case, suite))
            if out["status"] == "oom":
                oom_at[group] = min(oom_at.get(group, case.seq_len), case.seq_len)
            if (
                out["status"] == "ok"
                and case.level in ("op", "model")
                and suite.timing.memory
                and not case.device.startswith("cuda")
            ):
                out.update(_memory(slot, case, suite))
        parts = out.pop("rows", [])
        row = {**case.row(), **out}
        row.setdefault("reason", "")
        if case.level in ("op", "model"):
            row.setdefault("gated", suite.timing.gate)
            row["timing_env"] = dict(suite.timing.env)
            _efficiency(
                row,
                slot.ceilings.get("matmul_flops_per_s", {}),
                slot.ceilings.get("copy_bytes_per_s"),
                env.get("device_name", ""),
            )
            row["ceiling_age_s"] = round(time.time() - slot.ceilings_at, 1)
        if row.get("status") not in ("ok", "implausible"):  # no number of a failed or
            # incorrect case is a result (an implausible row keeps its numbers to inspect)
            for f in (
                "time_ms",
                "time_ms_p20",
                "time_ms_p80",
                "flops_per_s",
                "tokens_per_s",
                "frac_of_ceiling",
                "peak_mem_bytes",
                "bytes_per_s",
            ):
                row[f] = None
        stamp = dict(run_id=info["run_id"], host=host, threads=slot.time.threads)
        row.update(stamp, wall_s=round(time.time() - t0, 3))
        writer.write_case(row, [dict(part, **stamp) for part in parts])
        done(row)


def _memory(slot: Slot, case: Case, suite: Suite) -> dict[str, Any]:
    """Peak memory of the case, measured in the slot's memory worker."""
    mem = slot.memory.ask("memory", case, timeout=suite.timing.timeout_s)
    if "peak_mem_bytes" in mem:
        return mem
    return {
        "peak_mem_bytes": None,
        "mem_method": "failed",
        "mem_reason": f"{mem.get('status')}: {mem.get('reason', '')}",
    }


TIMING_THREADS_CPU = 1  # torch threads of a CPU timing worker when the suite sets none
PLAUSIBLE_MARGIN = 0.10  # a row may exceed its ceiling by this much (the ceiling's own noise)
BANDWIDTH_MIN_BYTES = 64 << 20  # below this a decode step may read from cache, beyond DRAM's
# copy bandwidth: its bandwidth is not judged


def compute_ceiling(ceilings: dict[str, float], dtype: str) -> tuple[float | None, str | None]:
    """(FLOP/s, the dtype it was measured in) that a row in ``dtype`` is judged against: the
    fastest way this machine does the work. A kernel may compute bfloat16 or float16 in float32
    (SDPA on a CPU without native bfloat16 matmul), so a half dtype's ceiling is the faster of its
    own matmul and float32's."""
    own = ceilings.get(dtype)
    candidates = [(own, dtype)]
    if dtype in ("bfloat16", "float16"):
        candidates.append((ceilings.get("float32"), "float32"))
    best = max((c for c in candidates if c[0]), default=(None, None), key=lambda c: c[0])
    return best


def _efficiency(
    row: dict[str, Any], ceilings: dict[str, float], copy_bw: float | None, device_name: str
) -> None:
    """Fractions of the ceilings of the process and host that measured the row, and of the
    device's published peak; a row above its ceiling (beyond ``PLAUSIBLE_MARGIN``) or above the
    published peak is ``implausible``: it keeps its time for inspection, and no report ranks,
    summarises or plots it."""
    ceiling, ceiling_dtype = compute_ceiling(ceilings, row["dtype"])
    row["ceiling_flops_per_s"] = ceiling
    row["ceiling_dtype"] = ceiling_dtype
    if row.get("status") != "ok":
        return
    why = []
    if row.get("flops_per_s") and ceiling:
        row["frac_of_ceiling"] = row["flops_per_s"] / ceiling
        if row["frac_of_ceiling"] > 1 + PLAUSIBLE_MARGIN:
            why.append(
                f"{row['frac_of_ceiling']:.2f}x the measured {ceiling_dtype} matmul "
                f"ceiling ({ceiling / 1e9:.1f} GFLOP/s)"
            )
    peak = measure.published_peak(device_name, row["dtype"])
    if peak and row.get("flops_per_s"):
        row["frac_of_peak"] = row["flops_per_s"] / peak
        if row["frac_of_peak"] > 1:
            why.append(f"{row['frac_of_peak']:.2f}x the device's published peak")
    if row.get("bytes_per_s") and copy_bw:
        row["frac_of_bandwidth"] = row["bytes_per_s"] / copy_bw
        if (
            row["frac_of_bandwidth"] > 1 + PLAUSIBLE_MARGIN
            and (row.get("read_bytes") or 0) >= BANDWIDTH_MIN_BYTES
        ):
            why.append(f"{row['frac_of_bandwidth']:.2f}x the measured copy bandwidth")
    if why:
        row["status"] = "implausible"
        row["reason"] = (
            "faster than this machine can do the work: "
            + "; ".join(why)
            + " (a kernel that skips work, or a mismeasured ceiling)"
        )
