"""Measurement: time, peak memory and the device's own ceilings.

Time (``time_fn``), taken the way a user's program runs the code: the caller has already made the
first (compiling) call and ``warmup`` more untimed calls of the same pass; repetitions continue
until a time budget is spent and at least ``min_reps`` are taken; the median and the 20th/80th
percentiles are reported. A repetition's result is released after its clock stops, so freeing
the output is not timed.

- CUDA: ``torch.cuda.set_device`` first (events on another device would time an idle stream);
  repetitions are launched back to back, each between its own pair of CUDA events, with a buffer
  larger than L2 zeroed before each (``l2_flush``: at N = 512 q, k and v fit in an H100's 50 MB L2
  and would be timed warm), and the host synchronises once per batch of repetitions, not after
  each, so launch overhead is not inside small-N samples. With ``cuda_graphs`` the pass is
  captured once and each repetition replays the graph (launch overhead removed; what
  ``triton.testing.do_bench_cudagraph`` measures).
- CPU: ``time.perf_counter_ns`` around synchronous work, garbage collection off while timing.

Peak memory of one call beyond what was allocated before it (the inputs):
- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (``cuda_allocator``);
- CPU (Linux): the process's resettable peak resident set: write ``5`` to ``/proc/self/clear_refs``,
  run, read ``VmHWM`` from ``/proc/self/status`` (``cpu_peak_rss``). The harness measures it in a
  separate worker process whose allocator returns large blocks to the system when they are freed
  (``MEMORY_ENV``), so every case starts from what it really holds; those settings cost page
  faults and never apply to the process that times.

Ceilings, measured on the device in use at the start and at the end of a run: dense matmul FLOP/s
in each dtype (and float32 for the half dtypes, which a kernel may compute in) from the fastest
fifth of its timings, and copy bandwidth. Achieved FLOP/s are reported as a fraction of these
(and, on a known GPU, of the published peak); a row above them is ``implausible``.
"""

from __future__ import annotations

import functools
import gc
import os
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

# The CPU timing worker's heap with ``timing.cpu_heap = "keep"``: glibc never maps a block apart
# (``mmap_max`` 0: every block comes from the heap) nor trims the heap, so memory a call frees is
# reused by the next call without the kernel zeroing fresh pages (a caching allocator, as CUDA's).
# Two more settings make the reuse certain rather than likely: 2 MiB pages (PyTorch's
# ``THP_MEM_ALLOC_ENABLE``), and no per-thread cache of small blocks (``tcache_count=0``): a
# tensor's small header, allocated after its data and held in that cache once freed, sat between the
# freed data and the top of the heap, so the next call's aligned request did not fit and the heap
# grew into fresh pages (4 of 10 processes, where each freed small block now merges at the next
# large request).
KEEP_HEAP_ENV = {
    "THP_MEM_ALLOC_ENABLE": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(1 << 50),
    "GLIBC_TUNABLES": "glibc.malloc.tcache_count=0",
}


# Between cases a worker gives its freed heap back (``malloc_trim``) only while it holds more than
# this many bytes (its resident set; the environment carries the figure to the worker, 0: always).
# The kept heap's timing worker holds up to an eighth of the machine's memory: trimming after every
# case returned pages that the next case faulted back in, on 2 MiB or 4 KiB pages depending on
# what the trim had split, and the gather-heavy kernels' repeats differed by up to 30 %
# (``op --repeats 2``: 15 of 28 cases within 5 % trimming every case, 25 of 28 holding).
HEAP_HOLD_ENV = "ATTNBENCH_HEAP_HOLD_BYTES"
HEAP_HOLD_SHARE = 1 / 8


