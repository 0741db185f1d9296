"""Compare two run folders case by case: ``python run_bench.py compare results/A results/B``.

Cases are matched on their identity (level, variant, pass, shape, dtype, device; for quality the
dataset, budget and evaluation length), with repeats reduced to their median. For each metric the
ratio B / A is printed; a change is flagged only when

    |B - A| > threshold * A + floor

(defaults: ``--threshold 0.10``, and floors of 0.05 ms for time, 1 MiB for memory, 0.01 bits per
byte and 0.02 accuracy). Worse is: more time, more memory, more bits per byte, less accuracy, or a
case that ran in A and not in B. Cases present in one run only are listed. Runs from different
devices are refused unless ``--allow-device-mismatch``. The exit status is 1 when a regression
is flagged (so it can gate CI), 0 otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnbench.bench import results


@dataclass(frozen=True)
class Metric:
    field: str
    label: str
    floor: float
    higher_is_worse: bool = True


DEFAULT_FLOORS = {
    "time_ms": 0.05,
    "peak_mem_bytes": float(2**20),
    "bits_per_byte": 0.01,
    "accuracy": 0.02,
}
METRICS = [
    Metric("time_ms", "time (ms)", DEFAULT_FLOORS["time_ms"]),
    Metric("peak_mem_bytes", "peak memory", DEFAULT_FLOORS["peak_mem_bytes"]),
    Metric("bits_per_byte", "bits per byte", DEFAULT_FLOORS["bits_per_byte"]),
    Metric("accuracy", "recall accuracy", DEFAULT_FLOORS["accuracy"], higher_is_worse=False),
]


def identity(row: dict[str, Any]) -> str:
    """The case id without its repeat index: what two runs must share to be compared."""
    return re.sub(r"\|r\d+$", "", row.get("case_id", ""))


def _median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def _reduce(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if "case_id" in r:
            grouped.setdefault(identity(r), []).append(r)
    out = {}
    for key, group in grouped.items():
        ok = [r for r in group if r.get("status") == "ok"]
        base = dict((ok or group)[0])
        base["status"] = "ok" if ok else group[0].get("status")
        for m in METRICS:
            values = [r[m.field] for r in ok if r.get(m.field) is not None]
            base[m.field] = _median(values) if values else None
        out[key] = base
    return out


@dataclass
class Change:
    case: str
    metric: str
    a: float | None
    b: float | None
    ratio: float | None
    flagged: bool
    worse: bool
    note: str = ""


def compare_rows(
    rows_a, rows_b, *, threshold: float = 0.10, floors: dict[str, float] | None = None
) -> dict[str, Any]:
    floors = {**DEFAULT_FLOORS, **(floors or {})}
    a, b = _reduce(rows_a), _reduce(rows_b)
    changes: list[Change] = []
    for key in [k for k in a if k in b]:
        ra, rb = a[key], b[key]
        if ra["status"] == "ok" and rb["status"] != "ok":
            changes.append(
                Change(
                    key,
                    "status",
                    None,
                    None,
                    None,
                    True,
                    True,
                    f"ok -> {rb['status']}: {str(rb.get('reason', ''))[:120]}",
                )
            )
            continue
        if ra["status"] != "ok" and rb["status"] == "ok":
            changes.append(
                Change(key, "status", None, None, None, True, False, f"{ra['status']} -> ok")
            )
            continue
        for m in METRICS:
            va, vb = ra.get(m.field), rb.get(m.field)
            if va is None or vb is None:
                continue
            ratio = vb / va if va else None
            flagged = abs(vb - va) > threshold * abs(va) + floors[m.field]
            worse = (vb > va) if m.higher_is_worse else (vb < va)
            changes.append(Change(key, m.field, va, vb, ratio, flagged, flagged and worse))
    return {
        "changes": changes,
        "only_a": sorted(k for k in a if k not in b),
        "only_b": sorted(k for k in b if k not in a),
    }


def _fmt(field: str, value: float | None) -> str:
    if value is None:
        return "-"
    if field == "peak_mem_bytes":
        return f"{value / 2**20:.1f} MiB"
    return f"{value:.4g}"


def compare(
    run_a: str | Path,
    run_b: str | Path,
    *,
    threshold: float = 0.10,
    floors: dict[str, float] | None = None,
    allow_device_mismatch: bool = False,
    show_all: bool = False,
) -> tuple[int, str]:
    """(exit status, printed text) of comparing run folder B against run folder A."""
    info_a, info_b = results.read_run_json(run_a), results.read_run_json(run_b)
    dev_a = _device(info_a)
    dev_b = _device(info_b)
    if dev_a != dev_b and not allow_device_mismatch:
        raise ValueError(
            f"the runs are from different devices ({dev_a!r} vs {dev_b!r}); their "
            "numbers are not comparable (--allow-device-mismatch to compare anyway)"
        )
    out = compare_rows(
        results.read_rows(run_a), results.read_rows(run_b), threshold=threshold, floors=floors
    )
    lines = [
        f"compare B = {Path(run_b).name} against A = {Path(run_a).name} "
        f"(flag when |B - A| > {threshold:g} * A + floor; floors: "
        + ", ".join(
            f"{k} {_fmt(k, v) if k == 'peak_mem_bytes' else v}"
            for k, v in {**DEFAULT_FLOORS, **(floors or {})}.items()
        )
        + ")"
    ]
    if dev_a != dev_b:
        lines.append(f"WARNING: different devices: {dev_a} vs {dev_b}")
    shown = [c for c in out["changes"] if show_all or c.flagged]
    width = max([len(c.case) for c in shown] + [10])
    for c in shown:
        mark = "REGRESSION" if c.worse else ("improved" if c.flagged else "")
        ratio = f"{c.ratio:.3f}x" if c.ratio is not None else ""
        lines.append(
            f"{c.case:<{width}} {c.metric:<15} {_fmt(c.metric, c.a):>12} -> "
            f"{_fmt(c.metric, c.b):>12} {ratio:>8}  {mark} {c.note}"
        )
    compared = len({c.case for c in out["changes"]})
    regressions = [c for c in out["changes"] if c.worse]
    improved = [c for c in out["changes"] if c.flagged and not c.worse]
    for key in out["only_a"]:
        lines.append(f"only in A: {key}")
    for key in out["only_b"]:
        lines.append(f"only in B: {key}")
    lines.append(
        f"{compared} cases compared: {len(regressions)} regressions, {len(improved)} "
        f"improvements beyond the threshold; {len(out['only_a'])} only in A, "
        f"{len(out['only_b'])} only in B"
    )
    return (1 if regressions else 0), "\n".join(lines)


def _device(info: dict[str, Any]) -> str:
    env = info.get("environment", {})
    return f"{env.get('device', '?')}: {env.get('device_name', '?')}"
