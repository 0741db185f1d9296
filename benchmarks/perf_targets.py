"""Issue 7's CPU performance targets, checked against a stored run of the ``perf`` suite.

    python run_bench.py run --suite perf
    python benchmarks/perf_targets.py results/<run_id>        # prints the table, writes \
perf_targets.md
    python benchmarks/perf_targets.py results/<a> results/<b>  # rows of later runs replace \
earlier ones

Every figure comes from the run's rows (float32 unless stated; B=1, H=8, D=64); ratios compare
cases measured side by side in that one run. "Own" implementations are ours (``blocked``,
``banded``, ``union``, ``chunked``); FlexAttention is the peer.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from attnbench.bench import results  # noqa: E402

OWN_SW = ("sliding_window.banded", "sliding_window.blocked")
PATTERNS = ("strided", "bigbird", "longformer")
OWN_SPARSE = ("blocked", "banded", "union")  # ours; the best of those a pattern has counts


class Rows:
    def __init__(self, rows):
        self.rows = [r for r in rows if r.get("level") == "op"]

    def get(self, prefix: str, pass_: str, n: int, dtype: str = "float32"):
        for r in self.rows:
            if (
                r["variant"].split(":")[0] == prefix
                and r["pass"] == pass_
                and r["seq_len"] == n
                and r["dtype"] == dtype
            ):
                return r
        return None

    def value(self, prefix, pass_, n, field, dtype="float32"):
        r = self.get(prefix, pass_, n, dtype)
        if r is None or r["status"] != "ok" or r.get(field) is None:
            return None
        return r[field]

    def status(self, prefix, pass_, n, dtype="float32") -> str:
        r = self.get(prefix, pass_, n, dtype)
        return "missing" if r is None else r["status"]


def _fmt(x, kind):
    if x is None:
        return "–"
    return {"pct": f"{100 * x:.0f}%", "x": f"{x:.2f}×", "ms": f"{x:.1f} ms"}[kind]


def _chunked_over_documented(row) -> float:
    """The chunked linear form's executed FLOPs over the row's implementation-independent count."""
    from attnbench.bench.flops import attention_flops, chunked_linear_flops
    from attnbench.case import Case
    from attnbench.registry import get_variant

    variant = get_variant(row["variant"])
    case = Case(
        batch=row["batch"],
        seq_len=row["seq_len"],
        heads=row["heads"],
        head_dim=row["head_dim"],
        pass_=row["pass"],
    )
    return chunked_linear_flops(variant, case) / attention_flops(variant, case)


def check(rows: Rows) -> list[tuple[str, str, str, str]]:
    out = []

    def add(what, target, measured, ok):
        out.append((what, target, measured, "yes" if ok else ("n/a" if ok is None else "**no**")))

    f = rows.value("fused.sdpa", "fwd", 4096, "frac_of_ceiling")
    add(
        "fused.sdpa causal fwd, N=4096",
        "≥ 80% of ceiling",
        _fmt(f, "pct"),
        None if f is None else f >= 0.8,
    )

    def best(prefixes, pass_, n):
        cands = [(rows.value(p, pass_, n, "time_ms"), p) for p in prefixes]
        cands = [c for c in cands if c[0] is not None]
        return min(cands) if cands else (None, None)

    t_own, own = best(OWN_SW, "fwd", 16384)
    t_flex = rows.value("sliding_window.flex", "fwd", 16384, "time_ms")
    ratio = t_flex / t_own if t_own and t_flex else None
    add(
        f"best own sliding window ({own}) fwd N=16384 vs flex",
        "≥ 1.0×",
        _fmt(ratio, "x"),
        None if ratio is None else ratio >= 1.0,
    )
    frac = rows.value(own, "fwd", 16384, "frac_of_ceiling") if own else None
    add(
        f"  {own} fwd, ceiling on attended pairs",
        "≥ 50%",
        _fmt(frac, "pct"),
        None if frac is None else frac >= 0.5,
    )
    t_own_b, own_b = best(OWN_SW, "fwd_bwd", 16384)
    frac = rows.value(own_b, "fwd_bwd", 16384, "frac_of_ceiling") if own_b else None
    add(
        f"  {own_b} fwd+bwd, ceiling on attended pairs",
        "≥ 40%",
        _fmt(frac, "pct"),
        None if frac is None else frac >= 0.4,
    )
    for pass_, who in (("fwd", own), ("fwd_bwd", own_b)):
        for field, label in (("time_ms", "time"), ("peak_mem_bytes", "peak memory")):
            a = rows.value(who, pass_, 16384, field) if who else None
            b = rows.value(who, pass_, 8192, field) if who else None
            r = a / b if a and b else None
            add(
                f"  {who} {pass_} {label} N=16384 / N=8192",
                "≤ 2.2",
                _fmt(r, "x"),
                None if r is None else r <= 2.2,
            )

    for pat in PATTERNS:
        flex_p = f"sparse.{pat}.flex"
        t_o, own_p = best([f"sparse.{pat}.{impl}" for impl in OWN_SPARSE], "fwd", 16384)
        own_p = own_p or f"sparse.{pat}.blocked"
        t_f = rows.value(flex_p, "fwd", 16384, "time_ms")
        r = t_f / t_o if t_o and t_f else None
        add(
            f"best own {pat} ({own_p}) fwd N=16384 vs {flex_p}",
            "≥ 1.0×",
            _fmt(r, "x"),
            None if r is None else r >= 1.0,
        )
        for pass_ in ("fwd", "fwd_bwd"):
            frac = rows.value(own_p, pass_, 16384, "frac_of_ceiling")
            add(
                f"  {own_p} {pass_}, ceiling on attended pairs",
                "≥ 40%",
                _fmt(frac, "pct"),
                None if frac is None else frac >= 0.4,
            )

    for lin in ("linear.elu.chunked", "linear.performer.chunked"):
        frac = rows.value(lin, "fwd_bwd", 16384, "frac_of_ceiling")
        executed = (
            frac * _chunked_over_documented(rows.get(lin, "fwd_bwd", 16384)) if frac else None
        )
        add(
            f"{lin} fwd+bwd N=16384, ceiling on the chunked form's FLOPs (4NFD + 2NC(F+D); "
            f"on 4NFD alone: {_fmt(frac, 'pct')})",
            "≥ 40%",
            _fmt(executed, "pct"),
            None if executed is None else executed >= 0.4,
        )
        for field, label in (("time_ms", "time"), ("peak_mem_bytes", "peak memory")):
            a, b = rows.value(lin, "fwd_bwd", 16384, field), rows.value(lin, "fwd_bwd", 8192, field)
            r = a / b if a and b else None
            add(
                f"  {lin} fwd+bwd {label} N=16384 / 8192",
                "≤ 2.2",
                _fmt(r, "x"),
                None if r is None else r <= 2.2,
            )
        cross = None
        for n in (1024, 4096, 8192, 16384):
            a, b = (
                rows.value(lin, "fwd_bwd", n, "time_ms"),
                rows.value("fused.sdpa", "fwd_bwd", n, "time_ms"),
            )
            if a and b and a < b:
                cross = n
                break
        add(
            f"  {lin} overtakes fused.sdpa (fwd+bwd) from N =",
            "reported",
            "–" if cross is None else str(cross),
            None,
        )

    for who, flat in (
        ("linear.elu.chunked", True),
        ("linear.performer.chunked", True),
        ("sliding_window.banded", True),
        ("fused.sdpa", False),
    ):
        a, b = (
            rows.value(who, "decode", 16384, "time_ms"),
            rows.value(who, "decode", 1024, "time_ms"),
        )
        r = a / b if a and b else None
        if flat:
            add(
                f"decode step {who}, context 16384 / 1024",
                "≤ 1.3× (flat)",
                _fmt(r, "x"),
                None if r is None else r <= 1.3,
            )
        else:
            add(
                f"decode step {who}, context 16384 / 1024",
                "grows",
                _fmt(r, "x"),
                None if r is None else r > 1.3,
            )

    for who in (
        "fused.sdpa",
        "sliding_window.banded",
        "sliding_window.blocked",
        "linear.elu.chunked",
    ):
        frac = rows.value(who, "fwd", 16384, "frac_of_ceiling", "bfloat16")
        st = rows.status(who, "fwd", 16384, "bfloat16")
        add(
            f"bfloat16 {who} fwd N=16384, of the bf16 ceiling",
            "runs; reported",
            _fmt(frac, "pct") if frac is not None else st,
            st == "ok",
        )
    return out


def main(argv=None) -> int:
    argv = argv if argv is not None else sys.argv[1:]
    if not argv:
        print(__doc__)
        return 2
    runs = [Path(a) for a in argv]
    merged: dict = {}
    for run in runs:  # a later run's row replaces an earlier one of the same case
        for r in results.read_rows(run):
            merged[(r.get("variant"), r.get("pass"), r.get("seq_len"), r.get("dtype"))] = r
    table = check(Rows(list(merged.values())))
    run = runs[0]
    info = results.read_run_json(run)
    ceil = info.get("ceilings", {}).get("matmul_flops_per_s", {})
    head = (
        f"Performance targets, run {run.name} on {info['environment'].get('device_name')} "
        f"(matmul ceiling: "
        + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in ceil.items())
        + ")"
    )
    if len(runs) > 1:
        head += "; rows of " + ", ".join(r.name for r in runs[1:]) + " replace the first run's"
    lines = [head, "", "| what | target | measured | met |", "|:---|:---|---:|:---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in table]
    text = "\n".join(lines)
    print(text)
    (run / "perf_targets.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
