"""Tables of stored rows, for the terminal and for the report: pivots whose cells are numbers, or
the status of a case that produced none (``OOM``, ``unsupported``, ...), never blank or zero.
Rendered by tabulate (the terminal) and pandas' ``to_markdown``, which uses it (the report).

    print(summary(results.read_rows(run_dir)))      # what `run` prints at the end
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd
from tabulate import tabulate

from attnbench.case import STATUSES

STATUS_TEXT = {name: s.text for name, s in STATUSES.items() if name != "ok"}
ORDER0_MARGIN = 0.5  # bits per byte a trained model must gain over the order-0 entropy


NOISY_MARK = "†"  # a time whose p20-p80 spread exceeds the suite's threshold of its median


def cell(r: pd.Series | dict, value: str, fmt: str, marks: dict[str, str] | None = None) -> str:
    """``r[value]`` formatted, or the row's status when it has no number; ``marks`` {field:
    text} appends ``text`` where the row's ``field`` is true (noisy, near chance)."""
    if r.get("status") != "ok":
        return STATUS_TEXT.get(r.get("status"), str(r.get("status")))
    v = r.get(value)
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return "–"
    return format(v, fmt) + "".join(
        text for field, text in (marks or {}).items() if r.get(field) is True
    )


def pivot(
    frame: pd.DataFrame,
    col: str,
    value: str,
    fmt: str,
    index: str = "variant",
    mark_noisy: bool = False,
    marks: dict[str, str] | None = None,
) -> pd.DataFrame:
    """``index`` values (rows, in run order) x ``col`` values; cells formatted or their status
    (``mark_noisy``: noisy rows carry ``NOISY_MARK``)."""
    frame = frame.copy()
    marks = {**({"noisy": NOISY_MARK} if mark_noisy else {}), **(marks or {})}
    frame["_cell"] = [cell(r, value, fmt, marks) for _, r in frame.iterrows()]
    order = list(dict.fromkeys(frame[index]))
    table = frame.groupby([index, col], sort=False)["_cell"].first().unstack(col)
    table = table.reindex(order)
    table = table[sorted(table.columns)]
    table.columns = [
        str(int(c)) if isinstance(c, float) and c.is_integer() else str(c) for c in table.columns
    ]
    table.index.name = index
    return table.fillna("–")


def render(frame: pd.DataFrame, tablefmt: str = "simple") -> str:
    """A DataFrame (its index as the first column) as text; ``github`` for Markdown."""
    flat = (
        frame.reset_index() if frame.index.name or isinstance(frame.index, pd.MultiIndex) else frame
    )
    return tabulate(flat, headers="keys", tablefmt=tablefmt, showindex=False, disable_numparse=True)


