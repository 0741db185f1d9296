"""Performance targets as data (``perf_targets.toml`` beside this module), judged against a run's
stored rows: ``target | measured | met?``, as the report of a ``perf`` run prints it.

    suite, targets = load_targets()                  # the shipped file, or load_targets(path)
    verdicts = judge(rows, targets)                  # rows: dicts or a DataFrame of results rows
    table(verdicts)                                  # DataFrame: target, measured, met?

A target is met when its measured value lies within its bounds (a target without bounds when its
row ran); a row that did not run (``error``, ``oom``, ``incorrect``, ``implausible``, ...)
misses it, its status as the measurement; a row, or the baseline row it is divided by, that is
not in the run leaves it unjudged (``n/a``). Several matching rows (repeats) count by their
median. Only op-level rows are read; the metrics are documented in the data file.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

from attnbench.case import SETTING as CASE_SETTING

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TARGETS_FILE = Path(__file__).with_name("perf_targets.toml")
METRICS = ("relative_efficiency", "frac_of_ceiling", "speedup", "growth")
FIELDS = ("time_ms", "peak_mem_bytes")
ENTRY_KEYS = (
    "variants",
    "passes",
    "seq_lens",
    "dtypes",
    "metric",
    "min",
    "max",
    "baseline",
    "from_n",
    "field",
    "source",
)
# the columns that make two rows comparable, besides N (a setting, as the report's tables have it)
SETTING = (*CASE_SETTING, "device")


@dataclass(frozen=True)
class Target:
    """One line of the table: ``metric`` of ``variant`` at (pass, N, dtype) within [min, max]."""

    variant: str
    pass_: str
    seq_len: int
    dtype: str = "float32"
    metric: str = "relative_efficiency"
    min: float | None = None
    max: float | None = None
    baseline: str = "fused.sdpa"
    from_n: int | None = None
    field: str = "time_ms"
    source: str = ""

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; valid: {', '.join(METRICS)}")
        if self.metric == "growth" and not self.from_n:
            raise ValueError(f"target {self.variant}: metric growth needs from_n")
        if self.field not in FIELDS:
            raise ValueError(f"unknown field {self.field!r}; valid: {', '.join(FIELDS)}")

    def describe(self) -> str:
        what = {
            "relative_efficiency": f"fraction of ceiling ÷ `{self.baseline}`'s",
            "frac_of_ceiling": "fraction of ceiling",
            "speedup": f"speed-up over `{self.baseline}`",
            "growth": f"{'time' if self.field == 'time_ms' else 'peak memory'} "
            f"N={self.seq_len} ÷ N={self.from_n}",
        }[self.metric]
        bounds = [f"≥ {self.format(self.min)}"] if self.min is not None else []
        bounds += [f"≤ {self.format(self.max)}"] if self.max is not None else []
        bound = ", ".join(bounds) if bounds else "reported"
        source = f" ({self.source})" if self.source else ""
        return (
            f"`{self.variant}` {self.pass_} N={self.seq_len} {self.dtype}: {what} {bound}{source}"
        )

    @property
    def bounded(self) -> bool:
        return self.min is not None or self.max is not None

    def format(self, value: float) -> str:
        return f"{100 * value:.0f}%" if self.metric == "frac_of_ceiling" else f"{value:.2f}×"


@dataclass(frozen=True)
class Verdict:
    target: Target
    measured: float | None  # None: not measured (see ``status``)
    status: str  # "ok", the status of a row that did not run, or "missing"
    met: bool | None  # None: not judged (a row is missing)

    @property
    def measured_text(self) -> str:
        return self.target.format(self.measured) if self.measured is not None else self.status

    @property
    def met_text(self) -> str:
        if self.met and not self.target.bounded:
            return "ran"
        return {True: "yes", False: "no", None: "n/a"}[self.met]


def load_targets(path: str | Path | None = None) -> tuple[str, list[Target]]:
    """(the suite the targets are for, every target line) of a targets file."""
    path = Path(path) if path is not None else TARGETS_FILE
    data = tomllib.loads(path.read_text())
    unknown = set(data) - {"suite", "target"}
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; valid: suite, target")
    targets = []
    for i, entry in enumerate(data.get("target", [])):
        bad = set(entry) - set(ENTRY_KEYS)
        if bad:
            raise ValueError(
                f"{path}: target {i + 1}: unknown key(s) {sorted(bad)}; valid: "
                + ", ".join(ENTRY_KEYS)
            )
        for key in ("variants", "passes", "seq_lens"):
            if not entry.get(key):
                raise ValueError(f"{path}: target {i + 1}: {key} is required")
        common = {k: v for k, v in entry.items() if k not in ("variants", "passes", "seq_lens")}
        common.pop("dtypes", None)
        for variant, pass_, n, dtype in product(
            entry["variants"], entry["passes"], entry["seq_lens"], entry.get("dtypes", ["float32"])
        ):
            targets.append(Target(variant, pass_, n, dtype, **common))
    return data.get("suite", ""), targets


def _label_matches(label: str, spec: str) -> bool:
    """A row's label (``name:k=v,...``, every parameter spelled out) against a target's spec
    (its name and the parameters it fixes)."""
    name, _, params = label.partition(":")
    want_name, _, want = spec.partition(":")
    if name != want_name:
        return False
    have = dict(p.split("=", 1) for p in params.split(",") if "=" in p)
    return all(have.get(k) == v for k, v in (p.split("=", 1) for p in want.split(",") if p))


def _blank(value: Any) -> bool:
    """None, or NaN (a field a row lacks, once rows are a DataFrame)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _num(value: Any) -> float | None:
    return None if _blank(value) else float(value)


