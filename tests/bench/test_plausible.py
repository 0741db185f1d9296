"""Rows faster than the machine can do the work are ``implausible``; summaries name a winner only
beyond the rows' own spread."""

from __future__ import annotations

import pandas as pd

from attnbench.bench.rows import compute_ceiling
from attnbench.bench.rows import efficiency as _efficiency
from attnbench.report.summary import best_per_n


def _row(flops_per_s, dtype="float32", **extra):
    return {"status": "ok", "reason": "", "dtype": dtype, "flops_per_s": flops_per_s, **extra}


def test_a_row_above_its_ceiling_is_implausible_and_one_below_is_not():
    ceilings = {"float32": 100e9, "bfloat16": 2e9}
    fast = _row(150e9)
    _efficiency(fast, ceilings, None, "")
    assert fast["status"] == "implausible" and "1.50x" in fast["reason"]
    assert fast["flops_per_s"] == 150e9  # kept for inspection
    ok = _row(105e9)  # within the 10 % margin
    _efficiency(ok, ceilings, None, "")
    assert ok["status"] == "ok" and ok["frac_of_ceiling"] == 1.05


def test_a_half_dtype_is_judged_against_the_faster_float32_ceiling():
    assert compute_ceiling({"float32": 100e9, "bfloat16": 2e9}, "bfloat16") == (100e9, "float32")
    row = _row(50e9, dtype="bfloat16")  # 25x the bf16 matmul, half the float32 one
    _efficiency(row, {"float32": 100e9, "bfloat16": 2e9}, None, "")
    assert row["status"] == "ok" and row["ceiling_dtype"] == "float32"


def test_above_the_published_peak_or_the_copy_bandwidth_is_implausible():
    peak = _row(1.2e15, dtype="bfloat16")
    _efficiency(peak, {"bfloat16": 2e15}, None, "NVIDIA H200")
    assert peak["status"] == "implausible" and "published peak" in peak["reason"]
    read = _row(None, bytes_per_s=10e12, read_bytes=1 << 30)
    _efficiency(read, {}, 4e12, "")
    assert read["status"] == "implausible" and "copy bandwidth" in read["reason"]
    small = _row(None, bytes_per_s=10e12, read_bytes=1 << 20)  # may come from cache
    _efficiency(small, {}, 4e12, "")
    assert small["status"] == "ok"


def _op(variant, t, p20, p80):
    return {
        "level": "op",
        "status": "ok",
        "variant": variant,
        "seq_len": 1024,
        "time_ms": t,
        "time_ms_p20": p20,
        "time_ms_p80": p80,
        "pass": "fwd",
        "dtype": "float32",
        "head_dim": 64,
        "heads": 8,
        "kv_heads": 8,
        "batch": 1,
        "causal": True,
    }


def test_fastest_is_a_tie_within_the_spread_and_a_winner_beyond_it():
    tie = pd.DataFrame([_op("a", 10.0, 9.0, 11.0), _op("b", 10.2, 9.5, 11.5)])
    assert best_per_n(tie)[0][1].loc[1024, "fastest"] == "tie: a, b"
    clear = pd.DataFrame([_op("a", 10.0, 9.8, 10.2), _op("b", 12.0, 11.8, 12.2)])
    assert best_per_n(clear)[0][1].loc[1024, "fastest"] == "a"
