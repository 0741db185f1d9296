"""Reports of a run folder, from the stored rows alone: ``report.md`` (renders on GitHub),
``report.html`` (the same, self-contained) and ``plots/*.png`` / ``*.svg``.

    python run_bench.py report runs/<run_id>        # write_report(run_dir)

The report is built once as a list of blocks (headings, paragraphs, tables, images) and rendered
twice, so the Markdown and the HTML always say the same thing. A case that did not produce a
number shows its status (``OOM``, ``unsupported``, ...) in its cell, with the reasons under the
table, never blank or zero. What it contains, top-down: ``docs/reports.md``.
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
from attnbench.report import calibration, plots, targets
from attnbench.report.summary import (
    RECALLED,
    anchor,
    best_lr,
    best_per_n,
    crossover,
    problems,
    quality_cost,
    recall_frontier,
    recall_verdict,
)
from attnbench.report.tables import NOISY_MARK, STATUS_TEXT, pivot, render

PLOT_CAPTIONS = {
    "time": "Time against sequence length, one panel per pass (log-log); an x at the top marks "
    "where a variant did not run (out of memory, error, timeout).",
    "memory": "Peak memory of one pass beyond its inputs, against sequence length.",
    "flops": "Achieved FLOP/s on the attended pairs, with this run's measured matmul ceiling.",
    "quality": "Held-out bits per byte against evaluation context length, with the n-gram floor "
    "and the order-0 entropy; right: loss by position within the longest window.",
    "pareto": "Training step time against bits per byte at the training length; the Pareto front "
    "is outlined.",
    "decode": "Decoding one token: latency and the bytes of the KV cache or recurrent state.",
    "patterns": "Which keys each query sees, for one variant of each family.",
    "recall": "Multi-query associative recall accuracy by number of key-value pairs, "
    "per sequence length.",
    "state": "Recall accuracy against the state each variant keeps per layer (Zoology's view): one "
    "point per (variant, setting).",
    "model": "Inside a model (the identical LM or a transformers model): train step, prefill and "
    "one decoded token against sequence length.",
    "dropin": "One trained checkpoint evaluated with each variant swapped in: bits per byte "
    "against evaluation length; dashed: the attention it was trained with.",
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
        lines.append(
            f"- `{v}` {STATUS_TEXT.get(st, st)}"
            + (f" at N = {at}" if at else "")
            + (f": {why[:300]}" if why else "")
        )
    return "\n".join(lines)


def _ceiling_note(sub: pd.DataFrame) -> str:
    """Which ceiling the fractions divide by: the row dtype's own matmul, or float32's where that
    is faster (a half dtype computed in float32)."""
    if "ceiling_dtype" not in sub or sub["ceiling_dtype"].isna().all():
        return ""
    parts = []
    for (dt, cd), g in sub.groupby(["dtype", "ceiling_dtype"]):
        rate = g["ceiling_flops_per_s"].dropna()
        span = (
            f"{rate.min() / 1e9:.0f}-{rate.max() / 1e9:.0f}"
            if len(rate) and rate.max() > rate.min() * 1.005
            else f"{rate.iloc[0] / 1e9:.0f}"
            if len(rate)
            else ""
        )
        parts.append(f"{dt} rows by the {cd} matmul" + (f" ({span} GFLOP/s)" if span else ""))
    age = sub["ceiling_age_s"].dropna() if "ceiling_age_s" in sub else []
    nearest = (
        f"; each row by the measurement nearest before it, at most {age.max():.0f} s old"
        if len(age)
        else ""
    )
    rate = sub["machine_rate"].dropna() if "machine_rate" in sub else []
    if len(rate):
        nearest += (
            ", scaled to the machine's speed while the row was timed (a rate probe between its "
            f"repetitions: {rate.min():.2f}-{rate.max():.2f}x its speed at that measurement)"
        )
    return " (" + "; ".join(parts) + nearest + ")"


# ---------------------------------------------------------------------------------------------
# the document


def build(
    run_dir: Path, frame: pd.DataFrame, info: dict[str, Any], plot_paths: dict[str, Path]
) -> list[Block]:
    """The report, top-down: what was run, the findings, then the tables and plots behind them,
    then the environment and the command that reproduces it."""
    suite = info.get("suite", {})
    blocks = [Block("h1", f"attnbench report: {info.get('run_id', run_dir.name)}")]
    counts = frame["status"].value_counts().to_dict() if not frame.empty else {}
    blocks.append(
        Block(
            "p",
            f"Suite **{suite.get('name', '?')}** "
            f"({suite.get('description', '')}); {len(frame)} rows: "
            + ", ".join(f"{k} {v}" for k, v in counts.items())
            + f". Started {info.get('started', '?')}, "
            f"finished {info.get('finished', 'not yet')}.",
        )
    )
    blocks += _calibration_blocks(frame, info)  # a calibration suite's first table
    frame, grid = best_lr(frame)  # with a learning-rate grid, each variant at its best rate
    if grid is not None:
        blocks.append(Block("h2", "Learning-rate grid"))
        blocks.append(
            Block(
                "p",
                "Each variant trained at each rate on the same budget (held-out bits per byte "
                "at the training length; recall: mean accuracy). ✓: the rate each variant is "
                "reported at below, chosen per variant and seed on the split the report scores.",
            )
        )
        blocks.append(Block("table", frame=grid))
    timed = frame[frame["level"].isin(["op", "model"])] if not frame.empty else frame
    if not timed.empty and "gated" in timed and (timed["gated"] == False).any():  # noqa: E712
        blocks.append(
            Block(
                "p",
                "**Not gated**: this run was measured with `--no-gate`; its "
                "timings were not checked against the float64 reference.",
            )
        )
    drift = (info.get("ceilings") or {}).get("drift") or {}
    if drift:
        blocks.append(
            Block(
                "p",
                "Ceiling drift over the run (end / start − 1): "
                + ", ".join(f"{k} {v:+.1%}" for k, v in drift.items())
                + (
                    " — **the machine changed speed while measuring**"
                    if any(abs(v) > 0.1 for v in drift.values())
                    else ""
                )
                + ".",
            )
        )
    blocks += _summary_blocks(frame)
    blocks += _target_blocks(frame, info)
    blocks += _op_blocks(frame)
    blocks += _model_blocks(frame)
    blocks += _quality_blocks(frame, info)
    if plot_paths:
        blocks.append(Block("h2", "Plots"))
        for name, path in plot_paths.items():
            blocks.append(Block("p", PLOT_CAPTIONS.get(name, name)))
            blocks.append(Block("image", path=path, text=name))
    blocks.append(Block("h2", "Environment"))
    blocks.append(Block("table", frame=_environment_table(info)))
    blocks.append(Block("h2", "Reproduce"))
    blocks.append(Block("code", _reproduce(info)))
    return blocks


def _link(text: str, heading: str) -> str:
    return f"[{text}](#{anchor(heading)})"


def _summary_blocks(frame: pd.DataFrame) -> list[Block]:
    blocks = [Block("h2", "Summary")]
    lines = []
    bests = best_per_n(frame)
    if bests:
        lines.append(
            "- "
            + _link("Fastest and leanest at each N", "Fastest and leanest")
            + " per pass and setting, below."
        )
    for metric in ("time", "memory"):
        table = crossover(frame, metric)
        if not table.empty:
            ahead = table[table["from N"] != "–"]
            names = ", ".join(
                f"`{r['variant']}` ({r['pass']}, from N = {r['from N']})"
                for _, r in ahead.head(6).iterrows()
            )
            lines.append(
                f"- By {metric}, {len(ahead)} of {len(table)} efficient (variant, "
                "setting) pairs overtake the best exact variant of their setting"
                + (f": {names}" + (" …" if len(ahead) > 6 else "") if names else "")
                + f" ({_link('crossover table', f'Crossover by {metric}')})."
            )
    cost = quality_cost(frame)
    if cost is not None:
        lines.append(
            "- Quality cost against full attention: " + _link("table", "Quality cost") + "."
        )
    verdict = recall_verdict(frame)
    if verdict:
        lines.append(f"- Recall: {verdict} ({_link('table', 'Recall (MQAR)')})")
    for problem in problems(frame):
        lines.append(f"- {problem}.")
    if lines:
        blocks.append(Block("p", "\n".join(lines)))
    if bests:
        blocks.append(Block("h3", "Fastest and leanest"))
        blocks.append(
            Block(
                "p",
                "At each N of each setting: the fastest variant (median time) "
                "and how far the next is behind, and the variant with the least "
                "memory (peak beyond the inputs; for decode, the cache or "
                "state).",
            )
        )
        for label, table in bests:
            blocks.append(Block("p", f"**{label}**"))
            blocks.append(Block("table", frame=table))
    if cost is not None:
        blocks.append(Block("h3", "Quality cost"))
        blocks.append(
            Block(
                "p",
                "Held-out bits per byte at the training length, mean over seeds, "
                "against the exact variant, with the two-sided 95 % interval of the "
                "difference (seeds paired: the same initial weights and data order; "
                "Student's t on the seeds' standard error); a difference is a finding only "
                "when its interval excludes 0. Drop-in: the exact variant's checkpoint "
                "evaluated with this variant swapped in (+: worse).",
            )
        )
        blocks.append(Block("table", frame=cost))
    return blocks if len(blocks) > 1 else []


def _calibration_blocks(frame: pd.DataFrame, info: dict[str, Any]) -> list[Block]:
    """Published results against ours (``attnbench/report/calibrations.toml``), for a run of
    their suite: the report's first table."""
    verdicts = calibration.for_run(frame, info) if not frame.empty else []
    if not verdicts:
        return []
    held = sum(v.within is True for v in verdicts)
    return [
        Block("h2", "Calibration against published results"),
        Block(
            "p",
            f"{held} of {len(verdicts)} published results reproduced: figures within the "
            "tolerance stated in advance, orderings that hold "
            "(attnbench/report/calibrations.toml).",
        ),
        Block("table", frame=calibration.table(verdicts)),
    ]