def _same(a: Any, b: Any) -> bool:
    return _blank(a) and _blank(b) or (not _blank(a) and not _blank(b) and a == b)


class _Rows:
    def __init__(self, rows: Iterable[dict[str, Any]]):
        self.rows = [r for r in rows if r.get("level", "op") == "op"]

    def find(self, spec: str, pass_: str, n: int, dtype: str, like: dict | None = None) -> list:
        """Rows of ``spec`` at (pass, N, dtype), causal unless ``like`` (a row whose setting they
        must share) says otherwise."""
        out = []
        for r in self.rows:
            if not (
                r.get("pass") == pass_
                and r.get("seq_len") == n
                and r.get("dtype") == dtype
                and _label_matches(str(r.get("variant", "")), spec)
            ):
                continue
            if like is not None:
                if not all(_same(r.get(c), like.get(c)) for c in SETTING):
                    continue
            elif r.get("causal") is not None and not r.get("causal"):
                continue
            out.append(r)
        return out


def _value(rows: list[dict], field: str) -> tuple[float | None, str]:
    """(median of ``field`` over the rows that ran, their status): ``missing`` without rows."""
    if not rows:
        return None, "missing"
    ran = [_num(r.get(field)) for r in rows if r.get("status") == "ok"]
    ran = [x for x in ran if x is not None]
    if not ran:
        bad = next((r.get("status") for r in rows if r.get("status") != "ok"), None)
        return None, bad or f"no {field}"
    return statistics.median(ran), "ok"


def _judge_one(rows: _Rows, t: Target) -> Verdict:
    mine = rows.find(t.variant, t.pass_, t.seq_len, t.dtype)
    if t.metric in ("relative_efficiency", "frac_of_ceiling"):
        field = "frac_of_ceiling"
    else:
        field = t.field if t.metric == "growth" else "time_ms"
    value, status = _value(mine, field)
    if status != "ok":  # a row that did not run misses; a figure the run did not measure is n/a
        unjudged = status == "missing" or status == f"no {field}"
        return Verdict(t, None, status, None if unjudged else False)
    like = mine[0]
    if t.metric in ("relative_efficiency", "speedup"):
        other_rows = rows.find(t.baseline, t.pass_, t.seq_len, t.dtype, like)
    elif t.metric == "growth":
        other_rows = rows.find(t.variant, t.pass_, t.from_n, t.dtype, like)
        other_rows = [r for r in other_rows if r.get("variant") == like.get("variant")]
    else:
        other_rows = None
    if other_rows is not None:
        other, other_status = _value(other_rows, field)
        if other_status != "ok" or not other:
            who = t.baseline if t.metric != "growth" else f"N={t.from_n}"
            return Verdict(t, None, f"{who}: {other_status}", None)
        value = other / value if t.metric == "speedup" else value / other
    met = (t.min is None or value >= t.min) and (t.max is None or value <= t.max)
    return Verdict(t, value, "ok", met)


def judge(rows: Any, targets: Iterable[Target]) -> list[Verdict]:
    """Each target judged against ``rows`` (results rows as dicts, or a DataFrame of them)."""
    if hasattr(rows, "to_dict"):
        rows = rows.to_dict("records")
    found = _Rows(rows)
    return [_judge_one(found, t) for t in targets]


def table(verdicts: list[Verdict]):
    """The verdicts as a DataFrame: target | measured | met?."""
    import pandas as pd

    return pd.DataFrame(
        [(v.target.describe(), v.measured_text, v.met_text) for v in verdicts],
        columns=["target", "measured", "met?"],
    )


def headline(verdicts: list[Verdict]) -> str:
    """One sentence: how many targets were met, missed and not judged."""
    bounded = [v for v in verdicts if v.target.bounded]
    met = sum(v.met is True for v in bounded)
    missed = sum(v.met is False for v in bounded)
    unjudged = sum(v.met is None for v in bounded)
    reported = len(verdicts) - len(bounded)
    return (
        f"{met} of {len(bounded)} targets met, {missed} missed, {unjudged} not judged (a row not "
        f"in this run), and {reported} figures reported without a bound; judged from this run's "
        "rows against `attnbench/report/perf_targets.toml` (ratios to `fused.sdpa` compare "
        "efficiency on any machine; fractions of the ceiling are one machine's targets)."
    )


def for_run(rows: Any, info: dict[str, Any], path: str | Path | None = None) -> list[Verdict]:
    """The targets of the run's suite judged against its rows; [] for a suite without targets."""
    suite, targets = load_targets(path)
    if (info.get("suite") or {}).get("name") != suite:
        return []
    return judge(rows, targets)
