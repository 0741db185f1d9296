"""Measurement: time, peak memory and the device's own ceilings.

Time. On CUDA: CUDA events around each repetition after a synchronize. On the CPU:
``time.perf_counter_ns`` around synchronous work, with garbage collection off while timing. Warm-up
runs (compilation, autotuning, caches) happen before the timed region. Repetitions continue until
a time budget is spent (between ``min_reps`` and ``max_reps``); the median and the 20th/80th
percentiles are reported.

Peak memory of one run of the timed function, minus what was allocated before it (the inputs):
- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (method ``cuda_allocator``);
- CPU (Linux): the process's resettable peak resident set: write ``5`` to ``/proc/self/clear_refs``,
  run, read ``VmHWM`` from ``/proc/self/status`` (method ``cpu_peak_rss``). The worker process
  starts with ``MALLOC_MMAP_THRESHOLD_`` fixed so that large buffers are returned to the system
  when freed and every case starts from what it really holds, and with PyTorch's
  ``THP_MEM_ALLOC_ENABLE=1`` (2 MiB pages for large buffers: first-touch page faults otherwise
  dominate fresh large tensors on machines whose THP mode is ``madvise``). The worker's
  environment is written into ``run.json``.

Ceilings, measured once per run on the device in use: dense matmul FLOP/s in each dtype, and copy
bandwidth. Achieved FLOP/s are reported as a fraction of these, never of a datasheet figure.
"""

from __future__ import annotations

import gc
import re
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int


def _percentile(sorted_values: list[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], object], device: torch.device | str = "cpu", *, warmup: int = 1,
            budget_s: float = 0.5, min_reps: int = 3, max_reps: int = 200) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then repetitions until ``budget_s`` is spent."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start_all = time.perf_counter()
        while len(times) < max_reps and (
            len(times) < min_reps or time.perf_counter() - start_all < budget_s
        ):
            if device.type == "cuda":
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                fn()
                end.record()
                torch.cuda.synchronize(device)
                times.append(begin.elapsed_time(end))
            else:
                t0 = time.perf_counter_ns()
                fn()
                times.append((time.perf_counter_ns() - t0) / 1e6)
    finally:
        if gc_was_enabled:
            gc.enable()
    times.sort()
    return Timing(statistics.median(times), _percentile(times, 0.2), _percentile(times, 0.8), len(times))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    return int(m.group(1)) if m else 0


def cpu_peak_supported() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmHWM") > 0
    except OSError:
        return False


def peak_memory(fn: Callable[[], object], device: torch.device | str = "cpu") -> tuple[int | None, str]:
    """Peak bytes allocated by one call of ``fn()`` beyond what was held before it, and the method."""
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del result
        return peak, "cuda_allocator"
    if not cpu_peak_supported():
        return None, "unavailable"
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    result = fn()
    peak = _status_kib("VmHWM")
    del result
    return max(0, peak - before) * 1024, "cpu_peak_rss"


def matmul_ceiling(dtype: torch.dtype, device: torch.device | str = "cpu", n: int | None = None,
                   budget_s: float = 2.0) -> float:
    """FLOP/s a large square matmul in ``dtype`` sustains on ``device``: from the 20th percentile
    of its times, not the median. A ceiling is what the device can do; on a shared machine a
    median of a few repetitions was seen 15% low (185 against 217 GFLOP/s), which would inflate
    every fraction of it."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    t = time_fn(lambda: a @ b, device, warmup=3, budget_s=budget_s, min_reps=10)
    return 2 * n**3 / (t.p20_ms / 1e3)


def copy_bandwidth(device: torch.device | str = "cpu", nbytes: int = 256 << 20,
                   budget_s: float = 1.0) -> float:
    """Achieved bytes/s of a large tensor copy (read + write counted)."""
    device = torch.device(device)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device, warmup=2, budget_s=budget_s, min_reps=3)
    return 2 * nbytes / (t.median_ms / 1e3)