def _target_blocks(frame: pd.DataFrame, info: dict[str, Any]) -> list[Block]:
    """The suite's performance targets (``attnbench/report/perf_targets.toml``), judged from the
    rows; nothing for a suite without targets."""
    verdicts = targets.for_run(frame, info) if not frame.empty else []
    if not verdicts:
        return []
    return [
        Block("h2", "Performance targets"),
        Block("p", targets.headline(verdicts)),
        Block("table", frame=targets.table(verdicts)),
    ]


def _op_blocks(frame: pd.DataFrame) -> list[Block]:
    blocks: list[Block] = []
    op = frame[frame["level"] == "op"] if not frame.empty else frame
    if op.empty:
        return blocks
    blocks.append(Block("h2", "Attention alone (op level)"))
    blocks.append(
        Block(
            "p",
            "Cells: median time in ms (p20–p80 in results.jsonl; † noisy); "
            "other cells are statuses, explained below each table.",
        )
    )
    for (p, dtype, d, h, kv, causal, b), sub in op.groupby(
        ["pass", "dtype", "head_dim", "heads", "kv_heads", "causal", "batch"], sort=False
    ):
        setting = (
            f"{dtype}, head dim {d}, {h} heads"
            + (f" ({int(kv)} kv heads)" if kv != h else "")
            + f", batch {b}"
            + ("" if causal else ", non-causal")
        )
        blocks.append(Block("h3", f"{plots.PASS_TITLES.get(p, p)}: time (ms), {setting}"))
        if p == "decode" and "decoder" in sub:  # each variant decodes with its own kernel
            sub = sub.assign(
                variant=[
                    f"{v} ({dec})" if isinstance(dec, str) else v
                    for v, dec in zip(sub["variant"], sub["decoder"])
                ]
            )
        blocks.append(
            Block("table", frame=pivot(sub, "seq_len", "time_ms", ".3f", mark_noisy=True))
        )
        if "noisy" in sub and (sub["noisy"] == True).any():  # noqa: E712
            blocks.append(
                Block(
                    "p",
                    f"{NOISY_MARK} noisy: the p20–p80 spread of its repetitions "
                    "exceeds 10% of the median.",
                )
            )
        if p != "decode":
            blocks.append(
                Block("p", "Fraction of the measured matmul ceiling" + _ceiling_note(sub) + ":")
            )
            blocks.append(Block("table", frame=pivot(sub, "seq_len", "frac_of_ceiling", ".1%")))
            if "frac_of_peak" in sub and sub["frac_of_peak"].notna().any():
                blocks.append(Block("p", "Fraction of the device's published dense peak:"))
                blocks.append(Block("table", frame=pivot(sub, "seq_len", "frac_of_peak", ".1%")))
        elif "bytes_per_s" in sub and sub["bytes_per_s"].notna().any():
            sub = sub.assign(_gbs=sub["bytes_per_s"].astype(float) / 1e9)
            blocks.append(
                Block(
                    "p",
                    "Cache or state read per step, GB/s (fraction of the measured "
                    "copy bandwidth in results.jsonl):",
                )
            )
            blocks.append(Block("table", frame=pivot(sub, "seq_len", "_gbs", ".2f")))
        blocks.append(Block("p", "Peak memory (MiB):"))
        blocks.append(Block("table", frame=_mib(sub)))
        reasons = _reasons(sub)
        if reasons:
            blocks.append(Block("p", reasons))
    for metric, what in (("time", "time"), ("memory", "memory")):
        table = crossover(frame, metric)
        if not table.empty:
            blocks.append(Block("h3", f"Crossover by {what}"))
            blocks.append(
                Block(
                    "p",
                    f"The sequence length from which each efficient variant beats "
                    f"the best exact variant's {what} of the same setting at "
                    "every larger measured N (– : not within the measured range); "
                    "the ratio is the best exact variant's over this one's at the "
                    "largest N (above 1: this one is ahead). Memory is the peak "
                    "beyond the inputs, and for decode the bytes of the cache or "
                    "state.",
                )
            )
            blocks.append(Block("table", frame=table.set_index(["pass", "variant"])))
    return blocks


