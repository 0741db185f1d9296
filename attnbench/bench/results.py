"""Run folders: ``results/<run_id>/results.jsonl`` (append-only, one JSON object per case) and
``run.json`` (command line, resolved suite, environment, ceilings).

Rows are appended and flushed (and fsync'ed) as each case finishes, so an interrupted run keeps
everything it measured; ``--resume`` skips the cases already present. A torn last line (a run
killed mid-write) is ignored with a warning, never an error, and is overwritten cleanly on resume.

``load(run_dir)`` returns a pandas DataFrame of the rows.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

import torch

RESULTS_FILE = "results.jsonl"
RUN_FILE = "run.json"
# Core row fields, in the order tables show them (issue #3 fixes these names).
CORE_FIELDS = [
    "variant", "family", "pass", "level", "batch", "seq_len", "heads", "head_dim", "dtype",
    "device", "status", "reason", "time_ms", "time_ms_p20", "time_ms_p80", "peak_mem_bytes",
    "flops", "flops_per_s", "frac_of_ceiling", "tokens_per_s",
]
STATUSES = ("ok", "unsupported", "incorrect", "oom", "error", "timeout", "crash", "skipped_after_oom",
            "diverged")
ORDER0_MARGIN = 0.5  # bits per byte a trained model must gain over the order-0 entropy
PACKAGES = ("torch", "triton", "flash-attn", "xformers", "numpy", "pandas", "matplotlib")


def new_run_id(suite_name: str) -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{suite_name}"


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a results.jsonl; a torn (unparseable) last line is dropped with a warning."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                warnings.warn(f"{path}: ignoring a torn last line (an interrupted run)", stacklevel=2)
            else:
                raise ValueError(f"{path}:{i + 1} is not valid JSON (a corrupted results file)")
    return rows


def load(run_dir: str | Path):
    """The rows of a run folder (or of several) as a pandas DataFrame."""
    import pandas as pd

    dirs = [run_dir] if isinstance(run_dir, (str, Path)) else list(run_dir)
    rows = [r for d in dirs for r in read_rows(d)]
    frame = pd.DataFrame(rows)
    for col in CORE_FIELDS:
        if col not in frame.columns:
            frame[col] = None
    return frame


class ResultWriter:
    """Appends rows to results.jsonl, one flushed line per case."""

    def __init__(self, run_dir: str | Path):
        import threading

        self._lock = threading.Lock()  # workers of one launcher may share a writer
        self.path = Path(run_dir) / RESULTS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_torn_tail()
        self.done = {r["case_id"] for r in read_rows(self.path) if "case_id" in r}

    def _drop_torn_tail(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            warnings.warn(f"{self.path}: dropping a torn last line before appending", stacklevel=3)
            with open(self.path, "r+b") as f:
                f.truncate(cut)

    def write(self, row: dict[str, Any]) -> None:
        with self._lock:
            if row["case_id"] in self.done:
                raise ValueError(f"case {row['case_id']} is already recorded in {self.path}")
            with open(self.path, "a") as f:
                f.write(json.dumps(row, default=str) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self.done.add(row["case_id"])

    def write_case(self, row: dict[str, Any], parts: Iterable[dict[str, Any]] = ()) -> None:
        """A case's own row after its parts (one row per evaluation length or recall setting).
        The case's row marks it done, so parts left by an interrupted attempt are not repeated."""
        for part in parts:
            if part["case_id"] not in self.done:
                self.write(part)
        self.write(row)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parents[2])
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment(device: str) -> dict[str, Any]:
    """Provenance: versions, device, driver/CUDA, threads, git state."""
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "packages": versions,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "device": device,
        "device_name": _cpu_name(),
        "hostname": platform.node(),
    }
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        env.update(device_name=props.name, cuda=torch.version.cuda,
                   capability=f"{props.major}.{props.minor}",
                   gpu_memory_bytes=props.total_memory, driver=_nvidia_driver())
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def write_run_json(run_dir: str | Path, info: dict[str, Any]) -> None:
    path = Path(run_dir) / RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=1, default=str) + "\n")
    tmp.replace(path)


