"""Reports of a run folder, from the stored rows alone: ``report.md`` (renders on GitHub),
``report.html`` (the same, self-contained: images embedded, readable offline) and ``plots/*.png``.

    python run_bench.py report results/<run_id>

The report is built once as a list of blocks (headings, paragraphs, tables, images) and rendered
twice, so the Markdown and the HTML always say the same thing. Tables are pandas pivots; a case
that did not produce a number shows its status (``OOM``, ``unsupported``, ...) in its cell, and
the reasons are listed under the table, never left blank or zero.
"""

from __future__ import annotations

import base64
import html
import shlex
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from attnbench.bench import results
from attnbench.report import plots
from attnbench.report.tables import NOISY_MARK, STATUS_TEXT, pivot, render

PLOT_CAPTIONS = {
    "time": "Time against sequence length, one panel per pass (log-log); an x at the top marks where a "
            "variant did not run (out of memory, error, timeout).",
    "memory": "Peak memory of one pass beyond its inputs, against sequence length.",
    "flops": "Achieved FLOP/s on the attended pairs, with this run's measured matmul ceiling.",
    "quality": "Held-out bits per byte against evaluation context length, with the n-gram floor "
               "and the order-0 entropy; right: loss by position within the longest window.",
    "pareto": "Training step time against bits per byte at the training length; the Pareto front "
              "is outlined.",
    "decode": "Decoding one token: latency and the bytes of the KV cache or recurrent state.",
    "patterns": "Which keys each query sees, for one variant of each family.",
    "recall": "Multi-query associative recall accuracy by number of key-value pairs, per sequence length.",
}


@dataclass
class Block:
    kind: str  # h1 | h2 | h3 | p | code | table | image
    text: str = ""
    frame: pd.DataFrame | None = None
    path: Path | None = None


# ---------------------------------------------------------------------------------------------
# tables

def _reasons(frame: pd.DataFrame) -> str:
    bad = frame[frame["status"] != "ok"]
    if bad.empty:
        return ""
    seen = {}
    for _, r in bad.iterrows():
        key = (r["variant"], r["status"], str(r.get("reason") or ""))
        seen.setdefault(key, []).append(r.get("seq_len"))
    lines = []
    for (v, st, why), ns in seen.items():
        at = ", ".join(str(int(n)) for n in sorted({n for n in ns if pd.notna(n)}))
        lines.append(f"- `{v}` {STATUS_TEXT.get(st, st)}" + (f" at N = {at}" if at else "")
                     + (f": {why[:300]}" if why else ""))
    return "\n".join(lines)


# what must be equal for two rows to be compared (the crossover and "best" tables)
LIKE = ["pass", "dtype", "head_dim", "heads", "kv_heads", "batch", "causal"]


def is_exact(frame: pd.DataFrame) -> pd.Series:
    """Whether each row's variant computes full softmax attention: the row's own ``exact`` field
    (older rows without it: their math is causal softmax)."""
    math_exact = frame["math"] == "causal_softmax" if "math" in frame else \
        pd.Series(False, index=frame.index)
    if "exact" not in frame:
        return math_exact
    return frame["exact"].astype(object).where(frame["exact"].notna(), math_exact).astype(bool)


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
            op[col] = op["heads"] if col == "kv_heads" else None
    op["kv_heads"] = op["kv_heads"].fillna(op["heads"])
    for key, sub in op.groupby(LIKE, sort=False, dropna=False):
        setting = dict(zip(LIKE, key))
        p = setting["pass"]
        value = "time_ms" if metric == "time" else ("cache_bytes" if p == "decode" else "peak_mem_bytes")
        if value not in sub:
            continue
        sub = sub[sub[value].notna()]
        exact = sub[sub["_exact"]]
        if exact.empty:
            continue
        best = exact.groupby("seq_len")[value].min()
        for v in dict.fromkeys(sub.loc[~sub["_exact"], "variant"]):
            mine = sub[sub["variant"] == v].groupby("seq_len")[value].median()  # over repeats only
            ns = [n for n in mine.index if n in best.index]
            wins = [mine[n] < best[n] for n in ns]
            start = next((ns[i] for i in range(len(ns)) if all(wins[i:])), None)
            rows.append({"pass": p, "dtype": setting["dtype"], "D": setting["head_dim"],
                         "H/KV": f"{setting['heads']}/{int(setting['kv_heads'])}",
                         "B": setting["batch"], "variant": v, "measure": value,
                         "from N": "–" if start is None else str(int(start)),
                         "ratio at largest N": (f"{best[ns[-1]] / mine[ns[-1]]:.2f}×"
                                                if ns and mine[ns[-1]] > 0 else "–")})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# the document

