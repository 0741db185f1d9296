"""The prepared GPU check, on a machine without CUDA: it runs to the end with every GPU check
skipped with its reason (so it cannot rot between GPU loans), and the parts that decide its
verdict on a GPU — the time boxes, the child processes, the verdict rules, the copy step, the
NCCL rule, the device index, the ceiling size, the decoders' bytes — are tested here one by one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from attnbench import gpucheck
from attnbench.gpucheck import Check, Spec

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # the whole GPU check, each check in its own process
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: run make gpu-check")
def test_gpu_check_without_cuda_skips_every_check_with_its_reason(tmp_path):
    out = tmp_path / "check"
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run_bench.py"), "gpu-check"],
        cwd=tmp_path,
        env={**os.environ, "GPU_CHECK_OUT": str(out)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert time.time() - t0 < 300
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["check.md", "run.json"] and len(files) <= 8
    checks = json.loads((out / "run.json").read_text())["gpu_check"]["checks"]
    names = [c["name"] for c in checks]
    assert (
        names
        == list(gpucheck.CHECK_NAMES)
        == [
            "environment",
            "variants",
            "train_step",
            "nccl",
            "flex_block_mask",
            "timing",
            "hf",
            "gpu_suite",
        ]
    )
    assert checks[0]["status"] == "ok"
    for c in checks[1:]:
        assert c["status"] == "skipped" and c["detail"] == "no CUDA device on this machine"
    md = (out / "check.md").read_text()
    assert "| nccl | skipped |" in md and "not exercised here:" in proc.stdout
    for spec in gpucheck.CHECKS:  # every box is stated up front, with its arithmetic
        assert f"- `{spec.name}`: {spec.box_s:.0f} s: " in md


def test_the_time_boxes_add_up_to_at_most_eight_minutes():
    assert gpucheck.TOTAL_BOX_S == sum(s.box_s for s in gpucheck.CHECKS) <= 480
    assert all(s.box_s > gpucheck.MARGIN_S for s in gpucheck.CHECKS)


def test_the_gpu_suite_and_training_variants_are_valid():
    from attnbench.bench.runner import plan
    from attnbench.bench.suite import from_dict

    suite = from_dict(gpucheck.GPU_SUITE_REDUCED)
    assert suite.device == "cuda" and suite.timing.l2_flush
    ids = [c.case_id for c in plan(suite)]
    assert len(ids) <= 80  # what the gpu_suite box is sized for
    assert from_dict(gpucheck.HF_SUITE).model.preset == "hf:llama-tiny"
    specs = gpucheck.suite_training_variants()
    assert "fused.sdpa" in specs and any(s.startswith("linear.") for s in specs)


def test_the_project_root_is_the_checkout():
    assert (gpucheck.ROOT / "run_bench.py").is_file()
    assert (gpucheck.ROOT / "attnbench" / "gpucheck.py").is_file()


def test_only_names_valid_checks():
    assert gpucheck.parse_only("variants, gpu_suite") == ["variants", "gpu_suite"]
    assert gpucheck.parse_only(None) == list(gpucheck.CHECK_NAMES)
    with pytest.raises(ValueError, match="unknown check.*vairants.*valid: environment"):
        gpucheck.parse_only("vairants")


@pytest.mark.slow  # the GPU check through the command line
def test_only_skips_the_others_without_failing(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run_bench.py"),
            "gpu-check",
            "--only",
            "environment",
            "--out",
            str(tmp_path),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    checks = json.loads((tmp_path / "run.json").read_text())["gpu_check"]["checks"]
    assert [c["status"] for c in checks] == ["ok"] + ["skipped"] * 7
    assert all(c["detail"] == "not chosen (--only)" for c in checks[1:])


def _check(*statuses, status="skipped"):
    c = Check("x", status=status)
    c.items = [{"status": s, "detail": "out of time" if s == "time" else ""} for s in statuses]
    for i in c.items:
        if i["status"] == "time":
            i["status"] = "skipped"
    return c


def test_verdict_rules():
    ok = _check("ok", "ok", "skipped")  # skipped as unsupported: not a failure
    ok.verdict()
    assert ok.status == "ok" and ok.counts() == {"ran": 2, "failed": 0, "skipped": 1}
    cut = _check("ok", "time")
    cut.verdict()
    assert cut.status == "incomplete"
    bad = _check("ok", "failed", "time")
    bad.verdict()
    assert bad.status == "failed"
    raised = _check("ok", status="failed")  # the check itself raised: stays failed
    raised.verdict()
    assert raised.status == "failed"
    # the exit status: failed or incomplete -> 1; with CUDA, a check that did not run -> 1
    assert gpucheck.exit_code([ok], cuda=True) == 0
    assert gpucheck.exit_code([ok, cut], cuda=True) == 1
    assert gpucheck.exit_code([ok, bad], cuda=False) == 1
    not_run = Check("y", detail="out of time: 3 s left of the check's budget (480 s)")
    assert gpucheck.exit_code([ok, not_run], cuda=True) == 1
    assert gpucheck.exit_code([ok, not_run], cuda=False) == 0
    assert gpucheck.exit_code([ok, Check("z", detail="not chosen (--only)")], cuda=True) == 0


def _rows_run(tmp_path, statuses, late=()):
    from attnbench.bench import results

    run = tmp_path / "run"
    w = results.ResultWriter(run)
    for i, st in enumerate(statuses):
        w.write(
            {
                "case_id": f"c{i}",
                "variant": "v",
                "pass": "fwd",
                "seq_len": 8,
                "level": "op",
                "status": st,
                "reason": "r",
                "head_dim": 64,
            }
        )
    results.write_run_json(run, {"run_id": "run", "deadline": {"skipped_cases": list(late)}})
    return run


@pytest.mark.parametrize(
    "statuses, late, verdict",
    [
        (["ok", "unsupported"], (), "ok"),
        (["ok", "timeout"], (), "failed"),
        (["ok", "crash"], (), "failed"),
        (["ok", "incorrect"], (), "failed"),
        (["ok", "implausible"], (), "failed"),
        (["unsupported"], (), "failed"),  # nothing measured at all
        (["ok"], ("c9",), "incomplete"),  # the deadline left a case
    ],
)
def test_suite_verdict_counts_timeouts_and_crashes_as_failures(tmp_path, statuses, late, verdict):
    check = Check("gpu_suite")
    gpucheck.suite_verdict(check, _rows_run(tmp_path, statuses, late))
    assert check.status == verdict, check.detail


def test_nccl_check_fails_unless_the_run_used_nccl_through_ddp():
    rows = [
        {"pass": "train", "status": "ok", "data_parallel": "ddp, nccl, world 1", "train_steps": 9},
        {"pass": "eval", "bits_per_byte": 3.1},
    ]
    info = {"distributed": {"backend": "nccl", "world_size": 1}}
    assert gpucheck.nccl_verdict(info, rows)[0] == "ok"
    assert gpucheck.nccl_verdict({}, rows)[0] == "failed"  # the ordinary path: no backend
    no_ddp = [dict(rows[0], data_parallel=""), rows[1]]
    assert gpucheck.nccl_verdict(info, no_ddp)[0] == "failed"
    gloo = {"distributed": {"backend": "gloo", "world_size": 1}}
    assert gpucheck.nccl_verdict(gloo, rows)[0] == "failed"


def test_copy_back_copies_what_exists_and_never_raises(tmp_path):
    run, out = tmp_path / "run", tmp_path / "out"
    run.mkdir()
    out.mkdir()
    assert gpucheck.copy_back(run, out) == []  # a suite that never started
    (run / "results.jsonl").write_text("{}\n")  # one that failed before its report
    assert gpucheck.copy_back(run, out) == ["results.jsonl"]
    (run / "plots").mkdir()
    (run / "plots" / "time.png").write_bytes(b"png")
    (run / "report.md").write_text("# r")
    assert gpucheck.copy_back(run, out) == ["results.jsonl", "report.md", "plots/time.png"]


def test_a_check_runs_in_its_own_process_and_is_killed_at_its_box(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ok = gpucheck.run_in_process(
        Spec("environment", 60, False, ""), 60, env, tmp_path / "r", tmp_path
    )
    assert ok.status == "ok" and ok.items and ok.box_s == 60
    # a box shorter than the process's start-up: killed, failed, and the verdict still comes
    killed = gpucheck.run_in_process(
        Spec("environment", 0.3, False, ""), 0.3, env, tmp_path / "r", tmp_path
    )
    assert killed.status == "failed" and "outlived its time box of 0 s" in killed.detail
    # a process that dies without a result
    crashed = gpucheck.run_in_process(
        Spec("no_such_check", 30, False, ""), 30, env, tmp_path / "r", tmp_path
    )
    assert crashed.status == "failed" and "exited with code 2" in crashed.detail


def test_carried_wheels_skip_without_a_folder_and_go_on_the_path(tmp_path):
    from test_gpuwheels import make_wheel

    env = {"PYTHONPATH": "/somewhere"}
    assert gpucheck.carried_wheels(env, tmp_path / "none")  # the reason it installed nothing
    assert env == {"PYTHONPATH": "/somewhere"}
    folder = tmp_path / "whl"
    folder.mkdir()
    make_wheel(folder)
    installed = gpucheck.carried_wheels(env, folder)
    assert "tinypkg" in installed
    target = env["PYTHONPATH"].split(os.pathsep)[0]
    assert (Path(target) / "tinypkg").is_dir() and env["PYTHONPATH"].endswith("/somewhere")


# --- the CUDA paths' pieces that a CPU can check -----------------------------------------------


def test_a_bare_cuda_device_gets_its_index_before_set_device():
    from torch._utils import _get_device_index

    from attnbench.bench.measure import indexed

    with pytest.raises(ValueError, match="specified index"):  # the upstream rule
        _get_device_index(torch.device("cuda"), optional=False)
    dev = indexed("cuda", current=lambda: 3)
    assert dev == torch.device("cuda", 3) and _get_device_index(dev) == 3
    assert indexed("cuda:1", current=lambda: 3) == torch.device("cuda", 1)
    assert indexed("cpu") == torch.device("cpu")


def test_the_cuda_ceiling_is_measured_at_8192():
    from attnbench.bench.measure import ceiling_size

    assert ceiling_size("cuda") == 8192  # never sized by a launch-bound probe
    assert ceiling_size("cpu", rate=lambda n: 400e9) == 2048
    assert ceiling_size("cpu", rate=lambda n: 2e9) == 512  # bf16 without native support
    # a small ceiling budget (tests, smoke runs) sizes the product to a tenth of it
    assert ceiling_size("cpu", rate=lambda n: 400e9, max_product_s=0.01) == 1024


def test_the_float16_plain_linear_reference_does_not_overflow():
    import attnbench
    from attnbench.bench import gate

    variant = attnbench.get_variant("linear.elu.chunked")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1000, h, 64, generator=g).half() for h in (8, 2, 2))
    rows = gate.sample_rows(1000, 64, "cpu")
    plain = variant.math.reference_rows(q, k, v, rows, dtype=torch.float16)
    assert torch.isfinite(plain).all() and plain.dtype == torch.float16
    assert torch.isfinite(variant.math.reference(q, k, v, dtype=torch.float16)).all()
    assert gate.check_forward(variant, q, k, v, variant(q, k, v), True, 64) is None
    wrong = variant(q, k, v) * 1.02  # and a few per cent off still fails
    assert gate.check_forward(variant, q, k, v, wrong, True, 64) is not None


def test_a_window_decoder_reads_the_window_not_the_cache():
    import attnbench
    from attnbench.attention.decode import FlashKVDecoder, SdpaKVDecoder

    window = attnbench.get_variant("sliding_window.flash_attn", window=64)
    full = attnbench.get_variant("fused.sdpa")
    b, h, d, n = 2, 4, 32, 1000
    k = torch.randn(b, n, h, d)
    dec = FlashKVDecoder(window, b, h, d, max_len=n + 1)
    dec.fill(k, k)
    per_token = 2 * b * h * d * 4
    assert dec.read_bytes() == 64 * per_token  # the window
    whole = SdpaKVDecoder(full, b, h, d, max_len=n + 1)
    whole.fill(k, k)
    assert whole.read_bytes() == (n + 1) * per_token
    xf = attnbench.get_variant("sliding_window.xformers", window=64)
    xdec = xf.decoder(b, h, d, max_len=n + 1)
    xdec.fill(k, k)
    assert xdec.read_bytes() == 64 * per_token


def test_rows_name_the_sdpa_kernel_that_ran():
    import attnbench

    sdpa = attnbench.get_variant("fused.sdpa")
    q = torch.randn(1, 128, 4, 64)
    assert sdpa.kernel_used(q, q, q) in ("math", "flash", "efficient", "cudnn")
    assert attnbench.get_variant("naive.softmax").kernel_used(q, q, q) is None
    dec = sdpa.decoder(1, 4, 64, max_len=129)
    dec.fill(q, q)
    assert dec.kernel(q[:, :1]) in ("math", "flash", "efficient", "cudnn")
    forced = attnbench.get_variant("fused.sdpa_math").decoder(1, 4, 64, max_len=129)
    assert forced.kernel(q[:, :1]) == "math"