def read_run_json(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        raise ValueError(f"{run_dir} is not a run folder (no {RUN_FILE})")
    return json.loads(path.read_text())


def summary_table(rows: Iterable[dict[str, Any]]) -> str:
    """Short text tables: speed and memory (one line per case), then quality and recall."""
    rows = list(rows)
    speed = [r for r in rows if r.get("level") in ("op", "model")]
    parts = [speed_table(speed)] if speed else []
    quality = [r for r in rows if r.get("level") == "quality"]
    if quality:
        parts.append(quality_tables(quality))
    recall = [r for r in rows if r.get("level") == "recall"]
    if recall:
        parts.append(recall_table(recall))
    return "\n\n".join(parts)


def _cell(r: dict[str, Any] | None, field: str, fmt: str) -> str:
    if r is None:
        return "-"
    if r.get("status") != "ok":
        return r.get("status", "?")
    value = r.get(field)
    return "-" if value is None else format(value, fmt)


def _grid(rows: list[dict[str, Any]], col: str, field: str, fmt: str, title: str) -> str:
    """variant x ``col`` table of ``field`` (statuses shown as what they are)."""
    cols = sorted({r[col] for r in rows})
    names = list(dict.fromkeys(r["variant"] for r in rows))
    cells = {(r["variant"], r[col]): r for r in rows}
    width = max(len(n) for n in names + ["variant"])
    lines = [title, f"{'variant':<{width}} " + " ".join(f"{str(c):>10}" for c in cols)]
    for n in names:
        lines.append(f"{n:<{width}} " + " ".join(f"{_cell(cells.get((n, c)), field, fmt):>10}"
                                                  for c in cols))
    return "\n".join(lines)


def quality_tables(rows: list[dict[str, Any]]) -> str:
    """Bits per byte by evaluation length (trained variants and the n-gram floor), training
    throughput, and the drop-in table."""
    evals = [r for r in rows if r["pass"] == "eval" and "eval_len" in r]
    parts = []
    if evals:
        first = evals[0]
        order0 = next((r["order0_bpb"] for r in evals if r.get("order0_bpb")), None)
        title = (f"quality: bits per byte on {first['dataset']} ({first.get('eval_split', 'val')}), "
                 f"trained at L={first['train_len']}, {first['budget']}; columns: eval length"
                 + (f"; order-0 entropy {order0:.3f}" if order0 else ""))
        parts.append(_grid(evals, "eval_len", "bits_per_byte", ".4f", title))
        if order0:
            weak = sorted({r["variant"] for r in evals if r["status"] == "ok"
                           and r["bits_per_byte"] > order0 - ORDER0_MARGIN})
            parts[-1] += ("\n" + (f"WARNING: within {ORDER0_MARGIN} bits of the order-0 entropy "
                                  f"(learned nothing?): {', '.join(weak)}" if weak else
                                  f"every model beats the order-0 entropy by more than "
                                  f"{ORDER0_MARGIN} bits per byte"))
    trains = [r for r in rows if r["pass"] in ("train", "fit")]
    if trains:
        lines = ["training: status, steps, tokens/s, final train bits per byte"]
        for r in trains:
            tps = f"{r['tokens_per_s']:.0f}" if r.get("tokens_per_s") else "-"
            bpb = f"{r['final_train_bpb']:.4f}" if r.get("final_train_bpb") is not None else "-"
            lines.append(f"  {r['variant']:<44} {r['status']:<9} {r.get('train_steps', '-')!s:>6} "
                         f"{tps:>9} {bpb:>8}  {r.get('reason', '')}")
        parts.append("\n".join(lines))
    dropin = [r for r in rows if r["pass"] == "dropin" and "eval_len" in r]
    failed = [r for r in rows if r["pass"] == "dropin" and "eval_len" not in r and r["status"] != "ok"]
    for r in failed:
        parts.append(f"drop-in {r['variant']}: {r['status']} {r.get('reason', '')}")
    if dropin:
        title = (f"drop-in: checkpoint of {dropin[0]['trained_variant']}, bits per byte with each "
                 "variant swapped in")
        parts.append(_grid(dropin, "eval_len", "bits_per_byte", ".4f", title) + "\n"
                     + _grid(dropin, "eval_len", "rel_diff", ".1e", "relative difference to the trained variant"))
    return "\n\n".join(parts)


def recall_table(rows: list[dict[str, Any]]) -> str:
    evals = [dict(r, setting=f"N{r['seq_len']}/kv{r['kv_pairs']}") for r in rows if r["pass"] == "eval"]
    failed = [f"recall {r['variant']}: {r['status']} {r.get('reason', '')}" for r in rows
              if r["pass"] == "train" and r["status"] != "ok"]
    if not evals:
        return "\n".join(["recall: no evaluated settings"] + failed)
    return _grid(evals, "setting", "accuracy", ".3f",
                 "recall (MQAR): accuracy by sequence length N and key-value pairs kv")


def speed_table(rows: Iterable[dict[str, Any]]) -> str:
    """A short text table: one line per case (variant, pass, N, status, time, GFLOP/s, memory)."""
    lines = [f"{'variant':<44} {'pass':<10} {'N':>6} {'status':<11} {'ms':>9} {'GFLOP/s':>8} "
             f"{'%ceil':>6} {'peak MiB':>9}"]
    for r in rows:
        t = f"{r['time_ms']:.3f}" if r.get("time_ms") is not None else "-"
        g = f"{r['flops_per_s'] / 1e9:.1f}" if r.get("flops_per_s") else "-"
        c = f"{100 * r['frac_of_ceiling']:.0f}" if r.get("frac_of_ceiling") else "-"
        m = f"{r['peak_mem_bytes'] / 2**20:.1f}" if r.get("peak_mem_bytes") is not None else "-"
        lines.append(f"{r['variant'][:44]:<44} {r['pass']:<10} {r['seq_len']:>6} {r['status']:<11} "
                     f"{t:>9} {g:>8} {c:>6} {m:>9}")
    return "\n".join(lines)
