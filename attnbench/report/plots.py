"""The trade-off plots of a run folder (matplotlib, headless). Every function reads a DataFrame
of stored rows (``attnbench.bench.results.load``) and writes one PNG (for report.md) and one SVG
(for report.html), or nothing when the run has no rows of its kind; ``write_all`` returns
{plot name: PNG path}. In the SVG every measured point carries a ``<title>`` (variant, setting, N,
median and p20–p80), which a browser shows on hover: the page needs no script or network.

Colours are by family, markers and line styles tell variants of a family apart, labels carry the
variant's parameters, and titles the device and dtype. Cases that did not run (out of memory,
error, timeout, crash, unsupported) are marked with their status where they happened, at the
top of the panel, never silently dropped.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from attnbench.case import SETTING, STATUSES  # noqa: E402

FAMILY_COLOURS = {
    "naive": "#7f7f7f",
    "fused": "#1f77b4",
    "sliding_window": "#2ca02c",
    "sparse": "#d62728",
    "linear": "#9467bd",
    "baseline": "#000000",
}
MARKERS = "osD^vP*Xh<>"
STYLES = ["-", "--", "-.", ":"]
PASS_TITLES = {
    "fwd": "forward",
    "fwd_bwd": "forward + backward",
    "decode": "decode (one token)",
    "train_step": "train step",
    "prefill": "prefill",
}
FAILED_MARK = {name: s.mark for name, s in STATUSES.items() if s.mark}
DPI = 110


def _style(variants: list[str], families: dict[str, str]) -> dict[str, dict[str, Any]]:
    """A colour per family, a marker and line style per variant within it (stable order)."""
    seen: dict[str, int] = {}
    out = {}
    for v in variants:
        fam = families.get(v, "fused")
        i = seen.get(fam, 0)
        seen[fam] = i + 1
        out[v] = dict(
            color=FAMILY_COLOURS.get(fam, "#17becf"),
            marker=MARKERS[i % len(MARKERS)],
            linestyle=STYLES[i % len(STYLES)],
        )
    return out


def _title_suffix(frame: pd.DataFrame, env: dict[str, Any]) -> str:
    dev = env.get("device_name") or env.get("device") or "?"
    dtypes = ", ".join(sorted(str(d) for d in frame["dtype"].dropna().unique()))
    return f"{dev} · {dtypes}"


def _legend(fig, axes) -> None:
    handles, labels = {}, []
    for ax in np.atleast_1d(axes).ravel():
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if labels:
        cols = max(1, min(3, len(np.atleast_1d(axes).ravel()), (len(labels) + 3) // 4))
        fig.legend(
            [handles[lab] for lab in labels],
            labels,
            loc="upper center",
            bbox_to_anchor=(0.5, 0.0),
            fontsize=8,
            ncol=cols,
            frameon=False,
        )


class Tips:
    """Hover texts of a figure's points: ``add(ax, x, y, text, **style)`` draws one marker with a
    gid; ``_save`` writes the texts into the SVG as the ``<title>`` of each marker."""

    def __init__(self):
        self.texts: dict[str, str] = {}

    def add(self, ax, x, y, text: str, **style) -> None:
        gid = f"pt{len(self.texts)}"
        art = ax.scatter([x], [y], s=style.pop("s", 18), zorder=4, **style)
        art.set_gid(gid)
        self.texts[gid] = text


def _save(fig, path: Path, tips: Tips | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    svg = path.with_suffix(".svg")
    fig.savefig(svg, bbox_inches="tight")
    plt.close(fig)
    text = svg.read_text()
    for gid, tip in tips.texts.items() if tips else ():
        text = text.replace(
            f'<g id="{gid}">', f'<g id="{gid}" class="pt"><title>{html.escape(tip)}</title>', 1
        )
    text = re.sub(r"<!--.*?-->|<metadata>.*?</metadata>", "", text, flags=re.S)  # smaller
    svg.write_text(text)
    return path


# a plot is one pass: the rest of a setting, and the model preset, tell its lines apart
SETTING_COLUMNS = ("preset", *(c for c in SETTING if c != "pass"))


def _line_keys(frame: pd.DataFrame) -> pd.Series:
    """One line per variant and setting: a variant measured in several settings (dtypes, head
    dims, heads, batches, causal or not) gets one line per setting, labelled with what differs."""
    varying = [c for c in SETTING_COLUMNS if c in frame and frame[c].nunique(dropna=True) > 1]
    if not varying:
        return frame["variant"]

    def label(r):
        parts = []
        for c in varying:
            v = r[c]
            parts.append(
                {
                    "preset": str(v),
                    "dtype": str(v),
                    "head_dim": f"D{v}",
                    "heads": f"H{v}",
                    "kv_heads": f"KV{v}",
                    "batch": f"B{v}",
                    "causal": "causal" if v else "non-causal",
                }[c]
            )
        return f"{r['variant']} [{', '.join(parts)}]"

    return frame.apply(label, axis=1)


def _tip(r, value: str, unit: str, transform) -> str:
    x = transform(pd.Series([r[value]])).iloc[0] if transform else r[value]
    spread = ""
    if value == "time_ms" and pd.notna(r.get("time_ms_p20")):
        spread = f" (p20–p80 {r['time_ms_p20']:.3f}–{r['time_ms_p80']:.3f})"
    return f"{r['variant']}\nN = {int(r['seq_len'])}, {r.get('dtype', '')}: {x:.4g} {unit}{spread}"


def _line_panels(
    frame: pd.DataFrame,
    passes: list[str],
    value: str,
    ylabel: str,
    title: str,
    path: Path,
    env: dict,
    transform=None,
    ceiling: float | None = None,
) -> Path | None:
    """One log-log panel per pass: ``value`` against N for every variant; failures marked."""
    if frame.empty:
        return None
    passes = [p for p in passes if (frame["pass"] == p).any()]
    if not passes:
        return None
    frame = frame.assign(_line=_line_keys(frame))
    variants = list(dict.fromkeys(frame["_line"]))
    families = dict(zip(frame["_line"], frame["family"]))
    style = _style(variants, families)
    tips = Tips()
    fig, axes = plt.subplots(1, len(passes), figsize=(5.2 * len(passes), 4.2), squeeze=False)
    for ax, p in zip(axes[0], passes):
        sub = frame[frame["pass"] == p]
        failed = []
        for v in variants:
            rows = sub[sub["_line"] == v].sort_values("seq_len")
            ok = rows[(rows["status"] == "ok") & rows[value].notna()]
            if not ok.empty:
                g = ok.groupby("seq_len")[value].median()
                g = g[g > 0]  # log axes: a zero (nothing allocated beyond the inputs) has no place
                y = transform(g) if transform else g
                if not g.empty:
                    line = {k: s for k, s in style[v].items() if k != "marker"}
                    ax.plot(g.index, y.values, label=v, **line)
                    for n, yv in zip(g.index, y.values):
                        r = ok[ok["seq_len"] == n].iloc[0]
                        tips.add(
                            ax,
                            n,
                            yv,
                            _tip(r, value, ylabel, transform),
                            color=style[v]["color"],
                            marker=style[v]["marker"],
                        )
            for _, r in rows[rows["status"].isin(list(FAILED_MARK))].iterrows():
                failed.append((r["seq_len"], FAILED_MARK[r["status"]], style[v]["color"]))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        if ceiling:
            ax.axhline(ceiling, color="black", linewidth=1, linestyle=":")
            ax.annotate(
                "measured matmul ceiling",
                (0.02, ceiling),
                xycoords=("axes fraction", "data"),
                fontsize=7,
                va="bottom",
            )
        if failed:
            top = ax.get_ylim()[1]
            for n, text, colour in failed:
                ax.scatter([n], [top], marker="x", color=colour, s=30, clip_on=False, zorder=5)
                ax.annotate(
                    text,
                    (n, top),
                    fontsize=6,
                    color=colour,
                    rotation=90,
                    xytext=(0, 4),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                )
        ax.set_title(PASS_TITLES.get(p, p), fontsize=10)
        ax.set_xlabel("sequence length N")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.25)
    fig.suptitle(f"{title} — {_title_suffix(frame, env)}", fontsize=11, y=1.02)
    _legend(fig, axes)
    return _save(fig, path, tips)


def plot_time(frame, env, path):
    op = frame[frame["level"] == "op"]
    return _line_panels(
        op,
        ["fwd", "fwd_bwd", "decode"],
        "time_ms",
        "time (ms)",
        "Time vs sequence length (x: did not run there)",
        path,
        env,
    )


def plot_model(frame, env, path):
    """Model level (the identical LM, or a transformers model): time of a train step, a prefill
    and one decoded token against N, one line per variant (and model)."""
    model = frame[frame["level"] == "model"]
    if "decode_kind" in model:  # a full forward over a transformers cache is no decoder
        model = model[~((model["pass"] == "decode") & (model["decode_kind"] == "full_forward"))]
    return _line_panels(
        model,
        ["train_step", "prefill", "decode"],
        "time_ms",
        "time (ms)",
        "Inside a model: time vs sequence length",
        path,
        env,
    )


def plot_dropin(frame, env, path):
    """A trained checkpoint with each variant swapped in: bits per byte against evaluation
    length, the trained attention's own as a dashed line."""
    d = frame[
        (frame["level"] == "quality") & (frame["pass"] == "dropin") & (frame["status"] == "ok")
    ]
    if d.empty or "eval_len" not in d or d["eval_len"].isna().all():
        return None
    d = d[d["eval_len"].notna()]
    variants = list(dict.fromkeys(d["variant"]))
    style = _style(variants, dict(zip(d["variant"], d["family"])))
    tips = Tips()
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    own = d.groupby("eval_len")["trained_bpb"].first()
    ax.plot(
        own.index,
        own.values,
        color="black",
        linestyle="--",
        linewidth=1.2,
        label=f"{d.iloc[0]['trained_variant']} (trained)",
    )
    for v in variants:
        rows = d[d["variant"] == v].sort_values("eval_len")
        line = {k: s for k, s in style[v].items() if k != "marker"}
        ax.plot(rows["eval_len"], rows["bits_per_byte"], label=v, **line)
        for _, r in rows.iterrows():
            tips.add(
                ax,
                r["eval_len"],
                r["bits_per_byte"],
                f"{v}\neval length {int(r['eval_len'])}: {r['bits_per_byte']:.4f} bits per "
                f"byte ({100 * r['rel_diff']:+.3f}% vs trained)",
                color=style[v]["color"],
                marker=style[v]["marker"],
            )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("evaluation context length")
    ax.set_ylabel("bits per byte")
    ax.grid(True, which="both", alpha=0.25)
    ax.set_title(
        f"Drop-in: one checkpoint, each variant swapped in — {_title_suffix(d, env)}", fontsize=10
    )
    _legend(fig, np.array([ax]))
    return _save(fig, path, tips)


