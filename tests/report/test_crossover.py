"""The crossover table names a winner only beyond both rows' spread, comparing the same
statistic (each variant's median over repeats) on both sides."""

from __future__ import annotations

import pandas as pd

from attnbench.report.summary import crossover


def _row(variant, n, ms, spread=0.02, exact=False):
    return {
        "level": "op",
        "status": "ok",
        "variant": variant,
        "exact": exact,
        "seq_len": n,
        "pass": "fwd",
        "dtype": "float32",
        "head_dim": 64,
        "heads": 8,
        "kv_heads": 8,
        "batch": 1,
        "causal": True,
        "time_ms": ms,
        "time_ms_p20": ms * (1 - spread),
        "time_ms_p80": ms * (1 + spread),
        "peak_mem_bytes": 1,
    }


def _from_n(rows, challenger="sparse.x"):
    table = crossover(pd.DataFrame(rows), "time")
    return table.set_index("variant").loc[challenger, "from N"]


def test_a_win_within_the_spread_is_a_tie():
    rows = [_row("fused.sdpa", n, 10.0, exact=True) for n in (1024, 2048)]
    # 3 % faster at both N, but each row spreads 4 % either side: no winner
    ties = rows + [_row("sparse.x", n, 9.7, spread=0.04) for n in (1024, 2048)]
    assert _from_n(ties) == "–"
    # 30 % faster with a 2 % spread: a win from the first N
    wins = rows + [_row("sparse.x", n, 7.0) for n in (1024, 2048)]
    assert _from_n(wins) == "1024"
    # a tie at 1024, a clear win at 2048: from 2048
    mixed = rows + [_row("sparse.x", 1024, 9.9), _row("sparse.x", 2048, 7.0)]
    assert _from_n(mixed) == "2048"


def test_both_sides_use_the_median_over_repeats():
    # the exact variant measured twice at 10 and 14 ms (median 12); the challenger at 11 ms
    # beats its median but not its minimum: with the median on both sides it wins
    rows = [
        _row("fused.sdpa", 1024, 10.0, spread=0.01, exact=True),
        _row("fused.sdpa", 1024, 14.0, spread=0.01, exact=True),
        _row("sparse.x", 1024, 11.0, spread=0.01),
    ]
    table = crossover(pd.DataFrame(rows), "time").set_index("variant")
    assert table.loc["sparse.x", "ratio at largest N"] == f"{12.0 / 11.0:.2f}×"
    # the best exact variant is the one with the lowest median, not the lowest single row
    rows.append(_row("naive.softmax", 1024, 11.5, spread=0.01, exact=True))
    table = crossover(pd.DataFrame(rows), "time").set_index("variant")
    assert table.loc["sparse.x", "ratio at largest N"] == f"{11.5 / 11.0:.2f}×"


def test_a_quality_difference_is_a_finding_only_when_its_interval_excludes_zero():
    from attnbench.report.summary import quality_cost, seed_interval, t975

    assert t975(1) == 12.706 and t975(2) == 4.303 and t975(100) == 1.96
    # paired seeds: a consistent +0.05 is a finding; +0.05 then -0.03 is not
    lo, hi = seed_interval({0: 2.05, 1: 2.06, 2: 2.05}, {0: 2.00, 1: 2.01, 2: 2.00})
    assert 0 < lo < 0.05 < hi
    lo, hi = seed_interval({0: 2.05, 1: 1.98}, {0: 2.00, 1: 2.01})
    assert lo < 0 < hi
    assert seed_interval({0: 2.0}, {0: 2.1}) is None  # one seed: unknown

    def rows(variant, exact, values):
        return [
            {
                "level": "quality",
                "pass": "eval",
                "status": "ok",
                "family": "x",
                "eval_len": 64,
                "train_len": 64,
                "variant": variant,
                "exact": exact,
                "seed": s,
                "bits_per_byte": b,
            }
            for s, b in enumerate(values)
        ]

    frame = pd.DataFrame(
        rows("fused.sdpa", True, [2.00, 2.01, 2.00])
        + rows("sparse.a", False, [2.05, 2.06, 2.05])
        + rows("sparse.b", False, [2.05, 1.97, 2.02])
    )
    table = quality_cost(frame)
    assert table.loc["sparse.a", "finding?"] == "yes"
    assert table.loc["sparse.b", "finding?"] == "no: the interval includes 0"
    assert table.loc["sparse.a", "95% interval"].startswith("[+0.0")


def test_recall_frontier_gives_the_smallest_state_that_recalls():
    from attnbench.report.summary import recall_frontier

    def rows(variant, math, state, accs):
        return [
            {
                "level": "recall",
                "pass": "eval",
                "status": "ok",
                "variant": variant,
                "math": math,
                "state_bytes": state,
                "accuracy": a,
                "kv_pairs": kv,
            }
            for kv, a in zip((4, 8, 16), accs)
        ]

    frame = pd.DataFrame(
        rows("fused.sdpa", "causal_softmax", 32768, [1.0, 1.0, 1.0])
        + rows("sw:window=16", "sliding_window", 8192, [1.0, 0.7, 0.4])
        + rows("sw:window=64", "sliding_window", 32768, [1.0, 0.995, 0.99])
        + rows("sw:window=32", "sliding_window", 16384, [1.0, 0.99, 0.98])
        + rows("elu", "elu", 4096, [0.3, 0.1, 0.05])
    )
    t = recall_frontier(frame)
    col = t.columns[-1]
    assert t.loc["sliding_window", col] == "32.0 KiB (`sw:window=64`)"
    assert t.loc["sliding_window", "states tried (KiB)"] == "8.0, 16.0, 32.0"
    assert t.loc["causal_softmax", col].startswith("32.0 KiB")
    assert t.loc["elu", col] == "never (best 0.05 at 4.0 KiB)"


def test_a_grid_over_quality_and_recall_marks_each_winner():
    from attnbench.report.summary import best_lr

    base = {"status": "ok", "pass": "eval", "seed": 0, "variant": "fused.sdpa"}
    q = {**base, "level": "quality", "family": "fused", "eval_len": 64, "train_len": 64}
    r = {**base, "level": "recall", "family": "fused"}
    frame = pd.DataFrame(
        [
            {**q, "lr": 1e-3, "bits_per_byte": 2.50},
            {**q, "lr": 3e-3, "bits_per_byte": 2.40},
            {**r, "lr": 1e-3, "accuracy": 0.90},
            {**r, "lr": 3e-3, "accuracy": 0.60},
            {**q, "pass": "train", "lr": 1e-3},
        ]
    )
    kept, grid = best_lr(frame)
    assert grid.loc[("quality", "fused.sdpa", 0), "0.003"] == "2.4000 ✓"
    assert grid.loc[("quality", "fused.sdpa", 0), "0.001"] == "2.5000"
    assert grid.loc[("recall", "fused.sdpa", 0), "0.001"] == "0.9000 ✓"
    assert grid.loc[("recall", "fused.sdpa", 0), "0.003"] == "0.6000"
    assert set(kept.loc[kept["level"] == "quality", "lr"]) == {3e-3}  # the train row at 1e-3 too
    assert set(kept.loc[kept["level"] == "recall", "lr"]) == {1e-3}
