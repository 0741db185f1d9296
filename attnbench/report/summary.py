"""The findings a report opens with, computed from the stored rows: for each pass and setting the
fastest and the leanest variant at each N, where each efficient variant overtakes the best exact
one (time and memory), the quality cost of each (drop-in and trained bits per byte against full
attention, with the seed spread), whether recall was learned, and the rows that are noisy,
incorrect or failed, each pointing at its table.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from attnbench.case import SETTING as CASE_SETTING
from attnbench.case import STATUSES
from attnbench.report.tables import STATUS_TEXT

FAILED = tuple(name for name, s in STATUSES.items() if s.failed)
SETTING = list(CASE_SETTING)


def anchor(text: str) -> str:
    """The id GitHub (and our HTML) give a heading: lower case, spaces to dashes."""
    keep = "".join(c for c in text.lower() if c.isalnum() or c in " -_")
    return keep.strip().replace(" ", "-")


def _setting_label(s: dict[str, Any]) -> str:
    kv = s.get("kv_heads")
    heads = f"{s['heads']} heads" + (f" ({int(kv)} kv)" if kv and kv != s["heads"] else "")
    return f"{s['pass']}, {s['dtype']}, D {s['head_dim']}, {heads}, B {s['batch']}" + (
        "" if s.get("causal", True) else ", non-causal"
    )


def best_per_n(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(setting, table) per op-level setting: at each N the fastest and the leanest variant."""
    out = []
    op = frame[(frame["level"] == "op") & (frame["status"] == "ok")] if not frame.empty else frame
    if op.empty:
        return out
    for col in SETTING:
        if col not in op:
            op[col] = None
    for key, sub in op.groupby(SETTING, sort=False, dropna=False):
        setting = dict(zip(SETTING, key))
        memory = "cache_bytes" if setting["pass"] == "decode" else "peak_mem_bytes"
        lines = []
        for n, at_n in sub.groupby("seq_len"):
            t = at_n.groupby("variant")["time_ms"].median()
            lo, hi = (
                at_n.groupby("variant")[c].median() if c in at_n else t
                for c in ("time_ms_p20", "time_ms_p80")
            )
            first = t.idxmin()
            # a winner only beyond the rows' own spread: every variant whose p20 is below the
            # fastest's p80 ties with it
            ties = [v for v in t.sort_values().index[1:] if lo[v] <= hi[first]]
            fastest = first if not ties else f"tie: {', '.join([first, *ties])}"
            line = {
                "N": int(n),
                "fastest": fastest,
                "ms": f"{t.min():.3f}",
                "runner-up": (
                    f"{t.nsmallest(2).index[-1]} "
                    f"({t.nsmallest(2).iloc[-1] / t.min():.2f}× slower"
                    + (", within the spread" if ties else "")
                    + ")"
                    if len(t) > 1
                    else "–"
                ),
            }
            if memory in at_n and at_n[memory].notna().any():
                m = at_n.groupby("variant")[memory].median().dropna()
                line.update({"leanest": m.idxmin(), "MiB": f"{m.min() / 2**20:.2f}"})
            lines.append(line)
        out.append((_setting_label(setting), pd.DataFrame(lines).set_index("N")))
    return out


# two-sided 95 % quantiles of Student's t by degrees of freedom (beyond 30: the normal's 1.96)
T975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    12: 2.179,
    15: 2.131,
    20: 2.086,
    25: 2.060,
    30: 2.042,
}


def t975(df: float) -> float:
    """The 97.5 % quantile of Student's t at ``df`` degrees of freedom (the nearest tabled df at
    or below it: conservative)."""
    if df < 1:
        return float("inf")
    return T975[max(k for k in T975 if k <= df)] if df <= 30 else 1.96


