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
from dataclasses import dataclass, field
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

    def matches(self, row: dict[str, Any]) -> bool:
        return all(row.get(k) == v for k, v in self.match.items())


@dataclass(frozen=True)
class Verdict:
    calibration: Calibration
    ours: float | None
    status: str  # "ok", a failed row's status, or "missing"
    within: bool | None  # None: no row to judge


def load(path: str | Path | None = None) -> tuple[str, list[Calibration]]:
    """(the suite the calibrations are for, the calibrations) of a calibrations file."""
    data = tomllib.loads(Path(path or FILE).read_text())
    known = {"name", "source", "published", "tolerance", "metric", "match"}
    out = []
    for entry in data.get("calibration", []):
        bad = set(entry) - known
        if bad:
            raise ValueError(f"calibration {entry.get('name')!r}: unknown key {sorted(bad)[0]!r}")
        out.append(Calibration(**entry))
    return data.get("suite", ""), out


def judge(rows, calibrations: list[Calibration]) -> list[Verdict]:
    if isinstance(rows, pd.DataFrame):
        rows = rows.to_dict("records")
    out = []
    for c in calibrations:
        mine = [r for r in rows if c.matches(r)]
        ran = [r for r in mine if r.get("status") == "ok" and _number(r.get(c.metric))]
        if ran:
            ours = statistics.median(float(r[c.metric]) for r in ran)
            out.append(Verdict(c, ours, "ok", abs(ours - c.published) <= c.tolerance))
        elif mine:
            out.append(Verdict(c, None, str(mine[0].get("status")), False))
        else:
            out.append(Verdict(c, None, "missing", None))
    return out


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def table(verdicts: list[Verdict]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "calibration": v.calibration.name,
                "published": f"{v.calibration.published:.3g}",
                "ours": f"{v.ours:.3f}" if v.ours is not None else v.status,
                "within tolerance?": (
                    {True: "yes", False: "no", None: "n/a"}[v.within]
                    + f" (± {v.calibration.tolerance:g})"
                ),
                "source": v.calibration.source,
            }
            for v in verdicts
        ]
    ).set_index("calibration")


def for_run(frame: pd.DataFrame, info: dict[str, Any], path=None) -> list[Verdict]:
    """The calibrations of this run's suite, judged (none for another suite)."""
    suite, calibrations = load(path)
    if (info.get("suite") or {}).get("name") != suite:
        return []
    return judge(frame, calibrations)