def plot_memory(frame, env, path):
    op = frame[frame["level"] == "op"]
    return _line_panels(
        op,
        ["fwd", "fwd_bwd", "decode"],
        "peak_mem_bytes",
        "peak memory (MiB)",
        "Peak memory vs sequence length",
        path,
        env,
        transform=lambda s: s / 2**20,
    )


def plot_flops(frame, env, path, ceilings: dict[str, float]):
    op = frame[(frame["level"] == "op") & (frame["pass"] != "decode")]
    if op.empty:
        return None
    dtypes = sorted(op["dtype"].dropna().unique())
    ceiling = (
        ceilings.get(dtypes[0]) / 1e9 if len(dtypes) == 1 and ceilings.get(dtypes[0]) else None
    )
    return _line_panels(
        op,
        ["fwd", "fwd_bwd"],
        "flops_per_s",
        "achieved GFLOP/s",
        "Achieved FLOP/s (attended pairs) vs sequence length",
        path,
        env,
        transform=lambda s: s / 1e9,
        ceiling=ceiling,
    )


def plot_decode(frame, env, path):
    dec = frame[(frame["level"] == "op") & (frame["pass"] == "decode")]
    if dec.empty or "cache_bytes" not in dec:
        return None
    variants = list(dict.fromkeys(dec["variant"]))
    style = _style(variants, dict(zip(dec["variant"], dec["family"])))
    fig, axes = plt.subplots(1, 2, figsize=(10.4, 4.2), squeeze=False)
    for v in variants:
        ok = dec[(dec["variant"] == v) & (dec["status"] == "ok")]
        if ok.empty:
            continue
        g = ok.groupby("seq_len")[["time_ms", "cache_bytes"]].median()
        axes[0][0].plot(g.index, g["time_ms"] * 1e3, label=v, markersize=4, **style[v])
        axes[0][1].plot(g.index, g["cache_bytes"] / 2**20, label=v, markersize=4, **style[v])
    for ax, ylabel in zip(axes[0], ["per-token latency (µs)", "cache / state (MiB)"]):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context length")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.25)
    axes[0][0].set_title("decode step latency", fontsize=10)
    axes[0][1].set_title("KV cache or recurrent state", fontsize=10)
    fig.suptitle(f"Decoding — {_title_suffix(dec, env)}", fontsize=11, y=1.02)
    _legend(fig, axes)
    return _save(fig, path)