def seed_interval(mine: dict[int, float], base: dict[int, float]) -> tuple[float, float] | None:
    """The two-sided 95 % interval of (variant - baseline) bits per byte over seeds, or None with
    fewer than two seeds on either side. Seeds both ran are paired (the same initial weights and
    data order: mean difference ± t(n-1) · sd / sqrt(n)); otherwise Welch's interval from the two
    means and their standard errors. A difference is a finding only when the interval excludes
    zero."""
    import math
    import statistics

    shared = sorted(set(mine) & set(base))
    if len(shared) >= 2:
        d = [mine[s] - base[s] for s in shared]
        half = t975(len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
        return statistics.fmean(d) - half, statistics.fmean(d) + half
    if len(mine) < 2 or len(base) < 2:
        return None
    a, b = list(mine.values()), list(base.values())
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / ((va**2 / (len(a) - 1)) + (vb**2 / (len(b) - 1))) if se else 1e9
    diff = statistics.fmean(a) - statistics.fmean(b)
    return diff - t975(df) * se, diff + t975(df) * se


def quality_cost(frame: pd.DataFrame) -> pd.DataFrame | None:
    """Per variant: trained bits per byte at the training length against full attention (mean
    over seeds, spread, and whether the difference exceeds the spread), and the drop-in cost."""
    q = frame[frame["level"] == "quality"] if not frame.empty else frame
    if q.empty or "eval_len" not in q:
        return None
    evals = q[(q["pass"] == "eval") & (q["status"] == "ok") & q["eval_len"].notna()]
    evals = evals[evals["family"] != "baseline"]
    if evals.empty:
        return None
    length = int(evals["train_len"].iloc[0])
    at = evals[evals["eval_len"] == length] if (evals["eval_len"] == length).any() else evals
    stats = at.groupby("variant", sort=False)["bits_per_byte"].agg(["mean", "min", "max", "count"])
    exact = at.groupby("variant", sort=False)["exact"].first() if "exact" in at else None
    base_name = next(
        (v for v in stats.index if exact is not None and bool(exact.get(v))), stats.index[0]
    )
    base = stats.loc[base_name]
    rows = []
    dropin = (
        q[(q["pass"] == "dropin") & q.get("eval_len", pd.Series(dtype=float)).notna()]
        if "eval_len" in q
        else q.iloc[0:0]
    )
    by_seed = (
        {v: dict(zip(g["seed"], g["bits_per_byte"])) for v, g in at.groupby("variant", sort=False)}
        if "seed" in at
        else {v: {} for v in stats.index}
    )
    for v, s in stats.iterrows():
        diff = s["mean"] - base["mean"]
        ci = None if v == base_name else seed_interval(by_seed[v], by_seed[base_name])
        significant = None if ci is None else (ci[0] > 0 or ci[1] < 0)
        row = {
            "variant": v,
            "bits per byte": f"{s['mean']:.4f}",
            "seeds": int(s["count"]),
            "spread": f"{s['max'] - s['min']:.4f}" if s["count"] > 1 else "–",
            f"vs {base_name}": "–" if v == base_name else f"{diff:+.4f}",
            "95% interval": "–" if ci is None else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]",
            "finding?": (
                "–"
                if v == base_name
                else "one seed: interval unknown"
                if significant is None
                else "yes"
                if significant
                else "no: the interval includes 0"
            ),
        }
        d = (
            dropin[(dropin["variant"] == v) & (dropin["eval_len"] == length)]
            if not dropin.empty
            else dropin
        )
        if not d.empty and pd.notna(d["rel_diff"].iloc[0]):
            row["drop-in"] = f"{100 * d['rel_diff'].iloc[0]:+.2f}%"
        rows.append(row)
    return pd.DataFrame(rows).set_index("variant")


def recall_verdict(frame: pd.DataFrame) -> str | None:
    """Whether the recall runs learned the task: exact attention must reach 0.9 on every
    setting, otherwise the table says nothing about the variants."""
    r = (
        frame[(frame["level"] == "recall") & (frame["pass"] == "eval")]
        if not frame.empty
        else frame
    )
    if r.empty or "accuracy" not in r:
        return None
    exact = r[r["exact"] == True] if "exact" in r else r.iloc[0:0]  # noqa: E712
    if exact.empty:
        return (
            "No exact (softmax) variant was trained on recall: nothing tells whether the task "
            "was learnable at this budget."
        )
    worst = exact["accuracy"].min()
    if worst < 0.9:
        return (
            f"**Recall was not learned**: softmax attention reached only {worst:.2f} on its "
            "hardest setting (< 0.9), so this budget does not separate the variants; the "
            "recall table is not a finding."
        )
    others = r[r["exact"] != True]  # noqa: E712
    near = sorted({v for v, c in zip(others["variant"], others.get("near_chance", [])) if c})
    return f"Softmax attention recalls every setting (≥ {worst:.2f}); " + (
        f"at chance on some settings: {', '.join(near)}."
        if near
        else "every other variant is above chance on every setting."
    )


