"""Finishing a measured row, the same for every launcher: its efficiency against the ceilings
of the process that measured it and the device's published peak (``implausible`` beyond them),
no numbers on a failed row, and the stamp of who measured it (run, host, threads)."""

from __future__ import annotations

import platform
from typing import Any

from attnbench.bench import measure

# the numbers of a row; a failed or incorrect row has none (an implausible one keeps them)
NUMBERS = (
    "time_ms",
    "time_ms_p20",
    "time_ms_p80",
    "flops_per_s",
    "tokens_per_s",
    "frac_of_ceiling",
    "peak_mem_bytes",
    "bytes_per_s",
)


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


def machine_rate(row: dict[str, Any], probe_at_ceiling: float | None) -> float | None:
    """The machine's speed while ``row`` was timed relative to when its ceilings were measured:
    the rate probe's FLOP/s between the row's repetitions over its FLOP/s next to the ceilings
    (``measure.RateProbe``); None without both."""
    mine = row.get("probe_flops_per_s")
    return mine / probe_at_ceiling if mine and probe_at_ceiling else None


def efficiency(
    row: dict[str, Any],
    ceilings: dict[str, float],
    copy_bw: float | None,
    device_name: str,
    probe_at_ceiling: float | None = None,
) -> None:
    """Fractions of the ceilings of the process and host that measured the row, and of the
    device's published peak; a row above its ceiling (beyond ``PLAUSIBLE_MARGIN``) or above the
    published peak is ``implausible``: it keeps its time for inspection, and no report ranks,
    summarises or plots it. With the rate probe of the row and of its ceilings, the ceiling is
    scaled to the machine's speed while the row was timed (``machine_rate``; the measured one
    stays in ``ceiling_measured_flops_per_s``)."""
    ceiling, ceiling_dtype = compute_ceiling(ceilings, row["dtype"])
    rate = machine_rate(row, probe_at_ceiling)
    if rate and ceiling:
        row["ceiling_measured_flops_per_s"] = ceiling
        row["machine_rate"] = rate
        ceiling *= rate
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


def finish(
    row: dict[str, Any],
    *,
    run_id: str,
    threads: int | None,
    ceilings: dict[str, Any] | None = None,
    device_name: str = "",
) -> dict[str, Any]:
    """Complete ``row`` in place (and return it): for op and model rows the efficiency fractions
    against ``ceilings`` (``measure.ceilings``' form); for every row, no numbers unless it is
    ``ok`` or ``implausible``, an empty reason at least, and the stamp (run, host, threads)."""
    row.setdefault("reason", "")
    if ceilings is not None and row.get("level") in ("op", "model"):
        efficiency(
            row,
            ceilings.get("matmul_flops_per_s") or {},
            ceilings.get("copy_bytes_per_s"),
            device_name,
            ceilings.get("probe_flops_per_s"),
        )
    if row.get("status") not in ("ok", "implausible"):
        for f in NUMBERS:
            row[f] = None
    row.update(stamp(run_id, threads))
    return row


def stamp(run_id: str, threads: int | None) -> dict[str, Any]:
    """Who measured a row: the run, the host and the worker's torch threads."""
    return {"run_id": run_id, "host": platform.node(), "threads": threads}