def heap_hold_bytes() -> int:
    """What the kept heap's timing worker may hold between cases: ``HEAP_HOLD_SHARE`` of the
    machine's physical memory (0 where the platform does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * HEAP_HOLD_SHARE)
    except (ValueError, OSError, AttributeError):
        return 0


def timing_env(timing, device: str) -> dict[str, str]:
    """The timing worker's environment: on a CPU the heap ``timing.cpu_heap`` names (with what it
    may hold between cases), then the suite's ``timing.env`` (which wins)."""
    heap = {}
    if timing.cpu_heap == "keep" and not device.startswith("cuda"):
        heap = {**KEEP_HEAP_ENV, HEAP_HOLD_ENV: str(heap_hold_bytes())}
    return {**heap, **timing.env}


# glibc: mmap every block of 64 KiB and more, and give it back when freed (peak RSS per case);
# fill every allocation with a byte (MALLOC_PERTURB_), so an allocated but untouched buffer is
# resident and counted (a 64 MiB torch.empty would otherwise count 1 MiB)
MEMORY_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "65536",
    "MALLOC_TRIM_THRESHOLD_": "65536",
    "MALLOC_PERTURB_": "165",
    # glibc's defaults for what KEEP_HEAP_ENV sets
    "MALLOC_MMAP_MAX_": "65536",
    "GLIBC_TUNABLES": "",
    # 4 KiB pages for the memory worker whatever the timing's [timing.env] asks: a 2 MiB page
    # counts whole in the resident set
    "THP_MEM_ALLOC_ENABLE": "0",
    # every case starts from what it holds itself: the heap given back after each
    HEAP_HOLD_ENV: "0",
}


def held_bytes(device: torch.device | str) -> int:
    """Bytes this process holds now: the CUDA allocator's, or the resident set on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return _status_kib("VmRSS") * 1024


# Dense (no sparsity) bfloat16/float16 tensor-core peaks from the vendors' datasheets, TFLOP/s,
# matched by substring of the device name (most specific first).
PUBLISHED_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM5
    ("H200", 989.4),
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
)


def published_peak(device_name: str, dtype: str) -> float | None:
    """FLOP/s of the device's published dense bf16/fp16 peak, or None (unknown device or dtype)."""
    if dtype not in ("bfloat16", "float16"):
        return None
    for key, tflops in PUBLISHED_PEAK_TFLOPS:
        if key in (device_name or ""):
            return tflops * 1e12
    return None


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int
    probe_ms: float | None = None  # median of the rate probes run between repetitions

    @property
    def spread(self) -> float:
        """(p80 - p20) / median: above the suite's ``noisy`` threshold a row is marked noisy."""
        return (self.p80_ms - self.p20_ms) / self.median_ms if self.median_ms > 0 else 0.0


