"""One stored run for the report tests (``test_report.py``, ``test_html.py``): the smoke suite
plus a little quality and recall, run once per session through the command line (which writes
the report at its end). Tests that change its rows or settings work on a copy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SETS = [
    'op.variants=["naive.softmax","fused.sdpa","fused.flash_attn","sliding_window.blocked:window=64",'
    '"linear.elu.chunked:chunk=32"]',
    'quality.dataset="pystdlib"',
    'quality.variants=["fused.sdpa","sliding_window.blocked:window=16","linear.elu.chunked:chunk=16"]',
    "quality.train_tokens=30000",
    "quality.train_len=64",
    "quality.batch=8",
    "quality.eval_lens=[32,64,128]",
    "quality.eval_tokens=4096",
    'recall.variants=["fused.sdpa","linear.elu.chunked:chunk=16"]',
    "recall.seq_lens=[32,64]",
    "recall.kv_pairs=[2,4]",
    "recall.train_steps=10",
    "recall.eval_sequences=16",
]


@pytest.fixture(scope="session")
def report_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    cmd = [
        sys.executable,
        str(ROOT / "run_bench.py"),
        "run",
        "--suite",
        "smoke",
        "--out",
        str(out),
        "--quiet",
        "--budget",
        "0.02",
    ]
    for s in SETS:
        cmd += ["--set", s]
    env = dict(os.environ)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "report:" in proc.stdout
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run
