"""The prepared GPU check: every CUDA path of the project, in one command that fits a short loan of
a GPU machine (``make gpu-check``, ``python run_bench.py gpu-check``).

    GPU_CHECK_OUT=/some/folder python run_bench.py gpu-check      # default: \
results/<stamp>-gpu-check

Checks, most informative first, each recorded as ``ok``, ``failed`` (with the error) or ``skipped``
(with the reason), under one deadline (``--budget-s``, default 420 s; what the deadline cuts is
skipped as such):

1. ``environment``: torch, CUDA, driver, the device, Triton, and which optional kernel packages
   import (flash-attn, FlashAttention-3, xformers, flash-linear-attention, transformers).
2. ``variants``: every variant's forward and gradients against the float64 reference in bfloat16
   and float16 on awkward shapes (odd N, grouped-query heads), the Triton kernel compiled
   (``TRITON_INTERPRET`` off) — the benchmark's own gate functions.
3. ``train_step``: one optimizer step of the identical model under bfloat16 autocast for every
   variant a committed suite trains (quality and recall sections).
4. ``nccl``: ``torchrun`` with NCCL running the quality code: process group after
   ``set_device``, the wall-clock stop flag broadcast, DDP's all-reduce, a checkpoint, evaluation.
5. ``flex_block_mask``: FlexAttention block-mask build time and memory at N = 32k (compiled).
6. ``timing``: the harness's CUDA timing (L2 flush, back-to-back events) against
   ``triton.testing.do_bench`` and against CUDA-graph replay, on two shapes.
7. ``gpu_suite``: a reduced ``gpu`` suite through the real launcher and workers, with its report.

It writes at most 8 files: ``check.md``, ``results.jsonl``, ``run.json`` (with the checks),
``report.md``, ``report.html`` (plots embedded) and three plots. On a machine without CUDA every
check is skipped with its reason and it exits 0 (a test runs it so); elsewhere it exits 1 when
a check failed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

OUT_ENV = "GPU_CHECK_OUT"
SHAPES = [(2, 333, 4, 128, 4), (1, 1000, 8, 64, 2)]  # (B, N, H, D, H_kv): odd N, grouped-query
DTYPES = (torch.bfloat16, torch.float16)
PLOTS_BACK = ("time", "flops", "decode")  # with the 5 other files: 8, what comes back


@dataclass
class Check:
    name: str
    status: str = "skipped"  # ok | failed | skipped
    detail: str = ""
    seconds: float = 0.0
    items: list[dict[str, Any]] = field(default_factory=list)  # one line per sub-check


class Checker:
    """Runs checks in order under one deadline; a check that raises is ``failed``."""

    def __init__(self, budget_s: float):
        self.deadline = time.time() + budget_s
        self.checks: list[Check] = []
        self.cuda = torch.cuda.is_available()

    def left(self) -> float:
        return self.deadline - time.time()

    def run(self, name: str, fn: Callable[[Check], None], needs_cuda: bool = True,
            min_left: float = 10.0) -> Check:
        check = Check(name)
        self.checks.append(check)
        if needs_cuda and not self.cuda:
            check.detail = "no CUDA device on this machine"
            return check
        if self.left() < min_left:
            check.detail = f"out of time: {max(0, self.left()):.0f} s left of the check's budget"
            return check
        t0 = time.time()
        try:
            fn(check)
            if check.status == "skipped" and not check.detail:
                check.status = "ok"
        except Exception as e:  # a failing check is a result; the next one runs
            check.status = "failed"
            check.detail = f"{type(e).__name__}: {str(e).strip()[:800]}"
            check.items.append({"traceback": traceback.format_exc()[-2000:]})
        check.seconds = round(time.time() - t0, 2)
        print(f"[gpu-check] {name}: {check.status} ({check.seconds:.0f} s) {check.detail[:200]}",
              file=sys.stderr, flush=True)
        return check


# ---------------------------------------------------------------------------------------------
# the checks

def check_environment(check: Check) -> None:
    from attnbench.attention.backends import missing_reason
    from attnbench.bench.results import environment

    env = environment("cuda" if torch.cuda.is_available() else "cpu")
    packages = {m: missing_reason(m) or "imports" for m in
                ("triton", "flash_attn", "flash_attn_interface", "xformers", "fla", "transformers")}
    check.items.append({"environment": env, "optional_packages": packages,
                        "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "")})
    check.status = "ok"
    missing = [m for m, why in packages.items() if why != "imports"]
    check.detail = (f"{env.get('device_name')} (CUDA {env.get('cuda')}, capability "
                    f"{env.get('capability')}), torch {env['packages'].get('torch')}"
                    + (f"; not importable here: {', '.join(missing)}" if missing else ""))


def _qkv(shape, dtype, seed=0):
    b, n, h, d, kv = shape
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, n, heads, d, generator=g).to("cuda", dtype) for heads in (h, kv, kv)]


def check_variants(check: Check, checker: Checker) -> None:
    import attnbench
    from attnbench.bench import gate
    from attnbench.case import Case, dtype_name

    failed = ran = 0
    for name in attnbench.variant_names():
        variant = attnbench.get_variant(name)
        for dtype in DTYPES:
            for shape in SHAPES:
                b, n, h, d, kv = shape
                item = {"variant": variant.label, "dtype": dtype_name(dtype),
                        "shape": f"B{b}-N{n}-H{h}-KV{kv}-D{d}"}
                check.items.append(item)
                if checker.left() < 120:  # keep time for the later checks
                    item.update(status="skipped", detail="out of time")
                    continue
                case = Case(batch=b, seq_len=n, heads=h, kv_heads=kv, head_dim=d, dtype=dtype,
                            device="cuda", pass_="fwd")
                reasons = variant.not_supported_reasons(case)
                if reasons:
                    item.update(status="skipped", detail="; ".join(reasons)[:300])
                    continue
                ran += 1
                try:
                    q, k, v = _qkv(shape, dtype)
                    why = gate.check_forward(variant, q, k, v, variant(q, k, v), True, 64)
                    if not why and not variant.not_supported_reasons(case.replace(pass_="fwd_bwd")):
                        why = gate.check_gradients(variant, q, k, v, True, 64)
                        item["backward"] = True
                    item.update(status="failed" if why else "ok", detail=why or "")
                except Exception as e:  # noqa: BLE001 - one variant's failure is its result
                    item.update(status="failed", detail=f"{type(e).__name__}: {str(e)[:300]}")
                failed += item["status"] == "failed"
                torch.cuda.empty_cache()
    check.status = "failed" if failed else "ok"
    check.detail = (f"{ran - failed} of {ran} (variant, dtype, shape) "
                    "cases match the float64 reference")


def suite_training_variants() -> list[str]:
    """Every variant a committed suite trains (quality and recall sections)."""
    from attnbench.bench.suite import SUITES_DIR, load_suite

    specs: list[str] = []
    for path in sorted(SUITES_DIR.glob("*.toml")):
        suite = load_suite(path.stem)
        for sec in (suite.quality, suite.recall):
            for spec in (sec.variants if sec else ()):
                if spec not in specs:
                    specs.append(spec)
    return specs


def check_train_step(check: Check, checker: Checker) -> None:
    from attnbench.quality.train import _optimizer, build_model, optimizer_step
    from attnbench.settings import TrainSettings

    failed = 0
    for spec in suite_training_variants():
        item = {"variant": spec}
        check.items.append(item)
        try:
            model = build_model("tiny", spec, 0, "cuda")
            opt = _optimizer(model, TrainSettings())
            x = torch.randint(0, 256, (4, 257), device="cuda")
            loss = optimizer_step(model, model, opt, x[:, :-1], x[:, 1:], 1e-3, 1.0).item()
            ok = loss == loss and abs(loss) != float("inf")
            item.update(status="ok" if ok else "failed", loss=loss)
        except Exception as e:  # noqa: BLE001
            item.update(status="failed", detail=f"{type(e).__name__}: {str(e)[:300]}")
        failed += item["status"] == "failed"
    check.status = "failed" if failed else "ok"
    check.detail = (f"{len(check.items) - failed} of {len(check.items)} variants train one step "
                    "under bfloat16 autocast with a finite loss")


def check_nccl(check: Check, checker: Checker) -> None:
    root = Path(__file__).resolve().parents[2]
    out = Path(tempfile.mkdtemp(prefix="gpu-check-nccl-"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           str(root / "run_bench.py"), "quality", "--variants", "fused.sdpa",
           "--dataset", "pystdlib",
           "--train-seconds", "8", "--train-len", "256", "--batch", "8", "--eval-lens", "256",
           "--eval-tokens", "8K", "--ngram-order", "0", "--no-dropin", "--out", str(out), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          timeout=max(30, min(180, checker.left())),
                          env={**os.environ, "PYTHONPATH": str(root)})
    check.items.append({"command": " ".join(cmd[2:]), "returncode": proc.returncode,
                        "stderr_tail": proc.stderr[-1500:]})
    if proc.returncode != 0:
        check.status, check.detail = "failed", (proc.stderr.strip().splitlines()[-1][:500]
                                                if proc.stderr else "no output")
        return
    from attnbench.bench import results

    (run,) = [p for p in out.iterdir() if p.is_dir()]
    info = results.read_run_json(run)
    rows = {r["pass"]: r for r in results.read_rows(run)}
    check.status = "ok" if rows.get("train", {}).get("status") == "ok" else "failed"
    check.detail = (f"torchrun, backend {info.get('distributed', {}).get('backend')}: "
                    f"{rows.get('train', {}).get('train_steps')} steps in 8 s, eval bits per byte "
                    f"{rows.get('eval', {}).get('bits_per_byte')}")


def check_flex_block_mask(check: Check, checker: Checker) -> None:
    from attnbench.attention.masked import flex_block_mask
    from attnbench.attention.patterns import BigBird, Full, Longformer, SlidingWindow

    n = 32768
    for pattern in (Full(True), SlidingWindow(1024), BigBird(128), Longformer(1024, 64)):
        flex_block_mask.cache_clear()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        flex_block_mask(pattern, n, "cuda:0")  # the first build compiles
        torch.cuda.synchronize()
        first = time.perf_counter() - t0
        flex_block_mask.cache_clear()
        t0 = time.perf_counter()
        flex_block_mask(pattern, n, "cuda:0")
        torch.cuda.synchronize()
        again = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() - before
        check.items.append({"pattern": f"{type(pattern).__name__}({pattern.label})", "N": n,
                            "first_build_s": round(first, 3), "build_ms": round(1e3 * again, 2),
                            "peak_mib": round(peak / 2**20, 1)})
    worst = max(i["peak_mib"] for i in check.items)
    check.status = "ok" if worst < 4096 else "failed"
    check.detail = (f"built compiled at N = {n}: at most {worst:.0f} MiB of temporaries, "
                    f"{max(i['build_ms'] for i in check.items):.1f} ms per build after the first")


def check_timing(check: Check, checker: Checker) -> None:
    import triton.testing

    from attnbench.bench.measure import time_fn
    from attnbench.registry import get_variant

    sdpa = get_variant("fused.sdpa")
    worst = 0.0
    for shape in ((16, 512, 16, 128), (1, 8192, 16, 128)):
        b, n, h, d = shape
        q, k, v = (torch.randn(b, n, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))

        def fn():
            return sdpa(q, k, v)

        ours = time_fn(fn, "cuda", warmup=3, budget_s=0.5, min_reps=20, max_reps=1000).median_ms
        graphs = time_fn(fn, "cuda", warmup=3, budget_s=0.5, min_reps=20, max_reps=1000,
                         cuda_graphs=True).median_ms
        anchor = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
        item = {"shape": f"B{b}-N{n}-H{h}-D{d} bf16 causal fwd", "ours_ms": round(ours, 4),
                "do_bench_ms": round(anchor, 4), "cuda_graph_ms": round(graphs, 4),
                "ours_over_do_bench": round(ours / anchor, 3)}
        check.items.append(item)
        worst = max(worst, abs(ours / anchor - 1))
    check.status = "ok" if worst < 0.15 else "failed"
    check.detail = "; ".join(f"{i['shape']}: ours {i['ours_ms']} ms, "
                             f"do_bench {i['do_bench_ms']} ms, "
                             f"graph replay {i['cuda_graph_ms']} ms" for i in check.items)


GPU_SUITE_REDUCED = {
    "name": "gpu-check",
    "description": "the reduced gpu suite of the prepared GPU check",
    "device": "cuda",
    "op": {"variants": ["fused.sdpa", "fused.sdpa_flash", "fused.sdpa_efficient",
                        "fused.sdpa_cudnn",
                        "fused.flex", "fused.flash_attn", "fused.flash_attn3", "fused.xformers",
                        "sliding_window.flex:window=1024", "sliding_window.triton:window=1024",
                        "sparse.bigbird.flex:block=128", "linear.elu.chunked", "linear.elu.fla"],
           "seq_lens": [1024, 4096, 16384], "total_tokens": 16384, "model_dim": 2048,
           "head_dims": [128], "dtypes": ["bfloat16"], "passes": ["fwd", "fwd_bwd", "decode"]},
    "model": {"preset": "gpt2", "variants": ["fused.sdpa", "sliding_window.flex:window=256"],
              "seq_lens": [1024], "batch": 8, "dtypes": ["bfloat16"],
              "passes": ["train_step", "prefill", "decode"]},
    "timing": {"warmup": 2, "budget_s": 0.3, "min_reps": 10, "max_reps": 300, "timeout_s": 120,
               "l2_flush": True},
}


def check_gpu_suite(check: Check, checker: Checker, run_dir: Path) -> None:
    from attnbench.bench import results, runner
    from attnbench.bench.suite import from_dict
    from attnbench.report.document import write_report

    suite = from_dict(dict(GPU_SUITE_REDUCED, timing=dict(
        GPU_SUITE_REDUCED["timing"], timeout_s=min(120.0, max(20.0, checker.left() / 10)))))
    runner.run(suite, run_dir, command=["run_bench.py", "gpu-check"], progress=False)
    write_report(run_dir)
    rows = results.read_rows(run_dir)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    bad = counts.get("incorrect", 0) + counts.get("error", 0) + counts.get("crash", 0)
    check.status = "failed" if bad else "ok"
    check.detail = f"{len(rows)} rows: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    best = [r for r in rows if r.get("frac_of_peak") and r["pass"] == "fwd"
            and r["seq_len"] == 16384]
    for r in sorted(best, key=lambda r: -r["flops_per_s"])[:5]:
        check.items.append({"variant": r["variant"], "N": r["seq_len"], "D": r["head_dim"],
                            "TFLOP/s": round(r["flops_per_s"] / 1e12, 1),
                            "frac_of_peak": round(r["frac_of_peak"], 3)})


# ---------------------------------------------------------------------------------------------
# the document

def markdown(checks: list[Check], started: str, seconds: float) -> str:
    lines = [f"# attnbench GPU check ({started})", "",
             f"{sum(c.status == 'ok' for c in checks)} ok, "
             f"{sum(c.status == 'failed' for c in checks)} failed, "
             f"{sum(c.status == 'skipped' for c in checks)} skipped, in {seconds:.0f} s.", "",
             "| check | status | seconds | detail |", "|:---|:---|---:|:---|"]
    for c in checks:
        lines.append(f"| {c.name} | {c.status} | {c.seconds:.0f} | {c.detail.replace('|', '/')} |")
    for c in checks:
        rows = [i for i in c.items if "traceback" not in i and "environment" not in i]
        if not rows:
            continue
        lines += ["", f"## {c.name}", ""]
        keys = list(dict.fromkeys(k for r in rows for k in r))
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for r in rows:
            lines.append("| " + " | ".join(str(r.get(k, "")).replace("|", "/")[:300] for k in keys)
                         + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="attnbench gpu-check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get(OUT_ENV),
                   help=f"folder for the files (default: ${OUT_ENV}, "
                   "else results/<stamp>-gpu-check)")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="deadline for all checks together (seconds)")
    args = p.parse_args(argv)
    started = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path("results") / f"{started}-gpu-check"
    out.mkdir(parents=True, exist_ok=True)
    checker = Checker(args.budget_s)
    t0 = time.time()
    run_dir = Path(tempfile.mkdtemp(prefix="gpu-check-run-")) / f"{started}-gpu-check"
    checker.run("environment", check_environment, needs_cuda=False)
    checker.run("variants", lambda c: check_variants(c, checker))
    checker.run("train_step", lambda c: check_train_step(c, checker))
    checker.run("nccl", lambda c: check_nccl(c, checker), min_left=60)
    checker.run("flex_block_mask", lambda c: check_flex_block_mask(c, checker), min_left=60)
    checker.run("timing", lambda c: check_timing(c, checker), min_left=30)
    checker.run("gpu_suite", lambda c: check_gpu_suite(c, checker, run_dir), min_left=90)
    seconds = time.time() - t0
    (out / "check.md").write_text(markdown(checker.checks, started, seconds))
    if (run_dir / "results.jsonl").exists():
        for name in ("results.jsonl", "report.md", "report.html"):
            shutil.copy(run_dir / name, out / name)
        for name in PLOTS_BACK:
            if (run_dir / "plots" / f"{name}.png").exists():
                (out / "plots").mkdir(exist_ok=True)
                shutil.copy(run_dir / "plots" / f"{name}.png", out / "plots" / f"{name}.png")
        info = json.loads((run_dir / "run.json").read_text())
    else:
        from attnbench.bench.results import environment

        info = {"run_id": out.name, "environment": environment("cpu")}
    info["gpu_check"] = {"started": started, "seconds": round(seconds, 1),
                         "checks": [asdict(c) for c in checker.checks]}
    (out / "run.json").write_text(json.dumps(info, indent=1, default=str) + "\n")
    skipped = [c for c in checker.checks if c.status == "skipped"]
    print((out / "check.md").read_text())
    if skipped:
        print("not exercised here: " + "; ".join(f"{c.name} ({c.detail})" for c in skipped))
    print(f"gpu-check: {len(list(out.rglob('*.*')))} files in {out}")
    return 1 if any(c.status == "failed" for c in checker.checks) else 0


if __name__ == "__main__":
    sys.exit(main())
