"""Calibrations as data: published figures with a tolerance stated in advance, judged against a
run's rows, and the report of their suite opening with them."""

from __future__ import annotations

import pandas as pd
import pytest

from attnbench.report import calibration
from attnbench.report.calibration import Calibration, judge, table


def _row(variant, bpb, status="ok", eval_len=64):
    return {
        "level": "quality",
        "pass": "eval",
        "variant": variant,
        "eval_len": eval_len,
        "status": status,
        "bits_per_byte": bpb,
    }


CAL = Calibration(
    "x", "a paper", 2.71, 0.10, "bits_per_byte", {"variant": "fused.sdpa", "eval_len": 64}
)


def test_within_outside_failed_and_missing():
    (ok,) = judge([_row("fused.sdpa", 2.75), _row("fused.sdpa", 3.5, eval_len=128)], [CAL])
    assert ok.within is True and ok.ours == pytest.approx(2.75)
    (far,) = judge([_row("fused.sdpa", 2.95)], [CAL])
    assert far.within is False
    (seeds,) = judge([_row("fused.sdpa", v) for v in (2.5, 2.78, 3.0)], [CAL])  # the median
    assert seeds.ours == pytest.approx(2.78) and seeds.within is True
    (failed,) = judge([_row("fused.sdpa", None, status="incorrect")], [CAL])
    assert failed.within is False and failed.status == "incorrect"
    (missing,) = judge([_row("linear.elu.chunked", 2.7)], [CAL])
    assert missing.within is None
    t = table([ok, far, failed, missing])
    assert list(t["within tolerance?"]) == [
        "yes (± 0.1)",
        "no (± 0.1)",
        "no (± 0.1)",
        "n/a (± 0.1)",
    ]
    assert list(t["ours"]) == ["2.750", "2.950", "incorrect", "missing"]


def test_the_shipped_calibrations_load_and_name_their_suite():
    from attnbench.bench.suite import load_suite

    suite, entries = calibration.load()
    assert suite == "reproduce" and load_suite(suite).name == suite
    figures = [e for e in entries if isinstance(e, Calibration)]
    assert {e.match["variant"] for e in figures} == {"fused.sdpa", "ngram:order=4"}
    assert all(e.source and e.tolerance > 0 for e in figures)
    claims = [e for e in entries if isinstance(e, calibration.Claim)]
    assert len(claims) == 4 and all(c.source for c in claims)


def test_a_bad_calibration_file_is_refused(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text(
        'suite = "s"\n[[calibration]]\nname = "x"\nsource = ""\npublished = 1.0\n'
        'tolerance = 0.1\nmetric = "bits_per_byte"\ncolour = "red"\n'
        '[calibration.match]\nlevel = "quality"\n'
    )
    with pytest.raises(ValueError, match="unknown key 'colour'"):
        calibration.load(bad)


def test_published_orderings_are_judged_on_any_run_that_has_their_variants():
    import attnbench

    def rows(spec, accs):
        label = attnbench.get_variant(spec).label
        return [
            {"level": "recall", "pass": "eval", "status": "ok", "variant": label, "accuracy": a}
            for a in accs
        ]

    _, entries = calibration.load()
    claims = [e for e in entries if isinstance(e, calibration.Claim)]
    good = (
        rows("fused.sdpa", [1.0, 1.0, 0.995])
        + rows("sliding_window.blocked:window=16", [0.5, 0.2])
        + rows("sliding_window.blocked:window=32", [0.7, 0.4])
        + rows("sliding_window.blocked:window=48", [0.9, 0.6])
        + rows("linear.taylor.chunked:feature_dim=8", [0.95, 0.8])
        + rows("linear.elu.chunked", [0.2, 0.1])
        + rows("linear.performer.chunked:features=64", [0.3, 0.1])
    )
    verdicts = calibration.for_run(pd.DataFrame(good), {"suite": {"name": "recall"}})
    assert len(verdicts) == 4 and all(v.within for v in verdicts)  # not the reproduce suite
    bad = [dict(r) for r in good]
    for r in bad:
        if r["variant"].startswith("sliding_window.blocked:window=48"):
            r["accuracy"] = 0.1  # a wider window recalling less: the ordering fails
        if r["variant"] == "fused.sdpa":
            r["accuracy"] = 0.9
    held = {v.calibration.name: v.within for v in calibration.judge(bad, claims)}
    assert held["MQAR: softmax attention recalls every setting"] is False
    assert held["MQAR: a sliding window's accuracy rises with its window"] is False
    assert calibration.judge(rows("fused.sdpa", [1.0]), claims[1:]) == []  # not about this run
    t = calibration.table(verdicts)
    assert set(t["within tolerance?"]) == {"yes: holds"}
