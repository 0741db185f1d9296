"""The prepared GPU check runs to the end on a machine without CUDA: every GPU check skipped with
its reason, its files written, exit status 0 (so it cannot rot between GPU loans)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: run make gpu-check")
def test_gpu_check_without_cuda_skips_every_check_with_its_reason(tmp_path):
    out = tmp_path / "check"
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(ROOT / "run_bench.py"), "gpu-check"], cwd=tmp_path,
                          env={**__import__("os").environ, "GPU_CHECK_OUT": str(out)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert time.time() - t0 < 300
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["check.md", "run.json"] and len(files) <= 8
    checks = json.loads((out / "run.json").read_text())["gpu_check"]["checks"]
    names = [c["name"] for c in checks]
    assert names == ["environment", "variants", "train_step", "nccl", "flex_block_mask", "timing",
                     "gpu_suite"]
    assert checks[0]["status"] == "ok"
    for c in checks[1:]:
        assert c["status"] == "skipped" and c["detail"] == "no CUDA device on this machine"
    md = (out / "check.md").read_text()
    assert "| nccl | skipped |" in md and "not exercised here:" in proc.stdout


def test_the_gpu_suite_and_training_variants_are_valid():
    from attnbench import gpucheck
    from attnbench.bench.suite import from_dict

    suite = from_dict(gpucheck.GPU_SUITE_REDUCED)
    assert suite.device == "cuda" and suite.timing.l2_flush
    specs = gpucheck.suite_training_variants()
    assert "fused.sdpa" in specs and any(s.startswith("linear.") for s in specs)