def _model_blocks(frame: pd.DataFrame) -> list[Block]:
    blocks: list[Block] = []
    model = frame[frame["level"] == "model"] if not frame.empty else frame
    if model.empty:
        return blocks
    for preset, by_model in model.groupby("preset", sort=False):
        title = (
            f"A transformers model ({preset[3:]})"
            if str(preset).startswith("hf:")
            else f"The identical model ({preset} preset)"
        )
        blocks.append(Block("h2", title))
        for p, sub in by_model.groupby("pass", sort=False):
            blocks.append(
                Block(
                    "h3",
                    f"{title}: {plots.PASS_TITLES.get(p, p)}, time (ms), "
                    f"batch {sub.iloc[0]['batch']}",
                )
            )
            blocks.append(
                Block("table", frame=pivot(sub, "seq_len", "time_ms", ".3f", mark_noisy=True))
            )
            reasons = _reasons(sub)
            if reasons:
                blocks.append(Block("p", reasons))
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
        seeds = sorted({int(s) for s in evals["seed"].dropna()}) if "seed" in evals else [0]
        blocks.append(Block("h2", f"Quality on {first['dataset']}"))
        blocks.append(
            Block(
                "p",
                (
                    f"The {first['preset']} model trained per variant on the same budget "
                    f"({first['budget']}, sequences of {int(first['train_len'])} bytes, "
                    f"batch {int(first['batch'])}, "
                    + (
                        f"seeds {', '.join(map(str, seeds))}: mean ± half the spread between seeds"
                        if len(seeds) > 1
                        else f"one seed ({seeds[0]}): differences smaller than the seed-to-seed "
                        "spread, unknown here, would not be findings"
                    )
                    + f"); bits per byte on the {first.get('eval_split', 'val')} split, "
                    f"method `{first.get('eval_method', 'windows')}`, "
                    "at each evaluation length (columns). "
                    f"Corpus sha256 `{ds.get('sha256', '?')[:16]}…`"
                    + (f", Python {ds['python']}" if ds.get("python") else "")
                    + (
                        f"; order-0 entropy {first['order0_bpb']:.3f} bits per byte."
                        if pd.notna(first.get("order0_bpb"))
                        else "."
                    )
                ),
            )
        )
        blocks.append(Block("table", frame=_mean_spread(evals, "eval_len", "bits_per_byte")))
        reasons = _reasons(q[q["pass"].isin(["train", "eval"])])
        if reasons:
            blocks.append(Block("p", reasons))
        trains = q[q["pass"] == "train"]
        if not trains.empty:
            t = trains[
                [
                    "variant",
                    "seed",
                    "status",
                    "train_steps",
                    "tokens_trained",
                    "tokens_per_s",
                    "train_s",
                    "final_train_bpb",
                ]
            ].copy()
            t["tokens_per_s"] = t["tokens_per_s"].map(lambda x: f"{x:,.0f}" if pd.notna(x) else "–")
            t["final_train_bpb"] = t["final_train_bpb"].map(
                lambda x: f"{x:.4f}" if pd.notna(x) else "–"
            )
            blocks.append(Block("h3", "Training"))
            blocks.append(Block("table", frame=t.set_index("variant")))
    copies = q[q["pass"] == "copy"] if not q.empty else q
    if not copies.empty and "copy_bpb" in copies:
        blocks.append(Block("h3", "In-context copy"))
        blocks.append(
            Block(
                "p",
                "Each trained model reads random printable bytes of length L "
                "(columns) twice; bits per byte on the second copy. A model that "
                "can look back L bytes copies it (near 0); the first copy is "
                f"unpredictable (about {copies['first_copy_bpb'].mean():.1f} "
                "here). A window narrower than L, or a state that blurs the past, "
                "pays the difference.",
            )
        )
        blocks.append(Block("table", frame=_mean_spread(copies, "copy_len", "copy_bpb")))
    dropin = q[(q["pass"] == "dropin")] if not q.empty else q
    if not dropin.empty and "eval_len" in dropin:
        d = dropin[dropin["eval_len"].notna()]
        if not d.empty:
            unit = (
                "token (the model's tokenizer) and per byte"
                if "unit" in d and (d["unit"] == "token").any()
                else "byte"
            )
            blocks.append(
                Block(
                    "h3",
                    f"Drop-in: the {d.iloc[0]['trained_variant']} checkpoint with each variant",
                )
            )
            blocks.append(
                Block(
                    "p",
                    f"Bits per {unit}, then the relative difference to the "
                    "trained variant (exact variants and windows at least as wide "
                    "as the evaluation length must be within 1e-4).",
                )
            )
            blocks.append(Block("table", frame=pivot(d, "eval_len", "bits_per_byte", ".4f")))
            if "bits_per_token" in d and d["bits_per_token"].notna().any():
                blocks.append(Block("p", "Bits per token:"))
                blocks.append(Block("table", frame=pivot(d, "eval_len", "bits_per_token", ".4f")))
            blocks.append(
                Block(
                    "p",
                    "Relative difference to the trained variant's own bits "
                    "per byte (+: worse, −: better):",
                )
            )
            blocks.append(Block("table", frame=pivot(d, "eval_len", "rel_diff", "+.1e")))
    rec = frame[(frame["level"] == "recall") & (frame["pass"] == "eval")]
    if not rec.empty:
        rec = rec.copy()
        rec["setting"] = [f"N{int(n)} kv{int(k)}" for n, k in zip(rec["seq_len"], rec["kv_pairs"])]
        blocks.append(Block("h2", "Recall (MQAR)"))
        first = frame[(frame["level"] == "recall")].iloc[0]
        blocks.append(
            Block(
                "p",
                "Accuracy of the value predicted at each query key, on fresh "
                "sequences (N: sequence length, kv: key-value pairs), after "
                f"{int(first.get('train_steps') or 0)} steps of the "
                f"`{first['preset']}` recipe (the same for every variant: a "
                "width-3 short convolution before attention does the copying "
                "step, so a 2-layer model learns the task at CPU scale). ≈chance: "
                "below 1.5 × 1/kv, the accuracy of guessing among the values in "
                "the sequence.",
            )
        )
        verdict = recall_verdict(frame)
        if verdict:
            blocks.append(Block("p", verdict))
        table = pivot(rec, "setting", "accuracy", ".3f", marks={"near_chance": " ≈chance"})
        keys = sorted(
            table.columns,
            key=lambda s: tuple(int(x[2:] if x.startswith("kv") else x[1:]) for x in s.split()),
        )
        blocks.append(Block("table", frame=table[keys]))
        if "state_bytes" in rec:
            blocks.append(
                Block(
                    "p",
                    "State each variant keeps per layer to continue a sequence "
                    "(KiB; batch 1, float32): the KV cache, a window's ring "
                    "buffer, a linear attention's state.",
                )
            )
            rec = rec.assign(_kib=rec["state_bytes"].astype(float) / 1024, status="ok")
            blocks.append(
                Block(
                    "table",
                    frame=pivot(
                        rec.drop_duplicates(["variant", "seq_len"]), "seq_len", "_kib", ".1f"
                    ),
                )
            )
            frontier = recall_frontier(frame)
            if frontier is not None:
                blocks.append(
                    Block(
                        "p",
                        "Recall against state (Zoology's summary number): per math, the "
                        f"smallest state that recalls at ≥ {RECALLED} on every setting.",
                    )
                )
                blocks.append(Block("table", frame=frontier))
    return blocks