def plot_quality(frame, env, path):
    q = frame[(frame["level"] == "quality") & (frame["pass"] == "eval")]
    if q.empty or "eval_len" not in q:
        return None
    q = q[q["eval_len"].notna()]
    variants = list(dict.fromkeys(q["variant"]))
    style = _style(variants, dict(zip(q["variant"], q["family"])))
    fig, axes = plt.subplots(1, 2, figsize=(10.4, 4.2), squeeze=False)
    ax = axes[0][0]
    for v in variants:
        ok = q[(q["variant"] == v) & (q["status"] == "ok")].sort_values("eval_len")
        if ok.empty:
            continue
        if (ok["family"] == "baseline").all():
            ax.plot(
                ok["eval_len"],
                ok["bits_per_byte"],
                color="black",
                linestyle="--",
                linewidth=1.2,
                label=f"{v} (floor)",
            )
            continue
        ax.plot(ok["eval_len"], ok["bits_per_byte"], label=v, markersize=4, **style[v])
    order0 = q["order0_bpb"].dropna()
    if not order0.empty:
        ax.axhline(order0.iloc[0], color="grey", linestyle=":", linewidth=1)
        ax.annotate(
            f"order-0 entropy {order0.iloc[0]:.2f}",
            (0.02, order0.iloc[0]),
            xycoords=("axes fraction", "data"),
            fontsize=7,
            va="bottom",
        )
    train_len = q["train_len"].dropna()
    if not train_len.empty:
        ax.axvline(train_len.iloc[0], color="grey", linewidth=0.8, alpha=0.6)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("evaluation context length (bytes)")
    ax.set_ylabel("bits per byte")
    ax.set_title("held-out bits per byte (vertical line: training length)", fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax = axes[0][1]
    longest = q["eval_len"].max()
    for v in variants:
        rows = q[(q["variant"] == v) & (q["eval_len"] == longest) & (q["status"] == "ok")]
        if rows.empty or not isinstance(rows.iloc[0].get("position_bpb"), list):
            continue
        r = rows.iloc[0]
        edges = r["position_edges"]
        mids = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
        ax.plot(mids, r["position_bpb"], label=v, markersize=4, **style[v])
    ax.set_xlabel(f"position in the window (eval length {int(longest)})")
    ax.set_ylabel("bits per byte")
    ax.set_title("loss by position", fontsize=10)
    ax.grid(True, alpha=0.25)
    ds = q["dataset"].dropna().iloc[0] if "dataset" in q else "?"
    fig.suptitle(f"Quality on {ds} — {_title_suffix(q, env)}", fontsize=11, y=1.02)
    _legend(fig, axes)
    return _save(fig, path)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower is better on both)."""
    front = []
    for i, (x, y) in enumerate(points):
        if not any(
            (x2 <= x and y2 <= y) and (x2 < x or y2 < y)
            for j, (x2, y2) in enumerate(points)
            if j != i
        ):
            front.append(i)
    return front


def plot_pareto(frame, env, path):
    """Training step time (forward + backward + optimizer at the training length) against bits per
    byte at the training length."""
    q = frame[frame["level"] == "quality"]
    trains = q[(q["pass"] == "train") & (q["status"] == "ok")]
    evals = q[(q["pass"] == "eval") & (q["status"] == "ok")]
    if trains.empty or evals.empty:
        return None
    pts, names, fams = [], [], []
    for _, t in trains.iterrows():
        e = evals[(evals["variant"] == t["variant"]) & (evals["eval_len"] == t["train_len"])]
        if e.empty or not t.get("tokens_per_s"):
            continue
        step_ms = 1e3 * t["batch"] * t["train_len"] / t["tokens_per_s"]
        pts.append((step_ms, float(e.iloc[0]["bits_per_byte"])))
        names.append(t["variant"])
        fams.append(t["family"])
    if not pts:
        return None
    front = set(pareto_front(pts))
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, ((x, y), n, f) in enumerate(zip(pts, names, fams)):
        ax.scatter(
            [x],
            [y],
            color=FAMILY_COLOURS.get(f, "#17becf"),
            s=70 if i in front else 35,
            edgecolor="black" if i in front else "none",
            zorder=3,
            label=n,
        )
        ax.annotate(n, (x, y), fontsize=7, xytext=(5, 3), textcoords="offset points")
    order = sorted(front, key=lambda i: pts[i][0])
    ax.plot(
        [pts[i][0] for i in order],
        [pts[i][1] for i in order],
        color="black",
        linewidth=1,
        alpha=0.6,
        label="Pareto front",
    )
    ngram = evals[
        (evals["family"] == "baseline") & (evals["eval_len"] == trains.iloc[0]["train_len"])
    ]
    if not ngram.empty:
        ax.axhline(ngram.iloc[0]["bits_per_byte"], color="black", linestyle="--", linewidth=1)
        ax.annotate(
            f"{ngram.iloc[0]['variant']} floor",
            (0.02, ngram.iloc[0]["bits_per_byte"]),
            xycoords=("axes fraction", "data"),
            fontsize=7,
            va="bottom",
        )
    ax.set_xlabel(
        "training step time (ms; forward + backward + AdamW, "
        f"L={int(trains.iloc[0]['train_len'])}, batch {int(trains.iloc[0]['batch'])})"
    )
    ax.set_ylabel("bits per byte at the training length")
    ax.grid(True, which="both", alpha=0.25)
    ax.set_title(
        f"Speed-quality trade-off (front outlined) — {_title_suffix(trains, env)}", fontsize=10
    )
    return _save(fig, path)


def plot_recall(frame, env, path):
    r = frame[(frame["level"] == "recall") & (frame["pass"] == "eval")]
    if r.empty:
        return None
    lens = sorted(r["seq_len"].unique())
    variants = list(dict.fromkeys(r["variant"]))
    style = _style(variants, dict(zip(r["variant"], r["family"])))
    fig, axes = plt.subplots(
        1, len(lens), figsize=(4.2 * len(lens), 3.8), squeeze=False, sharey=True
    )
    for ax, n in zip(axes[0], lens):
        for v in variants:
            ok = r[(r["variant"] == v) & (r["seq_len"] == n) & (r["status"] == "ok")].sort_values(
                "kv_pairs"
            )
            if not ok.empty:
                ax.plot(ok["kv_pairs"], ok["accuracy"], label=v, markersize=5, **style[v])
        kvs = sorted(r[r["seq_len"] == n]["kv_pairs"].unique())
        ax.plot(
            kvs,
            [1 / k for k in kvs],
            color="grey",
            linestyle=":",
            linewidth=1,
            label="guessing among the sequence's values (1/kv)",
        )
        ax.set_xscale("log", base=2)
        ax.set_xticks(kvs)
        ax.set_xticklabels([str(int(k)) for k in kvs])
        ax.set_ylim(0, 1.02)
        ax.set_title(f"N = {int(n)}", fontsize=10)
        ax.set_xlabel("key-value pairs")
        ax.grid(True, alpha=0.25)
    axes[0][0].set_ylabel("recall accuracy")
    fig.suptitle(f"Multi-query associative recall — {_title_suffix(r, env)}", fontsize=11, y=1.03)
    _legend(fig, axes)
    return _save(fig, path)


def plot_state(frame, env, path):
    """Zoology's view: recall accuracy against the state each variant keeps per layer (the KV
    cache at that N, a window's ring buffer, a linear attention's state), one point per (variant,
    setting), one line per variant across its settings."""
    r = frame[(frame["level"] == "recall") & (frame["pass"] == "eval") & (frame["status"] == "ok")]
    if r.empty or "state_bytes" not in r or r["state_bytes"].isna().all():
        return None
    kvs = sorted(r["kv_pairs"].unique())
    variants = list(dict.fromkeys(r["variant"]))
    style = _style(variants, dict(zip(r["variant"], r["family"])))
    tips = Tips()
    fig, axes = plt.subplots(1, len(kvs), figsize=(4.2 * len(kvs), 3.9), squeeze=False, sharey=True)
    for ax, kv in zip(axes[0], kvs):
        at = r[r["kv_pairs"] == kv]
        for v in variants:
            pts = at[at["variant"] == v].sort_values("state_bytes")
            if pts.empty:
                continue
            line = {k: s for k, s in style[v].items() if k != "marker"}
            ax.plot(pts["state_bytes"] / 1024, pts["accuracy"], label=v, alpha=0.7, **line)
            for _, p in pts.iterrows():
                tips.add(
                    ax,
                    p["state_bytes"] / 1024,
                    p["accuracy"],
                    f"{v}\nN = {int(p['seq_len'])}, kv = {int(kv)}: accuracy "
                    f"{p['accuracy']:.3f}, state {p['state_bytes'] / 1024:.1f} KiB",
                    color=style[v]["color"],
                    marker=style[v]["marker"],
                    s=30,
                )
        ax.axhline(1 / kv, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{int(kv)} key-value pairs (dotted: 1/kv)", fontsize=10)
        ax.set_xlabel("state per layer (KiB, batch 1, float32)")
        ax.grid(True, which="both", alpha=0.25)
    axes[0][0].set_ylabel("recall accuracy")
    fig.suptitle(
        f"Recall against the state each variant keeps — {_title_suffix(r, env)}",
        fontsize=11,
        y=1.03,
    )
    _legend(fig, axes)
    return _save(fig, path, tips)


def plot_patterns(frame, env, path, n: int = 512):
    """Which keys each query sees at N = ``n``: one panel per distinct pattern in the run (the
    full causal one once, each sliding window and sparse layout, linear attention's state)."""
    from attnbench.registry import get_variant

    picks: dict[str, tuple[str, str, Any]] = {}
    for v, fam in zip(frame["variant"], frame["family"]):
        if fam == "baseline":
            continue
        try:
            variant = get_variant(v)
        except ValueError:
            continue
        pattern = variant.pattern
        key = f"{type(pattern).__name__}:{pattern.label}" if pattern is not None else "linear"
        if key not in picks:
            picks[key] = (fam, v, pattern)
    if not picks:
        return None
    cols = min(4, len(picks))
    rows = -(-len(picks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.5 * rows), squeeze=False)
    for ax in axes.ravel()[len(picks) :]:
        ax.set_axis_off()
    causal_pairs = n * (n + 1) // 2
    for ax, (fam, spec, pattern) in zip(axes.ravel(), picks.values()):
        if pattern is not None:
            mask = pattern.dense_mask(n).numpy()
            note = f"{100 * pattern.attended_pairs(n) / causal_pairs:.0f}% of causal pairs"
            cmap = "Greys"
        else:  # linear attention: every past key, through a fixed-size state
            mask = np.tril(np.ones((n, n), dtype=bool))
            note = "all past keys, via a fixed-size state"
            cmap = "Purples"
        ax.imshow(mask, cmap=cmap, interpolation="nearest", vmin=0, vmax=1)
        name = spec if len(spec) <= 40 else spec[:38] + "…"
        ax.set_title(f"{fam}: {name}", fontsize=7, color=FAMILY_COLOURS.get(fam, "black"))
        ax.set_xlabel(f"key — {note}", fontsize=7)
        ax.set_ylabel("query", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle(f"Attention patterns at N = {n} (dark: the query sees the key)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def write_all(frame: pd.DataFrame, info: dict[str, Any], folder: str | Path) -> dict[str, Path]:
    folder = Path(folder)
    env = info.get("environment", {})
    ceilings = (
        info.get("ceilings", {}).get("matmul_flops_per_s", {}) if info.get("ceilings") else {}
    )
    jobs = {
        "time": lambda p: plot_time(frame, env, p),
        "memory": lambda p: plot_memory(frame, env, p),
        "flops": lambda p: plot_flops(frame, env, p, ceilings),
        "quality": lambda p: plot_quality(frame, env, p),
        "pareto": lambda p: plot_pareto(frame, env, p),
        "decode": lambda p: plot_decode(frame, env, p),
        "patterns": lambda p: plot_patterns(frame, env, p),
        "recall": lambda p: plot_recall(frame, env, p),
        "state": lambda p: plot_state(frame, env, p),
        "model": lambda p: plot_model(frame, env, p),
        "dropin": lambda p: plot_dropin(frame, env, p),
    }
    out = {}
    for name, job in jobs.items():
        written = job(folder / f"{name}.png")
        if written is not None:
            out[name] = written
    return out


__all__ = ["write_all", "pareto_front", "FAMILY_COLOURS"]