def speed_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One line per op or model case: variant, pass, N, status, time, GFLOP/s, % of the
    ceiling, peak memory, and a mark on noisy rows."""
    out = []
    for r in rows:
        ok = r.get("status") == "ok"
        out.append(
            {
                "variant": r["variant"],
                "pass": r["pass"],
                "N": r["seq_len"],
                "status": r["status"],
                "ms": f"{r['time_ms']:.3f}" if ok and r.get("time_ms") is not None else "-",
                "GFLOP/s": f"{r['flops_per_s'] / 1e9:.1f}" if ok and r.get("flops_per_s") else "-",
                "%ceil": (
                    f"{100 * r['frac_of_ceiling']:.0f}" if ok and r.get("frac_of_ceiling") else "-"
                ),
                "peak MiB": (
                    f"{r['peak_mem_bytes'] / 2**20:.1f}"
                    if ok and r.get("peak_mem_bytes") is not None
                    else "-"
                ),
                "noisy": "noisy" if r.get("noisy") else "",
            }
        )
    return pd.DataFrame(out)


def quality_tables(rows: list[dict[str, Any]]) -> list[tuple[str, pd.DataFrame]]:
    """Bits per byte by evaluation length (trained variants and the n-gram floor), training
    throughput, and the drop-in tables, each with its title."""
    frame = pd.DataFrame(rows)
    out: list[tuple[str, pd.DataFrame]] = []
    evals = (
        frame[(frame["pass"] == "eval") & frame.get("eval_len", pd.Series(dtype=float)).notna()]
        if "eval_len" in frame
        else frame.iloc[0:0]
    )
    if not evals.empty:
        first = evals.iloc[0]
        order0 = next((r for r in evals.get("order0_bpb", []) if pd.notna(r)), None)
        title = (
            f"quality: bits per byte on {first['dataset']} "
            f"({first.get('eval_split', 'val')}), trained at L={first['train_len']}, "
            f"{first['budget']}; columns: eval length"
            + (f"; order-0 entropy {order0:.3f}" if order0 else "")
        )
        evals = evals.assign(
            label=[
                f"{v} (seed {int(s)})" if _seeds(evals) > 1 else v
                for v, s in zip(evals["variant"], evals["seed"])
            ]
        )
        out.append((title, pivot(evals, "eval_len", "bits_per_byte", ".4f", index="label")))
        if order0:
            weak = sorted(
                {
                    r["variant"]
                    for _, r in evals.iterrows()
                    if r["status"] == "ok" and r["bits_per_byte"] > order0 - ORDER0_MARGIN
                }
            )
            note = (
                f"WARNING: within {ORDER0_MARGIN} bits of the order-0 entropy (learned "
                f"nothing?): {', '.join(weak)}"
                if weak
                else f"every model beats the order-0 entropy by more than {ORDER0_MARGIN} "
                "bits per byte"
            )
            out.append((note, pd.DataFrame()))
    trains = frame[frame["pass"] == "train"]
    if not trains.empty:
        t = pd.DataFrame(
            {
                "variant": trains["variant"],
                "seed": trains.get("seed"),
                "status": trains["status"],
                "steps": trains.get("train_steps"),
                "tokens/s": [
                    f"{x:.0f}" if pd.notna(x) else "-" for x in trains.get("tokens_per_s", [])
                ],
                "final train bpb": [
                    f"{x:.4f}" if pd.notna(x) else "-" for x in trains.get("final_train_bpb", [])
                ],
                "reason": trains.get("reason", ""),
            }
        )
        out.append(("training", t))
    dropin = (
        frame[(frame["pass"] == "dropin") & frame["eval_len"].notna()]
        if "eval_len" in frame
        else frame.iloc[0:0]
    )
    if not dropin.empty:
        title = (
            f"drop-in: checkpoint of {dropin.iloc[0]['trained_variant']}, bits per byte with "
            "each variant swapped in"
        )
        out.append((title, pivot(dropin, "eval_len", "bits_per_byte", ".4f")))
        out.append(
            (
                "relative difference to the trained variant (+: worse, -: better)",
                pivot(dropin, "eval_len", "rel_diff", "+.1e"),
            )
        )
    return out


def _seeds(frame: pd.DataFrame) -> int:
    return int(frame["seed"].nunique()) if "seed" in frame else 1


def recall_frame(rows: list[dict[str, Any]]) -> pd.DataFrame | None:
    evals = [
        dict(r, setting=f"N{r['seq_len']}/kv{r['kv_pairs']}")
        for r in rows
        if r["pass"] == "eval" and "kv_pairs" in r
    ]
    if not evals:
        return None
    table = pivot(
        pd.DataFrame(evals), "setting", "accuracy", ".3f", marks={"near_chance": " ≈chance"}
    )
    keys = sorted(table.columns, key=lambda s: tuple(int(x.lstrip("Nkv")) for x in s.split("/")))
    return table[keys]


def summary(rows: Iterable[dict[str, Any]]) -> str:
    """The text tables ``run`` prints: speed and memory (one line per case), quality, recall."""
    rows = list(rows)
    parts = []
    speed = [r for r in rows if r.get("level") in ("op", "model")]
    if speed:
        parts.append(render(speed_frame(speed)))
    quality = [r for r in rows if r.get("level") == "quality"]
    for title, table in quality_tables(quality) if quality else []:
        parts.append(title + ("\n" + render(table) if not table.empty else ""))
    recall = [r for r in rows if r.get("level") == "recall"]
    if recall:
        table = recall_frame(recall)
        failed = [
            f"recall {r['variant']}: {r['status']} {r.get('reason', '')}"
            for r in recall
            if r["pass"] == "train" and r["status"] != "ok"
        ]
        text = (
            (
                "recall (MQAR): accuracy by sequence length N and key-value pairs kv\n"
                + render(table)
            )
            if table is not None
            else "recall: no evaluated settings"
        )
        parts.append("\n".join([text] + failed))
    return "\n\n".join(parts)