def build(run_dir: Path, frame: pd.DataFrame, info: dict[str, Any], plot_paths: dict[str, Path]) -> list[Block]:
    suite = info.get("suite", {})
    blocks = [Block("h1", f"attnbench report: {info.get('run_id', run_dir.name)}")]
    counts = frame["status"].value_counts().to_dict() if not frame.empty else {}
    blocks.append(Block("p", f"Suite **{suite.get('name', '?')}** ({suite.get('description', '')}); "
                             f"{len(frame)} rows: " + ", ".join(f"{k} {v}" for k, v in counts.items())
                             + f". Started {info.get('started', '?')}, finished {info.get('finished', 'not yet')}."))
    timed = frame[frame["level"].isin(["op", "model"])] if not frame.empty else frame
    if not timed.empty and "gated" in timed and (timed["gated"] == False).any():  # noqa: E712
        blocks.append(Block("p", "**Not gated**: this run was measured with `--no-gate`; its "
                                 "timings were not checked against the float64 reference."))
    drift = (info.get("ceilings") or {}).get("drift") or {}
    if drift:
        blocks.append(Block("p", "Ceiling drift over the run (end / start − 1): " + ", ".join(
            f"{k} {v:+.1%}" for k, v in drift.items())
            + (" — **the machine changed speed while measuring**" if any(abs(v) > 0.1 for v in drift.values()) else "")
            + "."))
    blocks.append(Block("h2", "Environment"))
    blocks.append(Block("table", frame=_environment_table(info)))
    blocks.append(Block("h2", "Reproduce"))
    blocks.append(Block("code", _reproduce(info)))
    op = frame[frame["level"] == "op"] if not frame.empty else frame
    if not op.empty:
        blocks.append(Block("h2", "Attention alone (op level)"))
        shape = op.iloc[0]
        blocks.append(Block("p", f"B = {shape['batch']}, H = {shape['heads']}, causal; cells: "
                                 "median time in ms (p20–p80 in results.jsonl); other cells are "
                                 "statuses, explained below each table."))
        op = op.assign(kv_heads=op["kv_heads"].fillna(op["heads"]) if "kv_heads" in op else op["heads"])
        for (p, dtype, d, h, kv, causal), sub in op.groupby(
                ["pass", "dtype", "head_dim", "heads", "kv_heads", "causal"], sort=False):
            setting = f"{dtype}, head dim {d}, {h} heads" + (f" ({int(kv)} kv heads)" if kv != h else "") \
                + ("" if causal else ", non-causal")
            blocks.append(Block("h3", f"{plots.PASS_TITLES.get(p, p)}: time (ms), {setting}"))
            if p == "decode" and "decoder" in sub:  # each variant decodes with its own kernel
                sub = sub.assign(variant=[f"{v} ({d})" if isinstance(d, str) else v
                                          for v, d in zip(sub["variant"], sub["decoder"])])
            blocks.append(Block("table", frame=pivot(sub, "seq_len", "time_ms", ".3f", mark_noisy=True)))
            if "noisy" in sub and (sub["noisy"] == True).any():  # noqa: E712
                blocks.append(Block("p", f"{NOISY_MARK} noisy: the p20–p80 spread of its repetitions "
                                         "exceeds 10% of the median."))
            if p != "decode":
                blocks.append(Block("p", "Fraction of the measured matmul ceiling:"))
                blocks.append(Block("table", frame=pivot(sub, "seq_len", "frac_of_ceiling", ".1%")))
            blocks.append(Block("p", "Peak memory (MiB):"))
            blocks.append(Block("table", frame=_mib(sub)))
            reasons = _reasons(sub)
            if reasons:
                blocks.append(Block("p", reasons))
        for metric, what in (("time", "time"), ("memory", "memory")):
            table = crossover(frame, metric)
            if not table.empty:
                blocks.append(Block("h3", f"Crossover by {what}"))
                blocks.append(Block("p", f"The sequence length from which each efficient variant beats the "
                                         f"best exact variant's {what} at every larger measured N "
                                         "(– : not within the measured range); the ratio is the best "
                                         "exact variant's over this one's at the largest N (above 1: "
                                         "this one is ahead). Memory is the peak beyond the inputs, "
                                         "and for decode the bytes of the cache or state."))
                blocks.append(Block("table", frame=table.set_index(["pass", "variant"])))
    model = frame[frame["level"] == "model"] if not frame.empty else frame
    if not model.empty:
        blocks.append(Block("h2", f"The identical model ({model.iloc[0].get('preset', '?')} preset)"))
        for p, sub in model.groupby("pass", sort=False):
            blocks.append(Block("h3", f"{plots.PASS_TITLES.get(p, p)}: time (ms), batch {sub.iloc[0]['batch']}"))
            blocks.append(Block("table", frame=pivot(sub, "seq_len", "time_ms", ".3f")))
            reasons = _reasons(sub)
            if reasons:
                blocks.append(Block("p", reasons))
    blocks += _quality_blocks(frame, info)
    if plot_paths:
        blocks.append(Block("h2", "Plots"))
        for name, path in plot_paths.items():
            blocks.append(Block("p", PLOT_CAPTIONS.get(name, name)))
            blocks.append(Block("image", path=path, text=name))
    return blocks


