"""The local launcher: plans a suite's cases and measures them in an isolated worker process.

    plan(suite) -> [case dicts]        every (variant, shape, dtype, pass, repeat), smallest N first
    run(suite, run_dir)                 writes run.json, then one results.jsonl row per case

Failures are results: an unsupported case is recorded with its reasons; an exception in the worker
is an ``error`` / ``oom`` row; a case that outlives ``timing.timeout_s`` is killed (``timeout``);
a worker that dies (segfault, abort) is a ``crash`` row, and a fresh worker takes the next case.
After an ``oom``, the same variant at larger N is recorded as ``skipped_after_oom``.
Resuming a run folder measures only the cases it lacks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

import torch

from attnbench.bench import results
from attnbench.registry import Case, get_variant, load_plugin, parse_dtype
from attnbench.quality.cases import corpus_for, plan_quality, plan_recall
from attnbench.bench.suite import Suite

# PyTorch's CPU allocator backs buffers of 2 MiB and more with transparent huge pages
# (madvise): where the kernel's THP mode is "madvise", as on this project's machines, every fresh
# large tensor otherwise costs a page fault per 4 KiB (≈ 7 ms per 32 MiB here, half the time of a
# 64x64 batched matmul that writes it). Applies to every variant and to the ceiling alike.
ALLOC_ENV = {"THP_MEM_ALLOC_ENABLE": "1"}
# glibc: always mmap large blocks and give them back on free, so peak RSS per case is honest
WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536", **ALLOC_ENV}


def case_id(c: dict[str, Any]) -> str:
    shape = f"B{c['batch']}-N{c['seq_len']}-H{c['heads']}-D{c['head_dim']}"
    extra = f"|{c['preset']}" if c["level"] == "model" else ""
    causal = "" if c.get("causal", True) else "|noncausal"
    return f"{c['level']}|{c['variant']}|{c['pass']}|{shape}|{c['dtype']}|{c['device']}{extra}{causal}|r{c['repeat']}"


def plan(suite: Suite) -> list[dict[str, Any]]:
    """Every case of ``suite``, grouped by variant with N ascending (so OOM skipping works)."""
    device = suite.resolved_device()
    cases = []
    if suite.op is not None:
        op = suite.op
        for spec in op.variants:
            variant = get_variant(spec)
            for dtype in op.dtypes:
                for d in op.head_dims:
                    for causal in op.causal:
                        for pass_ in op.passes:
                            for n in sorted(op.seq_lens):
                                for r in range(suite.timing.repeats):
                                    cases.append(dict(
                                        level="op", variant=variant.label, family=variant.family,
                                        math=variant.info.math, impl=variant.impl, pass_=pass_,
                                        batch=op.batch_for(n), seq_len=n, heads=op.heads,
                                        head_dim=d, dtype=dtype, device=device, causal=causal,
                                        repeat=r))
    if suite.model is not None:
        from attnbench.model import ModelConfig

        m = suite.model
        cfg = ModelConfig.from_name(m.preset)
        for spec in m.variants:
            variant = get_variant(spec)
            for dtype in m.dtypes:
                for pass_ in m.passes:
                    for n in sorted(m.seq_lens):
                        for r in range(suite.timing.repeats):
                            cases.append(dict(
                                level="model", variant=variant.label, family=variant.family,
                                math=variant.info.math, impl=variant.impl, pass_=pass_,
                                batch=m.batch, seq_len=n, heads=cfg.n_heads,
                                head_dim=cfg.head_dim, dtype=dtype, device=device, causal=True,
                                preset=m.preset, repeat=r))
    for c in cases:
        c["pass"] = c.pop("pass_")
        c["case_id"] = case_id(c)
    if suite.quality is not None:
        cases += plan_quality(suite.quality, device)
    if suite.recall is not None:
        cases += plan_recall(suite.recall, device)
    return cases


# what a case's pass asks of the attention variant
_NEEDS = {"train_step": "fwd_bwd", "prefill": "fwd", "train": "fwd_bwd", "dropin": "fwd"}


def unsupported_reasons(c: dict[str, Any]) -> list[str]:
    if c["family"] == "baseline":  # the n-gram floor: no attention
        return []
    variant = get_variant(c["variant"])
    pass_ = _NEEDS.get(c["pass"], c["pass"])
    dtype = "bfloat16" if c["dtype"] == "bfloat16-autocast" else c["dtype"]
    case = Case(batch=c["batch"], seq_len=c["seq_len"], heads=c["heads"], head_dim=c["head_dim"],
                dtype=parse_dtype(dtype), device=c["device"], pass_=pass_, causal=c["causal"])
    return variant.not_supported_reasons(case)


def _timeout(c: dict[str, Any], suite: Suite) -> float:
    if c["level"] in ("quality", "recall"):
        return getattr(suite, c["level"]).timeout_s
    return suite.timing.timeout_s


class Worker:
    """A worker process and its pipes; restarted after a crash or a timeout."""

    def __init__(self, init: dict[str, Any], env: dict[str, str] | None = None):
        self.init = init
        self.env = WORKER_ENV if env is None else env
        self.proc = None
        self.conn = None
        self.threads = None

    def start(self) -> None:
        """Start ``python -m attnbench.bench.worker`` with two pipes (never re-imports the caller's
        ``__main__``, unlike multiprocessing's spawn)."""
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = {**os.environ, **self.env}
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "attnbench.bench.worker", str(to_child_r), str(from_child_w)],
            pass_fds=(to_child_r, from_child_w), env=env, stdin=subprocess.DEVNULL)
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
        for c in (self.conn, getattr(self, "send_conn", None)):
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


