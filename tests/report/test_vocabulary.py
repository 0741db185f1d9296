"""One vocabulary each: statuses and the setting columns are defined once (attnbench.case) and
every table, plot, summary and the results store read them from there; rows of older runs are
brought to today's form once, when loaded."""

from __future__ import annotations

import json

from attnbench.bench import results
from attnbench.case import SETTING, STATUSES
from attnbench.report import plots, summary, tables, targets


def test_every_view_of_the_statuses_comes_from_the_one_table():
    assert results.STATUSES == tuple(STATUSES)
    assert set(tables.STATUS_TEXT) == set(STATUSES) - {"ok"}
    assert all(tables.STATUS_TEXT[n] == s.text for n, s in STATUSES.items() if n != "ok")
    assert set(summary.FAILED) == {n for n, s in STATUSES.items() if s.failed}
    assert {"unsupported", "skipped_after_oom", "ok"}.isdisjoint(summary.FAILED)
    assert plots.FAILED_MARK == {n: s.mark for n, s in STATUSES.items() if s.mark}
    assert "implausible" in summary.FAILED and plots.FAILED_MARK["implausible"]


def test_the_setting_columns_are_one_list():
    assert tuple(summary.SETTING) == tuple(summary.LIKE) == SETTING
    assert targets.SETTING == (*SETTING, "device")
    assert set(plots.SETTING_COLUMNS) == (set(SETTING) - {"pass"}) | {"preset"}


def test_old_rows_are_upgraded_once_when_loaded(tmp_path):
    old = {"level": "op", "variant": "fused.sdpa", "math": "causal_softmax", "heads": 8}
    approx = {"level": "op", "variant": "linear.elu.chunked", "math": "elu", "heads": 4}
    new = {"level": "op", "variant": "x", "math": "elu", "heads": 8, "kv_heads": 2, "exact": False}
    quality = {"level": "quality", "variant": "fused.sdpa"}
    (tmp_path / results.RESULTS_FILE).write_text(
        "".join(json.dumps(r) + "\n" for r in (old, approx, new, quality))
    )
    a, b, c, q = results.read_rows(tmp_path)
    assert (a["kv_heads"], a["exact"]) == (8, True)
    assert (b["kv_heads"], b["exact"]) == (4, False)
    assert (c["kv_heads"], c["exact"]) == (2, False)
    assert "kv_heads" not in q and "exact" not in q


def test_a_dirty_tree_records_which_files(monkeypatch):
    answers = {
        ("rev-parse", "HEAD"): "abc123",
        ("status", "--porcelain", "--untracked-files=no"): " M README.md\nM  attnbench/cli.py",
    }
    monkeypatch.setattr(results, "_git", lambda *a: answers[a])
    assert results.git_state() == {
        "git_commit": "abc123",
        "git_dirty": True,
        "git_dirty_paths": ["README.md", "attnbench/cli.py"],
    }
    answers[("status", "--porcelain", "--untracked-files=no")] = ""
    assert results.git_state() == {"git_commit": "abc123", "git_dirty": False}


def test_the_environment_names_the_cpus_instruction_sets():
    zen3 = "processor\t: 0\nflags\t\t: fpu sse avx avx2 fma f16c sha_ni\n"
    assert results.cpu_flags(zen3) == ["avx", "avx2", "fma", "f16c"]
    xeon = "flags : avx avx2 avx512f avx512bw avx512_bf16 amx_tile amx_bf16 amx_int8\n"
    assert "amx_bf16" in results.cpu_flags(xeon) and "avx512f" in results.cpu_flags(xeon)
    assert results.cpu_flags("model name : x\n") == []
    assert "cpu_flags" in results.environment("cpu")
