"""Calibrations as data (``calibrations.toml`` beside this module): published results, each with
its source and a tolerance stated in advance, judged against a run's own rows. The report of a
run of their suite opens with ``calibration | published | ours | within tolerance?``.

    suite, entries = load()                    # the shipped file, or load(path)
    verdicts = judge(rows, entries)            # rows: dicts or a DataFrame of results rows
    table(verdicts)                            # the report's first table

A row that did not run (``error``, ``incorrect``, ...) fails its calibration with its status as
the figure; no matching row leaves it unjudged (``n/a``); several (seeds) count by their median.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FILE = Path(__file__).with_name("calibrations.toml")


@dataclass(frozen=True)
class Calibration:
    name: str
    source: str
    published: float
    tolerance: float
    metric: str
    match: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.tolerance < 0:
            raise ValueError(f"calibration {self.name!r}: tolerance must be >= 0")
        if not self.match:
            raise ValueError(f"calibration {self.name!r}: needs a [calibration.match] table")

    def judge(self, rows: list[dict[str, Any]]) -> Verdict:
        mine = [r for r in rows if _matches(r, self.match)]
        ran = [r for r in mine if _ran(r, self.metric)]
        if ran:
            ours = statistics.median(float(r[self.metric]) for r in ran)
            return Verdict(self, ours, "ok", abs(ours - self.published) <= self.tolerance)
        if mine:
            return Verdict(self, None, str(mine[0].get("status")), False)
        return Verdict(self, None, "missing", None)


@dataclass(frozen=True)
class Verdict:
    calibration: Calibration
    ours: float | str | None  # a claim's: the figures it was judged on
    status: str  # "ok", a failed row's status, or "missing"
    within: bool | None  # None: no row to judge


CLAIM_KINDS = ("at_least", "increasing", "above")


@dataclass(frozen=True)
class Claim:
    """A published ordering, judged on any run that has its variants' rows (recall runs of any
    suite): ``at_least`` (every row of ``variants[0]`` reaches ``value``), ``increasing`` (the
    variants' mean ``metric``, in the order given, never falls), ``above`` (each variant after
    the first has a lower mean than the first)."""

    name: str
    source: str
    kind: str
    metric: str
    variants: tuple[str, ...]
    value: float = 0.0
    match: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in CLAIM_KINDS:
            raise ValueError(
                f"claim {self.name!r}: unknown kind {self.kind!r}; valid: {', '.join(CLAIM_KINDS)}"
            )
        if not self.variants:
            raise ValueError(f"claim {self.name!r}: needs variants")

    def judge(self, rows: list[dict[str, Any]]) -> Verdict | None:
        """None when a variant has no row (the claim is not about this run)."""
        ok = [r for r in rows if _ran(r, self.metric) and _matches(r, self.match)]
        labels = {v: _label(v) for v in self.variants}  # rows carry every parameter spelled out
        values = {
            v: [float(r[self.metric]) for r in ok if r.get("variant") == labels[v]]
            for v in self.variants
        }
        if not all(values.values()):
            return None
        means = {v: statistics.fmean(x) for v, x in values.items()}
        if self.kind == "at_least":
            held = min(values[self.variants[0]]) >= self.value
            text = f"min {min(values[self.variants[0]]):.3f}"
        elif self.kind == "increasing":
            seq = [means[v] for v in self.variants]
            held = all(b >= a for a, b in zip(seq, seq[1:]))
            text = " → ".join(f"{m:.3f}" for m in seq)
        else:
            first = means[self.variants[0]]
            held = all(means[v] < first for v in self.variants[1:])
            text = f"{first:.3f} vs " + ", ".join(f"{means[v]:.3f}" for v in self.variants[1:])
        return Verdict(self, text, "ok", held)


def load(path: str | Path | None = None) -> tuple[str, list[Calibration]]:
    """(the suite the calibrations are for, the calibrations) of a calibrations file."""
    data = tomllib.loads(Path(path or FILE).read_text())
    out: list = []
    for table, cls in (("calibration", Calibration), ("claim", Claim)):
        known = {f.name for f in fields(cls)}
        for entry in data.get(table, []):
            bad = set(entry) - known
            if bad:
                raise ValueError(f"{table} {entry.get('name')!r}: unknown key {sorted(bad)[0]!r}")
            if "variants" in entry:
                entry = {**entry, "variants": tuple(entry["variants"])}
            out.append(cls(**entry))
    return data.get("suite", ""), out


def judge(rows, calibrations: list) -> list[Verdict]:
    if isinstance(rows, pd.DataFrame):
        rows = rows.to_dict("records")
    return [v for v in (c.judge(rows) for c in calibrations) if v is not None]


def _label(spec: str) -> str:
    from attnbench.registry import get_variant

    try:
        return get_variant(spec).label
    except (ValueError, KeyError):
        return spec


def _matches(row: dict[str, Any], match: dict[str, Any]) -> bool:
    return all(row.get(k) == v for k, v in match.items())


def _ran(row: dict[str, Any], metric: str) -> bool:
    """A row that ran and has a number for ``metric``."""
    return row.get("status") == "ok" and _number(row.get(metric))


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def table(verdicts: list[Verdict]) -> pd.DataFrame:
    def line(v: Verdict) -> dict[str, Any]:
        c = v.calibration
        if isinstance(c, Claim):
            return {
                "calibration": c.name,
                "published": f"{c.kind} ({c.metric})",
                "ours": v.ours,
                "within tolerance?": {True: "yes: holds", False: "no: does not hold"}[v.within],
                "source": c.source,
            }
        return {
            "calibration": c.name,
            "published": f"{c.published:.3g}",
            "ours": f"{v.ours:.3f}" if v.ours is not None else v.status,
            "within tolerance?": (
                {True: "yes", False: "no", None: "n/a"}[v.within] + f" (± {c.tolerance:g})"
            ),
            "source": c.source,
        }

    return pd.DataFrame([line(v) for v in verdicts]).set_index("calibration")


def for_run(frame: pd.DataFrame, info: dict[str, Any], path=None) -> list[Verdict]:
    """The calibrations of this run's suite, and every claim whose variants the run has."""
    suite, entries = load(path)
    mine = (info.get("suite") or {}).get("name") == suite
    return judge(frame, [e for e in entries if mine or isinstance(e, Claim)])