class Progress:
    """One status line on stderr: count, percentage, ETA, current case."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.done, self.start, self.stream = total, 0, time.time(), stream
        self.measured, self.measure_time = 0, 0.0

    def show(self, label: str) -> None:
        if not self.total:
            return
        tty = self.stream.isatty()
        if not tty and self.done % max(1, self.total // 10):
            return  # in a log: a line every tenth of the run, not a redrawn bar
        pct = 100 * self.done / self.total
        left = self.total - self.done
        eta = (self.measure_time / self.measured) * left if self.measured else float("nan")
        eta_s = f"{int(eta // 60)}m{int(eta % 60):02d}s" if eta == eta else "?"
        bar = "#" * int(pct / 5)
        line = f"[{bar:<20}] {self.done}/{self.total} {pct:3.0f}% ETA {eta_s}  {label[:70]:<70}"
        self.stream.write("\r" + line if tty else line.rstrip() + "\n")
        self.stream.flush()

    def tick(self, seconds: float, measured: bool) -> None:
        self.done += 1
        if measured:
            self.measured += 1
            self.measure_time += seconds

    def close(self) -> None:
        if self.total and self.stream.isatty():
            self.stream.write(f"\r{' ' * 120}\r")
            self.stream.flush()


def run(suite: Suite, run_dir: str | Path, *, plugins: list[str] = (), command: list[str] | None = None,
        resume: bool = False, progress: bool = True, workers: int = 1,
        on_row: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Measure every case of ``suite`` not yet in ``run_dir``; returns the run folder.
    ``workers`` > 1: that many worker processes share the cases (see ``execute``)."""
    run_dir = Path(run_dir)
    for path in plugins:
        load_plugin(path)
    cases = plan(suite)
    writer = results.ResultWriter(run_dir)
    todo = [c for c in cases if c["case_id"] not in writer.done]
    info = start_info(suite, run_dir, cases, todo, plugins, command, resume)
    info["launcher"] = {"kind": "local", "workers": workers}
    execute(todo, suite, run_dir, writer, info, plugins=plugins, progress=progress, workers=workers,
            on_row=on_row)
    info["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    results.write_run_json(run_dir, info)
    return run_dir


def start_info(suite: Suite, run_dir: Path, cases, todo, plugins, command, resume) -> dict[str, Any]:
    """run.json's content at the start (or on resume, with the resume recorded); the corpus is
    loaded here, so a missing one fails at once."""
    if resume and (run_dir / results.RUN_FILE).exists():
        info = results.read_run_json(run_dir)
        info.setdefault("resumed", []).append({"command": command or sys.argv, "time": time.time(),
                                               "cases_left": len(todo)})
    else:
        info = {"run_id": run_dir.name, "command": command or sys.argv, "suite": suite.to_dict(),
                "plugins": list(plugins), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "cases_planned": len(cases)}
    if suite.quality is not None:
        info.setdefault("datasets", {})[suite.quality.dataset] = corpus_for(suite.quality).info()
    return info


def groups_of(cases: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Cases split by (variant, device), in plan order: compilation and warm-up are paid once per
    group, and a group's N stay ascending (so skipping after an OOM works)."""
    out: dict[tuple, list] = {}
    for c in cases:
        out.setdefault((c["variant"], c["device"]), []).append(c)
    return list(out.values())


def balance(groups: list[list[dict]], k: int) -> list[list[dict]]:
    """At most ``k`` bins of whole groups, largest first into the emptiest bin."""
    bins: list[list[dict]] = [[] for _ in range(min(k, len(groups)))]
    for g in sorted(groups, key=len, reverse=True):
        min(bins, key=len).extend(g)
    return [b for b in bins if b]


def execute(todo, suite: Suite, run_dir: Path, writer, info: dict[str, Any], *, plugins=(),
            progress: bool = True, workers: int = 1, on_row=None) -> None:
    """Measure ``todo`` into ``writer``: ceilings and environment into ``info`` (and run.json),
    then the sweep. With ``workers`` = K > 1, K worker processes take whole (variant, device)
    groups, each pinned to one GPU (``CUDA_VISIBLE_DEVICES``) or to a 1/K share of the CPU threads."""
    device = suite.resolved_device()
    k = max(1, min(workers, len(groups_of(todo)) or 1))
    threads = suite.timing.threads
    if k > 1 and not device.startswith("cuda"):  # a 1/K share of the CPU each
        threads = max(1, (threads or os.cpu_count() or 1) // k)
    init = {"threads": threads, "plugins": list(plugins),
            "timing": vars(suite.timing), "suite": suite.to_dict(), "run_dir": str(run_dir)}
    pools = []
    for i in range(k):
        pin = {"CUDA_VISIBLE_DEVICES": str(i)} if k > 1 and device.startswith("cuda") else {}
        # training cases measure no memory: a worker without the mmap-everything malloc settings
        # (which cost page faults on every large allocation)
        measurer, trainer = Worker(init, env={**WORKER_ENV, **pin}), Worker(init, env={**ALLOC_ENV, **pin})
        pools.append({"op": measurer, "model": measurer, "quality": trainer, "recall": trainer})
    first = pools[0]["op"]
    try:
        if "ceilings" not in info and any(c["level"] in ("op", "model") for c in todo):
            dtypes = sorted({c["dtype"] for c in todo if c["level"] in ("op", "model")})
            info["ceilings"] = first.ask("ceilings", {"dtypes": dtypes, "device": device}, timeout=600)
        info["environment"] = results.environment(device)
        info["environment"]["worker_threads"] = first.threads or _probe_threads(first)
        info["environment"]["worker_processes"] = k
        info["environment"]["mem_method"] = "cuda_allocator" if device.startswith("cuda") else "cpu_peak_rss"
        info["environment"]["worker_env"] = dict(WORKER_ENV)
        results.write_run_json(run_dir, info)
        if k == 1:
            _sweep(todo, pools[0], writer, info, suite, progress, on_row)
            return
        import threading

        bar = Progress(len(todo)) if progress else None
        lock = threading.Lock()

        def tick(row):
            with lock:
                if bar:
                    bar.tick(row.get("wall_s", 0.0), True)
                    bar.show(f"{row['variant']} {row['pass']} N={row['seq_len']}")
                if on_row:
                    on_row(row)

        errors: list[BaseException] = []

        def work(pool, cases):
            try:
                _sweep(cases, pool, writer, info, suite, False, tick)
            except BaseException as e:  # surfaced after the other workers finish
                errors.append(e)

        threads = [threading.Thread(target=work, args=(pool, cases), daemon=True)
                   for pool, cases in zip(pools, balance(groups_of(todo), k))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if bar:
            bar.close()
        if errors:
            raise errors[0]
    finally:
        for pool in pools:
            pool["op"].stop()
            pool["quality"].stop()


def _probe_threads(worker: Worker) -> int | None:
    if worker.proc is None:
        worker.start()
    return worker.threads


def _sweep(todo, workers, writer, info, suite, progress, on_row) -> None:
    ceilings = info.get("ceilings", {}).get("matmul_flops_per_s", {})
    oom_at: dict[tuple, int] = {}
    bar = Progress(len(todo)) if progress else None
    try:
        for c in todo:
            group = (c["level"], c["variant"], c["pass"], c["dtype"], c["head_dim"], c["causal"])
            label = f"{c['variant']} {c['pass']} N={c['seq_len']}"
            if bar:
                bar.show(label)
            t0 = time.time()
            measured = False
            reasons = unsupported_reasons(c)
            if reasons:
                out = {"status": "unsupported", "reason": "; ".join(reasons)}
            elif group in oom_at and c["seq_len"] > oom_at[group]:
                out = {"status": "skipped_after_oom",
                       "reason": f"out of memory at N={oom_at[group]} for this variant and pass"}
            else:
                out = workers[c["level"]].ask("case", c, timeout=_timeout(c, suite))
                measured = True
                if out["status"] == "oom":
                    oom_at[group] = min(oom_at.get(group, c["seq_len"]), c["seq_len"])
            sub_rows = out.pop("rows", [])
            row = {**c, **out}
            row.setdefault("reason", "")
            if row.get("status") == "ok" and row.get("flops_per_s") and ceilings.get(c["dtype"]):
                row["frac_of_ceiling"] = row["flops_per_s"] / ceilings[c["dtype"]]
            if row.get("status") != "ok":  # no number of a failed or incorrect case is a result
                for f in ("time_ms", "time_ms_p20", "time_ms_p80", "flops_per_s", "tokens_per_s",
                          "frac_of_ceiling", "peak_mem_bytes"):
                    row[f] = None
            row["run_id"] = info["run_id"]
            row["threads"] = info["environment"].get("worker_threads")
            row["wall_s"] = round(time.time() - t0, 3)
            writer.write_case(row, [dict(sub, run_id=info["run_id"], threads=row["threads"])
                                    for sub in sub_rows])
            if on_row:
                on_row(row)
            if bar:
                bar.tick(time.time() - t0, measured)
    finally:
        if bar:
            bar.close()
