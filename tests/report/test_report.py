"""Reports and comparisons, from a small stored run: the smoke suite plus a little quality and
recall, run once per session through the command line (``report_run`` in conftest.py), which
writes the report at its end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from attnbench.bench import results
from attnbench.report.compare import compare, compare_rows
from attnbench.report.document import write_report
from attnbench.report.plots import pareto_front

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"
PLOTS = {
    "time",
    "memory",
    "flops",
    "quality",
    "pareto",
    "decode",
    "patterns",
    "recall",
    "state",
    "model",
    "dropin",
}


@pytest.fixture
def run_dir(report_run):
    """The session's stored run (tests/report/conftest.py)."""
    return report_run


@pytest.mark.slow  # reads the session's stored run (a suite with training)
def test_every_file_is_written_and_every_png_is_valid(run_dir):
    import matplotlib.image

    assert (run_dir / "report.md").exists() and (run_dir / "report.html").exists()  # by `run`
    written = write_report(run_dir)  # and again, from the stored rows alone
    plots = {k.split(":", 1)[1] for k in written if k.startswith("plot:")}
    assert plots == PLOTS
    for name in PLOTS:
        path = run_dir / "plots" / f"{name}.png"
        assert path.read_bytes()[:8] == PNG
        h, w, _ = matplotlib.image.imread(path).shape
        assert h > 200 and w > 300
    page = (run_dir / "report.html").read_text()
    assert page.count('<figure class="plot"') == len(PLOTS)  # inline SVG, hover titles on points
    assert 'src="http' not in page and "<table" in page and "<title>" in page
    md = (run_dir / "report.md").read_text()
    assert md.index("## Summary") < md.index("## Attention alone") < md.index("## Environment")


def _table_rows(md: str) -> list[list[str]]:
    """The cells of every Markdown table row of a report."""
    return [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in md.splitlines()
        if line.startswith("|")
    ]


@pytest.mark.slow  # reads the session's stored run (a suite with training)
def test_markdown_tables_contain_every_case(run_dir):
    md = (run_dir / "report.md").read_text()
    cells = _table_rows(md)
    rows = results.read_rows(run_dir)
    for r in rows:
        if r["level"] in ("op", "model") and r["status"] == "ok":
            assert any(c[0] == r["variant"] for c in cells), r["variant"]
            assert f"{r['time_ms']:.3f}" in md, r["case_id"]
        if r["level"] == "quality" and r["pass"] in ("eval", "dropin") and "eval_len" in r:
            assert f"{r['bits_per_byte']:.4f}" in md, r["case_id"]
        if r["level"] == "recall" and r["pass"] == "eval":
            assert f"{r['accuracy']:.3f}" in md
    # a case that did not run is shown as what it is, with its reason
    assert ["fused.flash_attn", "unsupported", "unsupported"] in cells
    assert "`fused.flash_attn` unsupported at N = 128, 256: " in md
    assert "## Reproduce" in md and "run_bench.py run --suite smoke" in md
    for section in ("Crossover by time", "Quality on pystdlib", "Drop-in", "Recall (MQAR)"):
        assert section in md
    for name in PLOTS:
        assert f"](plots/{name}.png)" in md


@pytest.mark.slow  # reads the session's stored run (a suite with training)
def test_a_torn_last_line_still_reports(run_dir, tmp_path):
    copy = tmp_path / "torn"
    shutil.copytree(run_dir, copy)
    with open(copy / "results.jsonl", "a") as f:
        f.write('{"case_id": "op|half-writ')
    written = write_report(copy)
    assert any(c[0] == "fused.sdpa" for c in _table_rows(written["markdown"].read_text()))


def _perturbed(run_dir: Path, dest: Path, factor_all: float, slow: dict[str, float]) -> Path:
    shutil.copytree(run_dir, dest)
    rows = results.read_rows(dest)
    with open(dest / "results.jsonl", "w") as f:
        for r in rows:
            if r.get("time_ms") is not None:
                r["time_ms"] *= slow.get(r["case_id"], factor_all)
            f.write(json.dumps(r) + "\n")
    return dest


@pytest.mark.slow  # reads the session's stored run (a suite with training)
def test_compare_flags_a_planted_slowdown_and_ignores_noise(run_dir, tmp_path):
    rows = results.read_rows(run_dir)
    target = next(
        r
        for r in rows
        if r["variant"] == "fused.sdpa"
        and r["pass"] == "fwd_bwd"
        and r["level"] == "op"
        and r["seq_len"] == 256
    )
    noisy = _perturbed(run_dir, tmp_path / "noisy", 1.02, {})
    code, text = compare(run_dir, noisy)
    assert code == 0 and "0 regressions" in text, text
    slow = _perturbed(run_dir, tmp_path / "slow", 1.02, {target["case_id"]: 1.5})
    code, text = compare(run_dir, slow)
    assert code == 1, text
    flagged = [line for line in text.splitlines() if "REGRESSION" in line]
    assert len(flagged) == 1 and target["case_id"].rsplit("|r", 1)[0] in flagged[0]
    assert "1.500x" in flagged[0]
    # the command line: the same verdict as an exit status
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run_bench.py"), "compare", str(run_dir), str(slow)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "REGRESSION" in proc.stdout
    # a higher threshold lets the slowdown pass
    assert compare(run_dir, slow, threshold=0.6)[0] == 0


@pytest.mark.slow  # reads the session's stored run (a suite with training)
def test_compare_refuses_other_devices_and_lists_unmatched_cases(run_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    info = results.read_run_json(other)
    info["environment"]["device_name"] = "Some Other CPU"
    results.write_run_json(other, info)
    with pytest.raises(ValueError, match="different devices"):
        compare(run_dir, other)
    code, text = compare(run_dir, other, allow_device_mismatch=True)
    assert code == 0 and "WARNING: different devices" in text
    rows = results.read_rows(run_dir)
    out = compare_rows(rows, rows[1:])
    assert out["only_a"] == [rows[0]["case_id"].rsplit("|r", 1)[0]] and not out["only_b"]


def test_compare_counts_a_failure_as_a_regression():
    a = [{"case_id": "op|x|fwd|r0", "status": "ok", "time_ms": 1.0}]
    b = [{"case_id": "op|x|fwd|r0", "status": "oom", "time_ms": None, "reason": "out of memory"}]
    out = compare_rows(a, b)
    assert [c.worse for c in out["changes"]] == [True]


def test_pareto_front():
    pts = [(1.0, 3.0), (2.0, 2.0), (3.0, 2.5), (4.0, 1.0), (2.5, 2.0)]
    assert pareto_front(pts) == [0, 1, 3]