def _mib(sub: pd.DataFrame) -> pd.DataFrame:
    sub = sub.copy()
    sub["_mib"] = sub["peak_mem_bytes"].astype(float) / 2**20
    return pivot(sub, "seq_len", "_mib", ".1f")


def _quality_blocks(frame: pd.DataFrame, info: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = []
    if frame.empty:
        return blocks
    q = frame[frame["level"] == "quality"]
    evals = q[(q["pass"] == "eval")] if not q.empty else q
    if not evals.empty and "eval_len" in evals:
        evals = evals[evals["eval_len"].notna()]
        first = evals.iloc[0]
        ds = info.get("datasets", {}).get(first["dataset"], {})
        blocks.append(Block("h2", f"Quality on {first['dataset']}"))
        blocks.append(Block("p", (
            f"The {first['preset']} model trained per variant on the same budget ({first['budget']}, "
            f"sequences of {int(first['train_len'])} bytes, batch {int(first['batch'])}, seed "
            f"{int(first['seed'])}); bits per byte on the {first.get('eval_split', 'val')} split, "
            f"method `{first.get('eval_method', 'windows')}`, at each evaluation length (columns). "
            f"Corpus sha256 `{ds.get('sha256', '?')[:16]}…`"
            + (f", Python {ds['python']}" if ds.get("python") else "")
            + (f"; order-0 entropy {first['order0_bpb']:.3f} bits per byte." if pd.notna(first.get("order0_bpb")) else "."))))
        blocks.append(Block("table", frame=pivot(evals, "eval_len", "bits_per_byte", ".4f")))
        reasons = _reasons(q[q["pass"].isin(["train", "eval"])])
        if reasons:
            blocks.append(Block("p", reasons))
        trains = q[q["pass"] == "train"]
        if not trains.empty:
            t = trains[["variant", "status", "train_steps", "tokens_trained", "tokens_per_s", "train_s",
                        "final_train_bpb"]].copy()
            t["tokens_per_s"] = t["tokens_per_s"].map(lambda x: f"{x:,.0f}" if pd.notna(x) else "–")
            t["final_train_bpb"] = t["final_train_bpb"].map(lambda x: f"{x:.4f}" if pd.notna(x) else "–")
            blocks.append(Block("h3", "Training"))
            blocks.append(Block("table", frame=t.set_index("variant")))
    dropin = q[(q["pass"] == "dropin")] if not q.empty else q
    if not dropin.empty and "eval_len" in dropin:
        d = dropin[dropin["eval_len"].notna()]
        if not d.empty:
            blocks.append(Block("h3", f"Drop-in: the {d.iloc[0]['trained_variant']} checkpoint with each variant"))
            blocks.append(Block("p", "Bits per byte, then the relative difference to the trained "
                                     "variant (exact variants and windows at least as wide as the "
                                     "evaluation length must be below 1e-4)."))
            blocks.append(Block("table", frame=pivot(d, "eval_len", "bits_per_byte", ".4f")))
            blocks.append(Block("p", "Relative difference to the trained variant's own bits "
                                     "per byte (+: worse, −: better):"))
            blocks.append(Block("table", frame=pivot(d, "eval_len", "rel_diff", "+.1e")))
    rec = frame[(frame["level"] == "recall") & (frame["pass"] == "eval")]
    if not rec.empty:
        rec = rec.copy()
        rec["setting"] = [f"N{int(n)} kv{int(k)}" for n, k in zip(rec["seq_len"], rec["kv_pairs"])]
        blocks.append(Block("h2", "Recall (MQAR)"))
        blocks.append(Block("p", "Accuracy of the value predicted at each query key, on fresh sequences "
                                 "(N: sequence length, kv: key-value pairs)."))
        table = pivot(rec, "setting", "accuracy", ".3f")
        keys = sorted(table.columns, key=lambda s: tuple(int(x[2:] if x.startswith("kv") else x[1:])
                                                         for x in s.split()))
        blocks.append(Block("table", frame=table[keys]))
    return blocks


def _environment_table(info: dict[str, Any]) -> pd.DataFrame:
    env = info.get("environment", {})
    ceil = info.get("ceilings") or {}
    rows = {
        "device": f"{env.get('device', '?')}: {env.get('device_name', '?')}",
        "python / platform": f"{env.get('python', '?')} / {env.get('platform', '?')}",
        "packages": ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items() if v),
        "threads": f"worker {env.get('worker_threads', '?')}, CPUs {env.get('cpu_count', '?')}",
        "git": f"{env.get('git_commit', '?')}" + (" (dirty)" if env.get("git_dirty") else ""),
    }
    end = ceil.get("end") or {}
    for dtype, value in (ceil.get("matmul_flops_per_s") or {}).items():
        after = (end.get("matmul_flops_per_s") or {}).get(dtype)
        rows[f"matmul ceiling, {dtype}"] = f"{value / 1e9:.1f} GFLOP/s" + (
            f" at the start, {after / 1e9:.1f} at the end" if after else "")
    if ceil.get("copy_bytes_per_s"):
        rows["copy bandwidth"] = f"{ceil['copy_bytes_per_s'] / 1e9:.1f} GB/s"
    if env.get("timing_env"):
        rows["timing environment"] = ", ".join(f"{k}={v}" for k, v in env["timing_env"].items())
    if env.get("hostname"):
        rows["host"] = env["hostname"]
    if env.get("cuda"):
        rows["CUDA / driver"] = f"{env.get('cuda')} / {env.get('driver')}"
    if info.get("distributed"):
        rows["distributed"] = str(info["distributed"])
    return pd.DataFrame({"value": rows}).rename_axis("what")