def _percentile(sorted_values: list[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(times: list[float]) -> Timing:
    times = sorted(times)
    return Timing(
        statistics.median(times), _percentile(times, 0.2), _percentile(times, 0.8), len(times)
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def indexed(device: torch.device | str, current: Callable[[], int] | None = None) -> torch.device:
    """``device`` with its index: a bare ``cuda`` becomes ``cuda:<current device>``.

    ``torch.cuda.set_device`` (and every API that goes through ``torch._utils._get_device_index``
    without ``optional=True``) raises ``ValueError`` for a ``torch.device("cuda")`` that names no
    index, and a suite says ``device = "cuda"``. ``current`` returns the current index (default
    ``torch.cuda.current_device``; the tests pass their own on a machine without CUDA)."""
    device = torch.device(device)
    if device.type != "cuda" or device.index is not None:
        return device
    return torch.device("cuda", (current or torch.cuda.current_device)())


PROBE_N = 384  # side of the rate probe's float32 product (113 MFLOP: about 1 ms on these CPUs)
PROBE_EVERY_S = 0.2  # a probe between repetitions once this much time has passed since the last
PROBE_TIMED = 3  # timed products per probe, after one untimed: the fastest counts


class RateProbe:
    """The machine's speed now, measured between a case's repetitions: a fixed float32 product
    (``PROBE_N``), run once untimed and ``PROBE_TIMED`` times timed, the fastest counting (so a
    variant that evicted the caches does not slow it, and an interruption must catch all three:
    one single product read 0.36 of the machine's rate). The same probe is timed next to each
    ceiling measurement; a row's ceiling is then that ceiling times (the median probe during the
    row / the median next to the ceiling): the ceiling nearest in time to the row, measured while
    the row was timed. Medians on both sides: the fastest of 40 probes next to a ceiling against
    the fastest of a row's 3-5 would read the machine 3-5 % slow in every row. On a shared machine
    the rate moves by 10 % and more within a minute (other tenants), and every kernel with it."""

    def __init__(self, device: torch.device | str = "cpu", n: int = PROBE_N):
        g = torch.Generator().manual_seed(0)
        self.n = n
        self.a = torch.randn(n, n, generator=g).to(device)
        self.b = torch.randn(n, n, generator=g).to(device)
        self.c = torch.empty_like(self.a)

    @property
    def flops(self) -> int:
        return 2 * self.n**3

    def __call__(self) -> float:
        """Milliseconds of the fastest of ``PROBE_TIMED`` warm products."""
        torch.matmul(self.a, self.b, out=self.c)
        best = float("inf")
        for _ in range(PROBE_TIMED):
            t0 = time.perf_counter_ns()
            torch.matmul(self.a, self.b, out=self.c)
            best = min(best, (time.perf_counter_ns() - t0) / 1e6)
        return best

    def rate(self, budget_s: float = 0.2) -> float:
        """FLOP/s: the median of the probes over ``budget_s`` (at least 5), each after a copy of
        8 MiB, as a row's probes each follow other work (back to back they ran 2-3 % faster)."""
        src = torch.empty(2 << 20, device=self.a.device).fill_(1.0)
        dst = torch.empty_like(src)
        times: list[float] = []
        end = time.perf_counter() + budget_s
        while len(times) < 5 or time.perf_counter() < end:
            dst.copy_(src)
            times.append(self())
        return self.flops / (statistics.median(times) / 1e3)


@functools.cache
def rate_probe() -> RateProbe:
    """This process's one CPU rate probe: the same tensors next to the ceilings and between every
    case's repetitions (a second probe's tensors, placed elsewhere, ran 3-5 % slower: their
    relative addresses decide the cache conflicts of a product this small)."""
    return RateProbe("cpu")


def time_fn(
    fn: Callable[[], object] | Sequence[Callable[[], object]],
    device: torch.device | str = "cpu",
    *,
    warmup: int = 1,
    budget_s: float = 0.5,
    min_reps: int = 5,
    max_reps: int = 200,
    l2_flush: bool = True,
    cuda_graphs: bool = False,
    outputs: dict[int, object] | None = None,
    before: Callable[[int], None] | None = None,
    probe: RateProbe | None = None,
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then repetitions until ``budget_s`` is spent
    (between ``min_reps`` and ``max_reps``).

    ``fn`` may be a list of functions, one per input set: repetition i runs ``fn[i % len]``, so
    the timed calls alternate between input sets (a kernel that memoises its first result cannot
    be both fast and right). With ``outputs``, the last timed output of each input set is kept
    there (``outputs[set]``) for the gate to check; ``before(set)`` runs untimed before each
    repetition (a decoder restoring its state, so every timed step is the step that was
    checked). ``probe`` (CPU): a :class:`RateProbe` run untimed before the first repetition, then
    between repetitions every ``PROBE_EVERY_S`` and after the last (``Timing.probe_ms``)."""
    fns = list(fn) if isinstance(fn, (list, tuple)) else [fn]
    device = torch.device(device)
    if device.type == "cuda":
        return _time_cuda(
            fns,
            device,
            warmup,
            budget_s,
            min_reps,
            max_reps,
            l2_flush,
            cuda_graphs,
            outputs,
            before,
        )
    for i in range(max(warmup, len(fns) if warmup else 0)):
        if before:
            before(i % len(fns))
        fns[i % len(fns)]()
    times: list[float] = []
    probes: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        if probe is not None:
            probes.append(probe())
        start_all = last_probe = time.perf_counter()
        while len(times) < max_reps and (
            len(times) < min_reps or time.perf_counter() - start_all < budget_s
        ):
            if probe is not None and time.perf_counter() - last_probe >= PROBE_EVERY_S:
                probes.append(probe())
                last_probe = time.perf_counter()
            j = len(times) % len(fns)
            if before:
                before(j)
            t0 = time.perf_counter_ns()
            out = fns[j]()
            t1 = time.perf_counter_ns()
            if outputs is not None:
                outputs[j] = out  # the previous output of this set is freed here, untimed
            del out  # freed after the clock stopped
            times.append((t1 - t0) / 1e6)
        if probe is not None:
            probes.append(probe())
    finally:
        if gc_was_enabled:
            gc.enable()
    out = summarize(times)
    return replace(out, probe_ms=statistics.median(probes)) if probes else out


def _l2_buffer(device: torch.device) -> torch.Tensor | None:
    size = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or (64 << 20)
    return torch.empty(2 * size // 4, dtype=torch.int32, device=device)


def _time_cuda(
    fns,
    device,
    warmup,
    budget_s,
    min_reps,
    max_reps,
    l2_flush,
    cuda_graphs,
    outputs=None,
    before=None,
) -> Timing:
    device = indexed(device)
    torch.cuda.set_device(device)
    runs = fns
    if cuda_graphs:  # one graph per input set, captured after warm-up on a side stream
        runs, static = [], []
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for f in fns:
                for _ in range(max(1, warmup)):
                    f()
        torch.cuda.current_stream(device).wait_stream(stream)
        for f in fns:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static.append(f())  # the graph writes its output here on every replay
            runs.append(graph.replay)
    else:
        for i in range(max(warmup, len(fns) if warmup else 0)):
            if before:
                before(i % len(fns))
            fns[i % len(fns)]()
    flush = _l2_buffer(device) if l2_flush else None
    torch.cuda.synchronize(device)
    # an estimate of one repetition sizes the batches launched between host synchronisations
    t0 = time.perf_counter()
    runs[0]()
    torch.cuda.synchronize(device)
    estimate = max(time.perf_counter() - t0, 1e-6)
    times: list[float] = []
    start_all = time.perf_counter()
    while len(times) < max_reps and (
        len(times) < min_reps or time.perf_counter() - start_all < budget_s
    ):
        left = max(
            min_reps - len(times), int((budget_s - (time.perf_counter() - start_all)) / estimate)
        )
        batch = max(1, min(max_reps - len(times), left, 100))
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(batch)
        ]
        for begin, end in events:
            j = len(times) % len(runs)
            if before:
                before(j)
            if flush is not None:
                flush.zero_()
            begin.record()
            out = runs[j]()
            end.record()
            if outputs is not None:
                outputs[j] = static[j] if cuda_graphs else out
            times.append(0.0)  # placeholder: counts the repetition for the set rotation
        torch.cuda.synchronize(device)
        del times[len(times) - batch :]
        times.extend(b.elapsed_time(e) for b, e in events)
    return summarize(times)


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


def peak_memory(
    fn: Callable[[], object], device: torch.device | str = "cpu"
) -> tuple[int | None, str]:
    """Peak bytes allocated by one call of ``fn()`` beyond what was held before it, and the
    method."""
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


QUICK_CEILING_S = 1.0  # a ceiling budget below this (tests, smoke runs) measures a lighter way


def ceiling_size(
    device: torch.device | str,
    rate: Callable[[int], float] | None = None,
    max_product_s: float = 0.2,
) -> int:
    """The side of the square matmul that measures a ceiling on ``device``.

    CUDA: 8192, always. A GPU reaches its matmul peak only on large products, and a probe cannot
    size it: a 256^3 product timed around a synchronisation measures the launch (a few
    microseconds), not the arithmetic, and would pick 4096, whose lower rate inflates every
    ``frac_of_ceiling``. 8192^3 is 1.1 TFLOP: about 1.4 ms in bfloat16 on an H100/H200 and 17 ms
    in float32 (67 TFLOP/s), well inside the budget.
    CPU: the largest power of two up to 2048 whose product takes at most about
    ``max_product_s`` (0.2 s), from ``rate(n)`` (FLOP/s of an n^3 product; default: timed here on
    a 256^3 product, warm, the best of three): a CPU without native bfloat16 runs it at a few
    GFLOP/s, where 2048^3 would take seconds per repetition."""
    device = torch.device(device)
    if device.type == "cuda":
        return 8192
    n, probe = 2048, 256
    per_s = (rate or (lambda m: _probe_rate(m, device, torch.float32)))(probe)
    while n > probe and 2 * n**3 / per_s > max_product_s:
        n //= 2
    return n


def _probe_rate(n: int, device: torch.device, dtype: torch.dtype) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    a @ a  # warm
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        a @ a
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / max(best, 1e-9)


def matmul_ceiling(
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    n: int | None = None,
    budget_s: float = 2.0,
) -> float:
    """FLOP/s of a large square matmul in ``dtype`` on ``device`` (side ``n``, default
    ``ceiling_size``), from the 20th percentile of at least 10 timings: the rate the machine
    reaches, which a row may not exceed (beyond a noise margin) without being ``implausible``.
    A budget below ``QUICK_CEILING_S`` (tests, smoke runs) takes at least 5 timings after one
    warm-up, of a product sized to a tenth of the budget: the same statistic, measured lighter."""
    device = torch.device(device)
    quick = budget_s < QUICK_CEILING_S
    if n is None:
        cap = min(0.2, budget_s / 10) if quick else 0.2
        n = ceiling_size(device, lambda m: _probe_rate(m, device, dtype), cap)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    c = torch.empty_like(a)  # into one output: the compute, not the first touch of fresh pages
    t = time_fn(
        lambda: torch.matmul(a, b, out=c),
        device,
        warmup=1 if quick else 3,
        budget_s=budget_s,
        min_reps=5 if quick else 10,
        max_reps=1000,
    )
    return 2 * n**3 / (t.p20_ms / 1e3)  # a ceiling is a maximum: the fastest fifth of timings


def copy_bandwidth(
    device: torch.device | str = "cpu", nbytes: int = 256 << 20, budget_s: float = 1.0
) -> float:
    """Achieved bytes/s of a large tensor copy (read + write counted), median of its timings
    (64 MiB for a budget below ``QUICK_CEILING_S``)."""
    device = torch.device(device)
    if budget_s < QUICK_CEILING_S / 2:
        nbytes = min(nbytes, 64 << 20)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    t = time_fn(
        lambda: dst.copy_(src), device, warmup=2, budget_s=budget_s, min_reps=5, l2_flush=False
    )
    return 2 * nbytes / (t.median_ms / 1e3)


CEILING_METHOD = (
    "square matmul (8192 on CUDA; on CPU up to 2048, as large as takes <= 0.2 s), "
    "20th percentile of its timings, and a 256 MiB copy, median of its timings, "
    "on this device, at the start and the end of the run; a half dtype's compute "
    "ceiling is the faster of its own matmul and float32's"
)


def ceilings(dtypes: list[str], device: str, budget_s: float = 2.0) -> dict:
    """The run's ceilings on ``device``: matmul FLOP/s per dtype name and copy bytes/s, each
    from about ``budget_s`` of repetitions (at least 10 and 5)."""
    from attnbench.case import parse_dtype

    names = list(
        dict.fromkeys([*dtypes, *(["float32"] if {"bfloat16", "float16"} & set(dtypes) else [])])
    )  # a half dtype is judged against float32 too
    matmul = {name: matmul_ceiling(parse_dtype(name), device, budget_s=budget_s) for name in names}
    probe = {}
    if torch.device(device).type == "cpu":  # the rate probe next to the ceiling (RateProbe)
        probe = {"probe_flops_per_s": rate_probe().rate(min(0.2, budget_s / 4))}
    return {
        **probe,
        "matmul_flops_per_s": matmul,
        "copy_bytes_per_s": copy_bandwidth(device, budget_s=budget_s / 2),
        "method": CEILING_METHOD,
    }
