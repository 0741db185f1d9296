"""Performance targets as data (``attnbench/report/perf_targets.toml``), judged from synthetic
rows by ``attnbench.report.targets``: a met target, a missed one, a row that failed, a row (or
its baseline) missing, and the section a perf run's report prints."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from attnbench.report import document, targets

BANDED = "sliding_window.banded:window=256,block=32"


def _row(variant, pass_, n, time_ms=10.0, frac=0.5, mem=1e6, dtype="float32", status="ok"):
    return {
        "level": "op",
        "variant": variant,
        "pass": pass_,
        "seq_len": n,
        "dtype": dtype,
        "status": status,
        "time_ms": time_ms if status == "ok" else None,
        "frac_of_ceiling": frac if status == "ok" else None,
        "peak_mem_bytes": mem,
        "batch": 1,
        "heads": 8,
        "kv_heads": 8,
        "head_dim": 64,
        "causal": True,
        "device": "cpu",
    }


def _target(variant, pass_="fwd", n=16384, **kw) -> targets.Target:
    return targets.Target(variant, pass_, n, **kw)


ROWS = [
    _row("fused.sdpa", "fwd", 16384, frac=0.80),
    _row("fused.sdpa", "fwd", 16384, frac=0.70, dtype="bfloat16"),
    _row("linear.elu.chunked:chunk=64", "fwd", 16384, frac=0.36),
    _row("linear.elu.chunked:chunk=64", "fwd", 16384, frac=0.21, dtype="bfloat16"),
    _row(BANDED, "fwd", 16384, time_ms=84, frac=0.48, mem=2.02e6),
    _row(BANDED, "fwd", 8192, time_ms=44, frac=0.47, mem=1e6),
    _row("sliding_window.flex:window=256", "fwd", 16384, time_ms=105),
    _row("sparse.bigbird.union:block=64", "fwd", 16384, status="incorrect"),
    _row("linear.performer.chunked", "fwd", 4096, frac=0.2),  # no fused.sdpa row at 4096
]


def _one(target, rows=ROWS) -> targets.Verdict:
    (verdict,) = targets.judge(rows, [target])
    return verdict


def test_a_met_target():
    v = _one(_target("linear.elu.chunked", min=0.4))  # 0.36 / 0.80
    assert (v.measured_text, v.met_text) == ("0.45×", "yes")
    v = _one(
        _target(
            "sliding_window.banded:window=256",
            metric="speedup",
            min=1.0,
            baseline="sliding_window.flex:window=256",
        )
    )
    assert (v.measured_text, v.met_text) == ("1.25×", "yes")


def test_a_missed_target():
    v = _one(_target("linear.elu.chunked", dtype="bfloat16", min=0.4))  # 0.21 / 0.70
    assert (v.measured_text, v.met_text) == ("0.30×", "no")
    v = _one(_target("sliding_window.banded:window=256", metric="frac_of_ceiling", min=0.5))
    assert (v.measured_text, v.met_text) == ("48%", "no")
    v = _one(_target("sliding_window.banded:window=256", metric="growth", from_n=8192, max=1.9))
    assert (v.measured_text, v.met_text) == ("1.91×", "no")
    v = _one(
        _target(
            "sliding_window.banded:window=256",
            metric="growth",
            from_n=8192,
            max=2.2,
            field="peak_mem_bytes",
        )
    )
    assert (v.measured_text, v.met_text) == ("2.02×", "yes")


def test_a_row_that_did_not_run_misses_its_target_with_its_status():
    v = _one(_target("sparse.bigbird.union", min=0.5))
    assert (v.measured_text, v.met_text) == ("incorrect", "no")


def test_a_figure_the_run_did_not_measure_is_not_judged():
    # a run with --memory false: the rows ran, their peak memory was never measured
    rows = [_row("linear.elu.chunked", "fwd_bwd", n, mem=None) for n in (8192, 16384)]
    t = _target(
        "linear.elu.chunked", "fwd_bwd", metric="growth", field="peak_mem_bytes", from_n=8192
    )
    v = _one(targets.Target(**{**vars(t), "max": 2.2}), rows)
    assert (v.measured_text, v.met_text) == ("no peak_mem_bytes", "n/a")


def test_a_missing_row_is_not_judged():
    v = _one(_target("sparse.longformer.banded", min=0.5))
    assert (v.measured_text, v.met_text) == ("missing", "n/a")
    v = _one(_target("linear.performer.chunked", n=4096, min=0.4))  # its baseline is missing
    assert (v.measured_text, v.met_text) == ("fused.sdpa: missing", "n/a")
    # parameters the target fixes must match the row's label
    v = _one(_target("sliding_window.banded:window=128", metric="frac_of_ceiling", min=0.4))
    assert v.status == "missing"


def test_an_unbounded_target_is_reported():
    v = _one(_target("fused.sdpa", dtype="bfloat16", metric="frac_of_ceiling"))
    assert (v.measured_text, v.met_text) == ("70%", "ran")


def test_a_dataframe_of_rows_judges_the_same():
    ts = [_target("linear.elu.chunked", min=0.4), _target("sparse.longformer.banded", min=0.5)]
    assert targets.judge(pd.DataFrame(ROWS), ts) == targets.judge(ROWS, ts)


def test_the_shipped_targets_load_and_name_issue_23s_ratios():
    suite, ts = targets.load_targets()
    assert suite == "perf"
    linear = [t for t in ts if t.source == "issue 23" and t.variant.startswith("linear.") and t.min]
    assert {(t.pass_, t.seq_len, t.dtype) for t in linear} == {
        (p, n, d)
        for p in ("fwd", "fwd_bwd")
        for n in (4096, 16384)
        for d in ("float32", "bfloat16")
    }
    assert all(t.metric == "relative_efficiency" and t.baseline == "fused.sdpa" for t in linear)
    assert all(t.min == 0.4 for t in linear)


def test_a_bad_targets_file_is_rejected_by_name(tmp_path: Path):
    bad = tmp_path / "t.toml"
    bad.write_text(
        'suite = "perf"\n[[target]]\nvariants = ["fused.sdpa"]\npasses = ["fwd"]\n'
        'seq_lens = [1024]\nmetric = "speed"\n'
    )
    with pytest.raises(ValueError, match="unknown metric 'speed'"):
        targets.load_targets(bad)
    bad.write_text('[[target]]\nvariant = "fused.sdpa"\n')
    with pytest.raises(ValueError, match="unknown key\\(s\\) \\['variant'\\]"):
        targets.load_targets(bad)


def test_the_report_of_a_perf_run_prints_target_measured_met(tmp_path: Path):
    frame = pd.DataFrame(ROWS)
    info = {"run_id": "x", "suite": {"name": "perf", "description": ""}}
    md = document.to_markdown(document.build(tmp_path, frame, info, {}), tmp_path)
    section = md[md.index("## Performance targets") :]
    assert "| target" in section and "| measured" in section and "| met?" in section
    assert "`linear.elu.chunked` fwd N=16384 float32" in section
    other = {"run_id": "y", "suite": {"name": "quick", "description": ""}}
    md = document.to_markdown(document.build(tmp_path, frame, other, {}), tmp_path)
    assert "Performance targets" not in md
