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
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from attnbench.case import STATUSES as STATUS_TABLE

RESULTS_FILE = "results.jsonl"
RUN_FILE = "run.json"
# Core row fields, in the order tables show them (issue #3 fixes these names).
CORE_FIELDS = [
    "variant",
    "family",
    "pass",
    "level",
    "batch",
    "seq_len",
    "heads",
    "head_dim",
    "dtype",
    "device",
    "status",
    "reason",
    "time_ms",
    "time_ms_p20",
    "time_ms_p80",
    "peak_mem_bytes",
    "flops",
    "flops_per_s",
    "frac_of_ceiling",
    "tokens_per_s",
]
STATUSES = tuple(STATUS_TABLE)
PACKAGES = (
    "torch",
    "triton",
    "flash-attn",
    "flash_attn_3",
    "xformers",
    "fla-core",
    "transformers",
    "numpy",
    "pandas",
    "matplotlib",
)


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
            rows.append(upgrade(json.loads(line)))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                warnings.warn(
                    f"{path}: ignoring a torn last line (an interrupted run)", stacklevel=2
                )
            else:
                raise ValueError(
                    f"{path}:{i + 1} is not valid JSON (a corrupted results file)"
                ) from None
    return rows


def upgrade(row: dict[str, Any]) -> dict[str, Any]:
    """A row written by an older attnbench in today's form, done once as rows are loaded: no
    ``kv_heads`` (before grouped-query attention) means one per query head; no ``exact`` means
    its math said so (full causal softmax)."""
    if row.get("level") in ("op", "model"):
        if row.get("kv_heads") is None and row.get("heads") is not None:
            row["kv_heads"] = row["heads"]
        if row.get("exact") is None:
            row["exact"] = row.get("math") == "causal_softmax"
    return row


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
        out = subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parents[2],
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> dict[str, Any]:
    """The commit of the code that runs, whether it has uncommitted changes (None outside a git
    checkout, e.g. an installed package) and, when it has, which files (at most 50)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    out: dict[str, Any] = {"git_commit": _git("rev-parse", "HEAD"), "git_dirty": bool(status)}
    if status:  # which files: a run measured on edited code says which
        out["git_dirty_paths"] = [line[3:] for line in status.splitlines()][:50]
    return out


def environment(device: str) -> dict[str, Any]:
    """Provenance: versions, device, driver/CUDA, threads, git state, host."""
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
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "packages": versions,
        **git_state(),
        "device": device,
        "device_name": _cpu_name(),
        "hostname": platform.node(),
    }
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        env.update(
            device_name=props.name,
            cuda=torch.version.cuda,
            capability=f"{props.major}.{props.minor}",
            gpu_memory_bytes=props.total_memory,
            driver=_nvidia_driver(),
        )
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


# the instruction sets a CPU kernel's speed depends on (the processor varies between machines)
CPU_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_bf16",
    "avx512_fp16",
    "avx512_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "sve",
    "asimd",
)


def cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """Which of ``CPU_FLAGS`` this machine's CPU has (from /proc/cpuinfo; [] where unknown)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return []
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            have = set(line.split(":", 1)[1].split())
            return [f for f in CPU_FLAGS if f in have]
    return []


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
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