def _mean_spread(frame: pd.DataFrame, col: str, value: str) -> pd.DataFrame:
    """variant x ``col`` of ``value``: the mean over seeds, "± half the spread" with several."""
    ok = frame[frame["status"] == "ok"]
    failed = frame[frame["status"] != "ok"]
    stats = ok.groupby(["variant", col], sort=False)[value].agg(["mean", "min", "max", "count"])
    cells = {}
    for (v, c), s in stats.iterrows():
        spread = f" ± {(s['max'] - s['min']) / 2:.4f}" if s["count"] > 1 else ""
        cells[(v, c)] = f"{s['mean']:.4f}{spread}"
    for _, r in failed.iterrows():
        cells.setdefault((r["variant"], r[col]), STATUS_TEXT.get(r["status"], r["status"]))
    out = pd.Series(cells).unstack()
    out = out.reindex(list(dict.fromkeys(frame["variant"])))
    out.columns = [str(int(c)) for c in out.columns]
    out.index.name = "variant"
    return out.fillna("–")


def _environment_table(info: dict[str, Any]) -> pd.DataFrame:
    env = info.get("environment", {})
    ceil = info.get("ceilings") or {}
    rows = {
        "device": f"{env.get('device', '?')}: {env.get('device_name', '?')}",
        "python / platform": f"{env.get('python', '?')} / {env.get('platform', '?')}",
        "packages": ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items() if v),
        "threads": f"worker {env.get('worker_threads', '?')}, CPUs {env.get('cpu_count', '?')}",
        "CPU": f"{env.get('processor', '?')}"
        + (f" ({' '.join(env['cpu_flags'])})" if env.get("cpu_flags") else ""),
        "git": f"{env.get('git_commit', '?')}"
        + (
            f" (dirty: {', '.join(env.get('git_dirty_paths') or []) or '?'})"
            if env.get("git_dirty")
            else ""
        ),
    }
    end = ceil.get("end") or {}
    for dtype, value in (ceil.get("matmul_flops_per_s") or {}).items():
        after = (end.get("matmul_flops_per_s") or {}).get(dtype)
        rows[f"matmul ceiling, {dtype}"] = f"{value / 1e9:.1f} GFLOP/s" + (
            f" at the start, {after / 1e9:.1f} at the end" if after else ""
        )
    if ceil.get("copy_bytes_per_s"):
        rows["copy bandwidth"] = f"{ceil['copy_bytes_per_s'] / 1e9:.1f} GB/s"
    if env.get("timing_env"):
        rows["timing environment"] = ", ".join(f"{k}={v}" for k, v in env["timing_env"].items())
    for variant, chosen in (info.get("tuned") or {}).items():
        rows[f"sizes chosen here, {variant}"] = "; ".join(
            f"{c['param']} {c['choice']} at {c['key']}" for c in chosen
        )
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
    """The little Markdown our paragraphs use (`code`, **bold**, [links](#anchor), list items)."""
    import re

    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)
    text = re.sub(r"\[([^\]]+)\]\((#[^)]+)\)", r'<a href="\2">\1</a>', text)
    lines = text.split("\n")
    if all(line.startswith("- ") for line in lines):
        return "<ul>" + "".join(f"<li>{line[2:]}</li>" for line in lines) + "</ul>"
    return "<p>" + "<br>".join(lines) + "</p>"