def _reproduce(info: dict[str, Any]) -> str:
    cmd = info.get("command") or ["run_bench.py"]
    args = list(cmd[1:]) if cmd and cmd[0].endswith(("run_bench.py", "attnbench")) else list(cmd)
    commit = (info.get("environment") or {}).get("git_commit")
    line = "python run_bench.py " + " ".join(shlex.quote(str(a)) for a in args)
    return (f"git checkout {commit}\n" if commit else "") + line


# ---------------------------------------------------------------------------------------------
# renderers

def to_markdown(blocks: list[Block], run_dir: Path) -> str:
    out = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append("#" * int(b.kind[1]) + " " + b.text)
        elif b.kind == "p":
            out.append(b.text)
        elif b.kind == "code":
            out.append("```bash\n" + b.text + "\n```")
        elif b.kind == "table":
            out.append(render(b.frame.map(lambda s: str(s).replace("|", "\\|")), "github"))
        elif b.kind == "image":
            out.append(f"![{b.text}]({b.path.relative_to(run_dir).as_posix()})")
    return "\n\n".join(out) + "\n"


def _inline_md(text: str) -> str:
    """The little Markdown our paragraphs use (`code`, **bold**, list items) as HTML."""
    import re

    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)
    lines = text.split("\n")
    if all(line.startswith("- ") for line in lines):
        return "<ul>" + "".join(f"<li>{line[2:]}</li>" for line in lines) + "</ul>"
    return "<p>" + "<br>".join(lines) + "</p>"


def to_html(blocks: list[Block]) -> str:
    body = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            body.append(f"<{b.kind}>{html.escape(b.text)}</{b.kind}>")
        elif b.kind == "p":
            body.append(_inline_md(b.text))
        elif b.kind == "code":
            body.append(f"<pre><code>{html.escape(b.text)}</code></pre>")
        elif b.kind == "table":
            body.append(b.frame.to_html(escape=True, border=0, classes="t"))
        elif b.kind == "image":
            data = base64.b64encode(b.path.read_bytes()).decode()
            body.append(f'<img alt="{html.escape(b.text)}" src="data:image/png;base64,{data}">')
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;"
             "color:#222}table.t{border-collapse:collapse;font-size:13px;margin:.5em 0}"
             "table.t td,table.t th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}"
             "table.t th:first-child,table.t td:first-child{text-align:left}"
             "img{max-width:100%;margin:.5em 0}pre{background:#f6f6f6;padding:.6em;overflow:auto}"
             "code{font-size:12px}")
    title = html.escape(blocks[0].text if blocks else "attnbench report")
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(run_dir: str | Path) -> dict[str, Path]:
    """(Re)write report.md, report.html and plots/*.png of ``run_dir``; returns their paths."""
    run_dir = Path(run_dir)
    info = results.read_run_json(run_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a torn last line is reported by the caller, once
        frame = results.load(run_dir)
    plot_paths = plots.write_all(frame, info, run_dir / "plots") if not frame.empty else {}
    blocks = build(run_dir, frame, info, plot_paths)
    md = run_dir / "report.md"
    md.write_text(to_markdown(blocks, run_dir))
    page = run_dir / "report.html"
    page.write_text(to_html(blocks))
    return {"markdown": md, "html": page, **{f"plot:{k}": v for k, v in plot_paths.items()}}