def best_lr(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """With a learning-rate grid (rows with ``lr`` > 0): (the frame with, per variant and seed,
    only its best rate's quality and recall rows, the table of every rate's result with the
    winner marked). The best is the lowest validation bits per byte at the training length
    (quality) or the highest mean accuracy over the settings (recall): chosen on the split the
    report scores, as Zoology and MAD choose per point. No grid: the frame as it is, None."""
    if frame.empty or "lr" not in frame or not (frame["lr"].fillna(0) > 0).any():
        return frame, None
    keep = pd.Series(True, index=frame.index)
    lines = []
    for level, metric in (("quality", "bits_per_byte"), ("recall", "accuracy")):
        ev = frame[(frame["level"] == level) & (frame["lr"].fillna(0) > 0)]
        ev = ev[(ev["pass"] == "eval") & (ev["status"] == "ok")]
        if level == "quality" and not ev.empty:
            ev = ev[ev["family"] != "baseline"]
            at_len = ev["eval_len"] == ev["train_len"]
            ev = ev[at_len] if at_len.any() else ev
        if ev.empty:
            continue
        means = ev.groupby(["variant", "seed", "lr"])[metric].mean()
        for (variant, seed), g in means.groupby(level=["variant", "seed"], sort=False):
            win = g.idxmin() if metric == "bits_per_byte" else g.idxmax()
            for key, value in g.items():
                mark = " ✓" if key == win else ""
                lines.append(
                    {
                        "level": level,
                        "variant": variant,
                        "seed": int(seed),
                        "lr": f"{key[2]:g}",
                        "result": f"{value:.4f}{mark}",
                    }
                )
            mine = (frame["level"] == level) & (frame["variant"] == variant)
            mine &= frame["seed"] == seed
            keep &= ~(mine & (frame["lr"] != win[2]))
    if not lines:
        return frame, None
    shown = pd.DataFrame(lines).pivot_table(
        index=["level", "variant", "seed"], columns="lr", values="result", aggfunc="first"
    )
    return frame[keep], shown


RECALLED = 0.99  # Zoology's summary: the smallest state at which accuracy reaches this


def recall_frontier(frame: pd.DataFrame) -> pd.DataFrame | None:
    """Zoology's summary number per math (softmax, a window, each feature map): the smallest
    state (bytes per layer) of its trained configurations that recalls at ``RECALLED`` or more
    on every setting of the sweep, or that none does (with its best). A variant's state is its
    largest over the settings (a KV cache grows with N)."""
    r = (
        frame[(frame["level"] == "recall") & (frame["pass"] == "eval")]
        if not frame.empty
        else frame
    )
    if r.empty or "state_bytes" not in r or "accuracy" not in r:
        return None
    r = r[r["status"] == "ok"]
    per = r.groupby(["math", "variant"], sort=False).agg(
        state=("state_bytes", "max"), worst=("accuracy", "min")
    )
    rows = []
    for math_name, g in per.groupby(level="math", sort=False):
        g = g.droplevel("math").sort_values("state")
        ok = g[g["worst"] >= RECALLED]
        best = g.loc[g["worst"].idxmax()]
        rows.append(
            {
                "math": math_name,
                "states tried (KiB)": ", ".join(f"{s / 1024:.1f}" for s in g["state"]),
                f"smallest state with accuracy ≥ {RECALLED}": (
                    f"{ok['state'].iloc[0] / 1024:.1f} KiB (`{ok.index[0]}`)"
                    if not ok.empty
                    else f"never (best {best['worst']:.2f} at {best['state'] / 1024:.1f} KiB)"
                ),
            }
        )
    return pd.DataFrame(rows).set_index("math")


def problems(frame: pd.DataFrame) -> list[str]:
    """Lines naming the noisy, incorrect and failed rows, each pointing at its table."""
    out = []
    if frame.empty:
        return out
    for status in FAILED:
        bad = frame[frame["status"] == status]
        if bad.empty:
            continue
        names = ", ".join(
            sorted(
                {
                    f"`{v}` {p} N={int(n)}"
                    for v, p, n in zip(bad["variant"], bad["pass"], bad["seq_len"])
                }
            )[:8]
        )
        more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
        out.append(f"{len(bad)} {STATUS_TEXT.get(status, status)}: {names}{more}")
    if "noisy" in frame:
        noisy = frame[frame["noisy"] == True]  # noqa: E712
        if not noisy.empty:
            out.append(
                f"{len(noisy)} noisy (p20–p80 spread above 10% of the median; marked † in "
                "the tables)"
            )
    return out


LIKE = SETTING  # what must be equal for two rows to be compared


def is_exact(frame: pd.DataFrame) -> pd.Series:
    """Whether each row's variant computes full softmax attention (its ``exact`` field; rows of
    older runs get it when loaded, ``results.upgrade``)."""
    if "exact" not in frame:
        return pd.Series(False, index=frame.index)
    return frame["exact"].astype(object).where(frame["exact"].notna(), False).astype(bool)


def crossover(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """For each non-exact variant and setting: the smallest N from which it beats the fastest
    (or leanest) exact variant *of the same setting* (pass, dtype, head dim, heads, kv heads,
    batch, causal) at every measured N up to the largest (``–`` if it never does). ``metric`` is
    ``time`` or ``memory`` (peak memory; for decode, the cache or state bytes)."""
    rows = []
    op = frame[(frame["level"] == "op") & (frame["status"] == "ok")] if not frame.empty else frame
    if op.empty:
        return pd.DataFrame(rows)
    op = op.assign(_exact=is_exact(op))
    for col in LIKE:
        if col not in op:
            op[col] = None
    for key, sub in op.groupby(LIKE, sort=False, dropna=False):
        setting = dict(zip(LIKE, key))
        p = setting["pass"]
        value = (
            "time_ms"
            if metric == "time"
            else ("cache_bytes" if p == "decode" else "peak_mem_bytes")
        )
        if value not in sub:
            continue
        sub = sub[sub[value].notna()]
        exact = sub[sub["_exact"]]
        if exact.empty:
            continue
        # the same statistic on both sides: each variant's median over repeats, and the best
        # exact variant is the one with the lowest of those medians at each N
        per = exact.groupby(["seq_len", "variant"])[value].median()
        best = per.groupby("seq_len").min()
        best_var = per.groupby("seq_len").idxmin().map(lambda t: t[1])
        timed = metric == "time" and {"time_ms_p20", "time_ms_p80"} <= set(sub.columns)
        for v in dict.fromkeys(sub.loc[~sub["_exact"], "variant"]):
            mine_rows = sub[sub["variant"] == v]
            mine = mine_rows.groupby("seq_len")[value].median()  # over repeats only
            ns = [n for n in mine.index if n in best.index]
            if timed:  # a win only beyond both rows' spread: the challenger's p80 below the
                # exact variant's p20 (a tie is a tie)
                hi = mine_rows.groupby("seq_len")["time_ms_p80"].median()
                lo = (
                    exact[exact["variant"].isin(best_var.values)]
                    .groupby(["seq_len", "variant"])["time_ms_p20"]
                    .median()
                )
                wins = [hi[n] < lo.get((n, best_var[n]), best[n]) for n in ns]
            else:
                wins = [mine[n] < best[n] for n in ns]
            start = next((ns[i] for i in range(len(ns)) if all(wins[i:])), None)
            rows.append(
                {
                    "pass": p,
                    "dtype": setting["dtype"],
                    "D": setting["head_dim"],
                    "H/KV": f"{setting['heads']}/{int(setting['kv_heads'])}",
                    "B": setting["batch"],
                    "variant": v,
                    "measure": value,
                    "from N": "–" if start is None else str(int(start)),
                    "ratio at largest N": (
                        f"{best[ns[-1]] / mine[ns[-1]]:.2f}×" if ns and mine[ns[-1]] > 0 else "–"
                    ),
                }
            )
    return pd.DataFrame(rows)