def _asset(name: str) -> str:
    """A file shipped beside this module (package data): the report's CSS and JavaScript."""
    return (Path(__file__).with_name(name)).read_text()


def to_html(blocks: list[Block]) -> str:
    """Self-contained: the plots inline as SVG (a point's hover shows its variant, N, median and
    p20–p80), tables sortable by a click on a header, no request to the network."""
    body = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            body.append(f'<{b.kind} id="{anchor(b.text)}">{html.escape(b.text)}</{b.kind}>')
        elif b.kind == "p":
            body.append(_inline_md(b.text))
        elif b.kind == "code":
            body.append(f"<pre><code>{html.escape(b.text)}</code></pre>")
        elif b.kind == "table":
            body.append(b.frame.to_html(escape=True, border=0, classes="t"))
        elif b.kind == "image":
            svg = b.path.with_suffix(".svg")
            if svg.exists():
                inner = svg.read_text()
                inner = inner[inner.index("<svg") :]  # drop the XML prologue and doctype
                body.append(
                    f'<figure class="plot" id="plot-{html.escape(b.text)}">{inner}</figure>'
                )
            else:
                data = base64.b64encode(b.path.read_bytes()).decode()
                body.append(
                    f'<figure class="plot" id="plot-{html.escape(b.text)}">'
                    f'<img alt="{html.escape(b.text)}" '
                    f'src="data:image/png;base64,{data}"></figure>'
                )
    title = html.escape(blocks[0].text if blocks else "attnbench report")
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{_asset('report.css')}</style></head><body>\n"
        + "\n".join(body)
        + f"\n<script>{_asset('report.js')}</script>\n</body></html>\n"
    )


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
