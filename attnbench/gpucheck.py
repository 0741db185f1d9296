"""The prepared GPU check: every CUDA path of the project in one command that fits a short loan of
a GPU machine (``make gpu-check``, ``python run_bench.py gpu-check``).

    GPU_CHECK_OUT=$OUT python3 run_bench.py gpu-check            # all checks, <= 8 minutes
    GPU_CHECK_OUT=$OUT python3 run_bench.py gpu-check --only variants,gpu_suite   # a rerun

Each check runs in its own process under its own time box (``CHECKS``: stated in ``check.md``; they
add up to at most 8 minutes), so a kernel that crashes or hangs takes one check with it, never the
verdict. Inside a box, a check starts no new item once its deadline is near and records what it
left (``skipped``, "out of time"); the benchmark suite gets the deadline as the runner's (no case
starts after it; run.json lists the cases left). The verdict of each check:

- ``ok``: it ran and every item passed;
- ``failed``: an item failed (a gate mismatch, an error, a ``timeout`` or ``crash`` row), the check
  raised, crashed or outlived its box;
- ``incomplete``: nothing failed, but items were left for lack of time;
- ``skipped``: it did not run, with the reason (no CUDA here; not chosen by ``--only``; no time).

The exit status is 0 only when no check failed or was incomplete and, on a machine with CUDA,
every chosen check ran. On a machine without CUDA every CUDA check is skipped with its reason and
the exit status is 0 (a test runs it so, so it cannot rot between loans).

Wheels the device machine lacks (``make gpu-wheels``: flash-linear-attention, xformers) are
installed from ``.whl/`` at the project's root, when that folder is there, into a temporary
folder on the check processes' path, without the network (``attnbench.gpuwheels``).

The checks, most informative first:

1. ``environment``: torch, CUDA, driver, the device, Triton and which optional kernel packages
   import.
2. ``variants``: every variant's forward and gradients against the float64 reference in bfloat16
   and float16 on awkward shapes (odd N, grouped-query heads), and its decoder for a few steps;
   FlexAttention variants (each shape and pass a compile) on one shape in bfloat16, last.
3. ``train_step``: one optimizer step of the identical model under bfloat16 autocast for every
   variant a committed suite trains.
4. ``nccl``: ``torchrun`` with one process and NCCL running the quality code through DDP and its
   collectives; it fails unless the run reports the ``nccl`` backend.
5. ``flex_block_mask``: FlexAttention block-mask build time and memory at N = 32k (compiled).
6. ``timing``: the harness's CUDA timing against ``triton.testing.do_bench`` and CUDA-graph replay.
7. ``hf``: a tiny transformers Llama with two variants, prefill and decode, gated, on CUDA.
8. ``gpu_suite``: a reduced ``gpu`` suite through the real launcher and workers, with its report.

It writes at most 8 files: ``check.md``, ``run.json`` (every check with its items),
``results.jsonl``, ``report.md`` and ``report.html`` of the suite, and up to three plots.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

OUT_ENV = "GPU_CHECK_OUT"
ROOT = Path(__file__).resolve().parents[1]  # the checkout: run_bench.py, .whl/
SHAPES = [(2, 333, 4, 128, 4), (1, 1000, 8, 64, 2)]  # (B, N, H, D, H_kv): odd N, grouped-query
DTYPES = (torch.bfloat16, torch.float16)
DECODE_STEPS = 4
PLOTS_BACK = ("time", "flops", "decode")  # with check.md, run.json, results.jsonl, report.md and
# report.html: 8 files, what the device tool brings back
FAILED_ROWS = ("incorrect", "error", "crash", "timeout", "implausible")


@dataclass(frozen=True)
class Spec:
    """One check: its name, its time box (seconds of wall time, process start-up included) and
    the arithmetic behind the box."""

    name: str
    box_s: float
    needs_cuda: bool
    basis: str


# The time boxes: 15 + 110 + 35 + 45 + 35 + 25 + 45 + 170 = 480 s, 8 minutes. Each basis is the
# expected cost on one H200 (a cold FlexAttention compile: about 5-10 s per graph; each check's
# process start and imports: about 5 s).
CHECKS = (
    Spec("environment", 15, False, "imports only"),
    Spec(
        "variants",
        110,
        True,
        "about 100 eager (variant, dtype, shape) items at < 0.3 s with "
        "their gates, plus 5 FlexAttention variants x 1 shape x (forward + backward) compiles "
        "at 5-10 s each",
    ),
    Spec(
        "train_step",
        35,
        True,
        "about 12 training variants x one step of the tiny model (one "
        "FlexAttention compile each for 3 of them)",
    ),
    Spec("nccl", 45, True, "torchrun start-up (about 15 s) + 8 s of training + evaluation"),
    Spec(
        "flex_block_mask",
        35,
        True,
        "4 patterns x a compiled block-mask build at N = 32k (the first compiles)",
    ),
    Spec("timing", 25, True, "2 shapes x 3 timers x 0.5 s of repetitions"),
    Spec(
        "hf",
        45,
        True,
        "a tiny Llama: 2 variants x (prefill + decode) cases through the "
        "launcher, its workers' start-up and imports of transformers",
    ),
    Spec(
        "gpu_suite",
        170,
        True,
        "the reduced suite: about 60 cases; eager ones at 1-2 s "
        "(0.3 s of repetitions, gate, memory), FlexAttention's at one compile each, 2 ceilings",
    ),
)
CHECK_NAMES = tuple(s.name for s in CHECKS)
TOTAL_BOX_S = sum(s.box_s for s in CHECKS)
MARGIN_S = 8.0  # of each box: the child stops starting items this long before the box ends


@dataclass
class Check:
    name: str
    status: str = "skipped"  # ok | failed | incomplete | skipped
    detail: str = ""
    seconds: float = 0.0
    box_s: float = 0.0
    items: list[dict[str, Any]] = field(default_factory=list)  # one line per sub-check
    deadline: float = 0.0  # time.time() by which the child stops starting items
    path: str = ""  # where the child writes its state after every item

    def left(self) -> float:
        return self.deadline - time.time()

    def add(self, item: dict[str, Any]) -> dict[str, Any]:
        """Append an item (update it in place later, then ``save``)."""
        self.items.append(item)
        self.save()
        return item

    def save(self) -> None:
        if self.path:
            tmp = self.path + ".tmp"
            Path(tmp).write_text(json.dumps(asdict(self), default=str))
            os.replace(tmp, self.path)

    def counts(self) -> dict[str, int]:
        out = {"ran": 0, "failed": 0, "skipped": 0}
        for i in self.items:
            st = i.get("status")
            if st in ("ok", "failed"):
                out["ran"] += 1
                out["failed"] += st == "failed"
            elif st == "skipped":
                out["skipped"] += 1
        return out

    def out_of_time(self) -> int:
        return sum(
            i.get("status") == "skipped" and i.get("detail") == "out of time" for i in self.items
        )

    def verdict(self) -> None:
        """``ok``/``failed``/``incomplete`` from the items, unless the check already failed."""
        if self.status == "failed":
            return
        c = self.counts()
        if c["failed"]:
            self.status = "failed"
        elif self.out_of_time():
            self.status = "incomplete"
        else:
            self.status = "ok"


# ---------------------------------------------------------------------------------------------
# the checks (each runs in a child process: ``python -m attnbench.gpucheck --child NAME``)


def check_environment(check: Check) -> None:
    from attnbench.attention.backends import missing_reason
    from attnbench.bench.results import environment

    env = environment("cuda" if torch.cuda.is_available() else "cpu")
    packages = {
        m: missing_reason(m) or "imports"
        for m in ("triton", "flash_attn", "flash_attn_interface", "xformers", "fla", "transformers")
    }
    check.add(
        {
            "environment": env,
            "optional_packages": packages,
            "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", ""),
            "carried_wheels": os.environ.get("ATTNBENCH_CARRIED_WHEELS", ""),
        }
    )
    check.status = "ok"
    missing = [m for m, why in packages.items() if why != "imports"]
    check.detail = (
        f"{env.get('device_name')} (CUDA {env.get('cuda')}, capability "
        f"{env.get('capability')}), torch {env['packages'].get('torch')}"
        + (f"; not importable here: {', '.join(missing)}" if missing else "")
    )


def _qkv(shape, dtype, seed=0):
    b, n, h, d, kv = shape
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, n, heads, d, generator=g).to("cuda", dtype) for heads in (h, kv, kv)]


def _compiles(variant) -> bool:
    """FlexAttention variants compile a kernel per shape and pass: checked sparingly, last."""
    return variant.impl == "flex"


def variant_items() -> list[tuple[str, torch.dtype, tuple]]:
    """(variant, dtype, shape) of the variants check: eager variants on every dtype and shape,
    then the compiling ones on one shape in bfloat16."""
    import attnbench

    eager, compiling = [], []
    for name in attnbench.variant_names():
        if _compiles(attnbench.get_variant(name)):
            compiling.append((name, torch.bfloat16, SHAPES[1]))
        else:
            eager += [(name, dtype, shape) for dtype in DTYPES for shape in SHAPES]
    return eager + compiling


def check_variants(check: Check) -> None:
    import attnbench
    from attnbench.bench import gate
    from attnbench.case import Case, dtype_name

    for name, dtype, shape in variant_items():
        variant = attnbench.get_variant(name)
        b, n, h, d, kv = shape
        item = check.add(
            {
                "variant": variant.label,
                "dtype": dtype_name(dtype),
                "shape": f"B{b}-N{n}-H{h}-KV{kv}-D{d}",
            }
        )
        if check.left() < (25 if _compiles(variant) else 2):
            item.update(status="skipped", detail="out of time")
            continue
        case = Case(
            batch=b,
            seq_len=n,
            heads=h,
            kv_heads=kv,
            head_dim=d,
            dtype=dtype,
            device="cuda",
            pass_="fwd",
        )
        reasons = variant.not_supported_reasons(case)
        if reasons:
            item.update(status="skipped", detail="; ".join(reasons)[:300])
            check.save()
            continue
        t0 = time.perf_counter()
        try:
            q, k, v = _qkv(shape, dtype)
            why = gate.check_forward(variant, q, k, v, variant(q, k, v), True, 64)
            if not why and not variant.not_supported_reasons(case.replace(pass_="fwd_bwd")):
                why = gate.check_gradients(variant, q, k, v, True, 64)
                item["backward"] = True
            decodes = not variant.not_supported_reasons(case.replace(pass_="decode"))
            if not why and decodes and not _compiles(variant) and shape == SHAPES[1]:
                make = functools.partial(
                    variant.decoder, b, h, d, kv_heads=kv, max_len=n, dtype=dtype, device="cuda"
                )
                why = gate.check_decode_steps(variant, q, k, v, DECODE_STEPS, make)
                item["decode_steps"] = DECODE_STEPS
            item.update(status="failed" if why else "ok", detail=why or "")
        except Exception as e:  # noqa: BLE001 - one variant's failure is its result
            item.update(status="failed", detail=f"{type(e).__name__}: {str(e)[:300]}")
        item["seconds"] = round(time.perf_counter() - t0, 2)
        check.save()
        torch.cuda.empty_cache()
    c = check.counts()
    check.detail = (
        f"{c['ran'] - c['failed']} of {c['ran']} (variant, dtype, shape) items match "
        f"the float64 reference; {c['skipped']} skipped "
        f"({check.out_of_time()} for time)"
    )


def suite_training_variants() -> list[str]:
    """Every variant a committed suite trains (quality and recall sections)."""
    from attnbench.bench.suite import SUITES_DIR, load_suite

    specs: list[str] = []
    for path in sorted(SUITES_DIR.glob("*.toml")):
        suite = load_suite(path.stem)
        for sec in (suite.quality, suite.recall):
            for spec in sec.variants if sec else ():
                if spec not in specs:
                    specs.append(spec)
    return specs


def check_train_step(check: Check) -> None:
    from attnbench.quality.train import _optimizer, build_model, optimizer_step
    from attnbench.settings import TrainSettings

    for spec in suite_training_variants():
        item = check.add({"variant": spec})
        if check.left() < 5:
            item.update(status="skipped", detail="out of time")
            continue
        try:
            model = build_model("tiny", spec, 0, "cuda")
            opt = _optimizer(model, TrainSettings())
            x = torch.randint(0, 256, (4, 257), device="cuda")
            loss = optimizer_step(model, model, opt, x[:, :-1], x[:, 1:], 1e-3, 1.0).item()
            ok = loss == loss and abs(loss) != float("inf")
            item.update(status="ok" if ok else "failed", loss=loss)
        except Exception as e:  # noqa: BLE001
            item.update(status="failed", detail=f"{type(e).__name__}: {str(e)[:300]}")
        check.save()
    c = check.counts()
    check.detail = (
        f"{c['ran'] - c['failed']} of {c['ran']} variants train one step under "
        "bfloat16 autocast with a finite loss"
    )


def nccl_verdict(info: dict[str, Any], rows: list[dict[str, Any]]) -> tuple[str, str]:
    """(status, detail) of the NCCL check from its run: ok only when torchrun's run trained
    through DDP with the ``nccl`` backend."""
    dist = info.get("distributed") or {}
    train = next((r for r in rows if r.get("pass") == "train"), {})
    ev = next((r for r in rows if r.get("pass") == "eval"), {})
    detail = (
        f"torchrun, backend {dist.get('backend')}, world {dist.get('world_size')}, "
        f"training '{train.get('data_parallel') or 'without DDP'}': "
        f"{train.get('train_steps')} steps, eval bits per byte {ev.get('bits_per_byte')}"
    )
    ok = (
        dist.get("backend") == "nccl"
        and train.get("status") == "ok"
        and str(train.get("data_parallel", "")).startswith("ddp, nccl")
    )
    return ("ok" if ok else "failed"), detail


def check_nccl(check: Check) -> None:
    out = Path(tempfile.mkdtemp(prefix="gpu-check-nccl-"))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "1",
        str(ROOT / "run_bench.py"),
        "quality",
        "--variants",
        "fused.sdpa",
        "--dataset",
        "pystdlib",
        "--device",
        "cuda",
        "--train-seconds",
        "8",
        "--train-len",
        "256",
        "--batch",
        "8",
        "--eval-lens",
        "256",
        "--eval-tokens",
        "8K",
        "--ngram-order",
        "0",
        "--no-dropin",
        "--out",
        str(out),
        "--quiet",
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, cwd=ROOT, timeout=max(10, check.left())
    )
    item = check.add(
        {
            "command": " ".join(cmd[2:]),
            "returncode": proc.returncode,
            "stderr_tail": proc.stderr[-1500:],
        }
    )
    if proc.returncode != 0:
        item["status"] = "failed"
        check.status = "failed"
        check.detail = (
            proc.stderr.strip().splitlines()[-1][:500] if proc.stderr.strip() else "no output"
        )
        return
    from attnbench.bench import results

    (run,) = [p for p in out.iterdir() if p.is_dir()]
    check.status, check.detail = nccl_verdict(results.read_run_json(run), results.read_rows(run))
    item["status"] = check.status
    item["report"] = (run / "report.md").exists()


def check_flex_block_mask(check: Check) -> None:
    from attnbench.attention.masked import flex_block_mask
    from attnbench.attention.patterns import BigBird, Full, Longformer, SlidingWindow

    n = 32768
    for pattern in (Full(True), SlidingWindow(1024), BigBird(128), Longformer(1024, 64)):
        item = check.add({"pattern": f"{type(pattern).__name__}({pattern.label})", "N": n})
        if check.left() < 5:
            item.update(status="skipped", detail="out of time")
            continue
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
        item.update(
            first_build_s=round(first, 3),
            build_ms=round(1e3 * again, 2),
            peak_mib=round(peak / 2**20, 1),
            status="ok" if peak < 4096 * 2**20 else "failed",
        )
        check.save()
    built = [i for i in check.items if "peak_mib" in i]
    if built:
        check.detail = (
            f"built compiled at N = {n}: at most "
            f"{max(i['peak_mib'] for i in built):.0f} MiB of temporaries, "
            f"{max(i['build_ms'] for i in built):.1f} ms per build after the first"
        )


def check_timing(check: Check) -> None:
    import triton.testing

    from attnbench.bench.measure import time_fn
    from attnbench.registry import get_variant

    sdpa = get_variant("fused.sdpa")
    for shape in ((16, 512, 16, 128), (1, 8192, 16, 128)):
        b, n, h, d = shape
        item = check.add({"shape": f"B{b}-N{n}-H{h}-D{d} bf16 causal fwd"})
        if check.left() < 5:
            item.update(status="skipped", detail="out of time")
            continue
        q, k, v = (torch.randn(b, n, h, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))

        def fn(q=q, k=k, v=v):
            return sdpa(q, k, v)

        ours = time_fn(fn, "cuda", warmup=3, budget_s=0.5, min_reps=20, max_reps=1000).median_ms
        graphs = time_fn(
            fn, "cuda", warmup=3, budget_s=0.5, min_reps=20, max_reps=1000, cuda_graphs=True
        ).median_ms
        anchor = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
        item.update(
            ours_ms=round(ours, 4),
            do_bench_ms=round(anchor, 4),
            cuda_graph_ms=round(graphs, 4),
            ours_over_do_bench=round(ours / anchor, 3),
            status="ok" if abs(ours / anchor - 1) < 0.15 else "failed",
        )
        check.save()
    check.detail = "; ".join(
        f"{i['shape']}: ours {i['ours_ms']} ms, "
        f"do_bench {i['do_bench_ms']} ms, "
        f"graph replay {i['cuda_graph_ms']} ms"
        for i in check.items
        if "ours_ms" in i
    )


GPU_SUITE_REDUCED = {
    "name": "gpu-check",
    "description": "the reduced gpu suite of the prepared GPU check (flash-attention's shapes: "
    "16k tokens, heads 2048/D; D 128, N 2048 and 8192, bfloat16, causal)",
    "device": "cuda",
    "op": {
        "variants": [
            "fused.sdpa",
            "fused.sdpa_flash",
            "fused.sdpa_efficient",
            "fused.sdpa_cudnn",
            "fused.flash_attn",
            "fused.flash_attn3",
            "fused.xformers",
            "fused.flex",
            "sliding_window.triton:window=1024",
            "sliding_window.xformers:window=1024",
            "linear.elu.chunked",
            "linear.elu.fla",
        ],  # one FlexAttention variant: 6 compiles
        "seq_lens": [2048, 8192],
        "total_tokens": 16384,
        "model_dim": 2048,
        "head_dims": [128],
        "dtypes": ["bfloat16"],
        "passes": ["fwd", "fwd_bwd", "decode"],
    },
    "model": {
        "preset": "gpt2",
        "variants": ["fused.sdpa", "linear.elu.chunked"],
        "seq_lens": [1024],
        "batch": 8,
        "dtypes": ["bfloat16"],
        "passes": ["train_step", "prefill", "decode"],
    },
    "timing": {
        "warmup": 2,
        "budget_s": 0.3,
        "min_reps": 10,
        "max_reps": 300,
        "timeout_s": 90,
        "l2_flush": True,
        "ceiling_s": 1.0,
    },
}

HF_SUITE = {
    "name": "gpu-check-hf",
    "description": "a tiny transformers Llama with two variants on CUDA, prefill and decode",
    "device": "cuda",
    "model": {
        "preset": "hf:llama-tiny",
        "variants": ["fused.sdpa", "sliding_window.banded:window=64"],
        "seq_lens": [256],
        "batch": 4,
        "dtypes": ["bfloat16"],
        "passes": ["prefill", "decode"],
    },
    "timing": {
        "warmup": 2,
        "budget_s": 0.2,
        "min_reps": 10,
        "max_reps": 200,
        "timeout_s": 40,
        "l2_flush": True,
        "ceiling_s": 0.5,
    },
}


def suite_verdict(check: Check, run_dir: Path) -> None:
    """The verdict of a suite run by the check: rows counted by status (``incorrect``,
    ``error``, ``crash``, ``timeout``, ``implausible`` fail it; no ``ok`` row fails it), cases
    the deadline left make it incomplete."""
    from attnbench.bench import results

    rows = results.read_rows(run_dir)
    info = results.read_run_json(run_dir) if (run_dir / results.RUN_FILE).exists() else {}
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
        if r["status"] in FAILED_ROWS:
            check.items.append(
                {
                    "variant": r["variant"],
                    "pass": r["pass"],
                    "N": r["seq_len"],
                    "status": "failed",
                    "detail": f"{r['status']}: {r['reason']}",
                }
            )
    late = len((info.get("deadline") or {}).get("skipped_cases") or [])
    check.detail = (
        f"{len(rows)} rows: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        + (f"; {late} cases left by the deadline" if late else "")
    )
    if any(counts.get(s) for s in FAILED_ROWS) or not counts.get("ok"):
        check.status = "failed"
    elif late:
        check.status = "incomplete"
    else:
        check.status = "ok"
    best = [
        r
        for r in rows
        if r.get("flops_per_s")
        and r["status"] == "ok"
        and r["pass"] in ("fwd", "fwd_bwd")
        and r.get("level") == "op"
    ]
    for r in sorted(best, key=lambda r: (r["pass"], -r["seq_len"], -r["flops_per_s"]))[:12]:
        check.items.append(
            {
                "variant": r["variant"],
                "pass": r["pass"],
                "N": r["seq_len"],
                "D": r["head_dim"],
                "kernel": r.get("kernel", ""),
                "TFLOP/s": round(r["flops_per_s"] / 1e12, 1),
                "frac_of_peak": round(r.get("frac_of_peak") or 0, 3),
                "status": "ok",
            }
        )
    check.save()


def _run_suite(check: Check, spec: dict, run_dir: Path) -> None:
    from attnbench.bench.suite import from_dict
    from attnbench.launch import launch

    # no case starts in the box's last 25 + MARGIN_S seconds: the end ceilings and the report
    done = launch(
        from_dict(spec),
        run_dir=run_dir,
        command=["run_bench.py", "gpu-check"],
        progress=False,
        deadline=check.deadline - 25,
    )
    if done.report_error:
        check.add({"status": "failed", "detail": f"report: {done.report_error}"[:500]})
    suite_verdict(check, run_dir)


def check_hf(check: Check, run_dir: Path) -> None:
    _run_suite(check, HF_SUITE, run_dir.with_name(run_dir.name + "-hf"))


def check_gpu_suite(check: Check, run_dir: Path) -> None:
    _run_suite(check, GPU_SUITE_REDUCED, run_dir)


FUNCTIONS: dict[str, Callable[..., None]] = {
    "environment": check_environment,
    "variants": check_variants,
    "train_step": check_train_step,
    "nccl": check_nccl,
    "flex_block_mask": check_flex_block_mask,
    "timing": check_timing,
    "hf": check_hf,
    "gpu_suite": check_gpu_suite,
}


def child(name: str, state: Path, deadline: float, run_dir: Path) -> int:
    """Run one check in this process, writing its state to ``state`` after every item."""
    check = Check(name, deadline=deadline, path=str(state))
    check.save()
    t0 = time.time()
    try:
        if name in ("hf", "gpu_suite"):
            FUNCTIONS[name](check, run_dir)
        else:
            FUNCTIONS[name](check)
        check.verdict()
    except Exception as e:  # noqa: BLE001 - a failing check is a result
        check.status = "failed"
        check.detail = f"{type(e).__name__}: {str(e).strip()[:800]}"
        check.items.append({"traceback": traceback.format_exc()[-2000:]})
    check.seconds = round(time.time() - t0, 2)
    check.save()
    return 0


# ---------------------------------------------------------------------------------------------
# the parent: boxes, processes, verdict, files


def carried_wheels(env: dict[str, str], folder: Path | None = None) -> str:
    """Install ``.whl/`` (``make gpu-wheels``) into a temporary folder, offline, and put it on the
    check processes' paths (``PYTHONPATH``; ``LD_LIBRARY_PATH`` for the CUDA 12 runtime that
    xformers' extension links). Returns what was installed, or why nothing was."""
    from attnbench import gpuwheels

    folder = ROOT / ".whl" if folder is None else folder
    target = Path(tempfile.mkdtemp(prefix="attnbench-wheels-"))
    result = gpuwheels.install(folder, target)
    if "installed" not in result:
        return result.get("skipped", "")
    env.update(gpuwheels.environ(target, env))
    return ", ".join(result["installed"])


def run_in_process(
    spec: Spec, box: float, env: dict[str, str], run_dir: Path, state_dir: Path
) -> Check:
    """One check in a child process, killed (its process group) at the end of its box."""
    state = state_dir / f"{spec.name}.json"
    t0 = time.time()
    deadline = t0 + box - MARGIN_S
    cmd = [
        sys.executable,
        "-m",
        "attnbench.gpucheck",
        "--child",
        spec.name,
        "--state",
        str(state),
        "--deadline",
        repr(deadline),
        "--run-dir",
        str(run_dir),
    ]
    log = state_dir / f"{spec.name}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
        )
        try:
            code = proc.wait(timeout=box)
            killed = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
            killed = True
    check = Check(spec.name)
    if state.exists():
        try:
            check = Check(
                **{
                    k: v
                    for k, v in json.loads(state.read_text()).items()
                    if k in Check.__dataclass_fields__
                }
            )
        except (json.JSONDecodeError, TypeError):
            pass
    check.box_s, check.seconds, check.path = box, round(time.time() - t0, 2), ""
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
    if killed:
        check.status = "failed"
        check.detail = (
            f"outlived its time box of {box:.0f} s and was killed, after "
            f"{len(check.items)} items; " + check.detail
        )[:800]
    elif code != 0 or check.status == "skipped":
        check.status = "failed"
        check.detail = f"its process exited with code {code}: {tail.strip()[-400:]}"
    if check.status == "failed":
        check.items.append({"log_tail": tail})
    return check


def markdown(checks: list[Check], started: str, seconds: float) -> str:
    n = {s: sum(c.status == s for c in checks) for s in ("ok", "failed", "incomplete", "skipped")}
    lines = [
        f"# attnbench GPU check ({started})",
        "",
        f"{n['ok']} ok, {n['failed']} failed, {n['incomplete']} incomplete, "
        f"{n['skipped']} skipped, in {seconds:.0f} s (time boxes: {TOTAL_BOX_S:.0f} s in "
        "all).",
        "",
        "| check | status | box s | seconds | items ran | failed | skipped | detail |",
        "|:---|:---|---:|---:|---:|---:|---:|:---|",
    ]
    for c in checks:
        k = c.counts()
        lines.append(
            f"| {c.name} | {c.status} | {c.box_s:.0f} | {c.seconds:.0f} | {k['ran']} | "
            f"{k['failed']} | {k['skipped']} | {c.detail.replace('|', '/')} |"
        )
    lines += ["", "Time boxes (each check's process, start-up included):", ""]
    lines += [f"- `{s.name}`: {s.box_s:.0f} s: {s.basis}" for s in CHECKS]
    for c in checks:
        rows = [i for i in c.items if not {"traceback", "environment", "log_tail"} & set(i)]
        if not rows:
            continue
        lines += ["", f"## {c.name}", ""]
        keys = list(dict.fromkeys(k for r in rows for k in r))
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for r in rows:
            lines.append(
                "| " + " | ".join(str(r.get(k, "")).replace("|", "/")[:300] for k in keys) + " |"
            )
    return "\n".join(lines) + "\n"


def exit_code(checks: list[Check], cuda: bool) -> int:
    """1 when a check failed or was incomplete, or (with CUDA) a chosen check did not run."""
    if any(c.status in ("failed", "incomplete") for c in checks):
        return 1
    if cuda and any(
        c.status == "skipped" and not c.detail.startswith("not chosen") for c in checks
    ):
        return 1
    return 0


def copy_back(run_dir: Path, out: Path) -> list[str]:
    """The suite's files that exist (a run that failed early has fewer): never raises for a
    missing one, so run.json with every check's detail is always written."""
    copied = []
    for name in ("results.jsonl", "report.md", "report.html"):
        if (run_dir / name).is_file():
            shutil.copy(run_dir / name, out / name)
            copied.append(name)
    for name in PLOTS_BACK:
        src = run_dir / "plots" / f"{name}.png"
        if src.is_file():
            (out / "plots").mkdir(exist_ok=True)
            shutil.copy(src, out / "plots" / src.name)
            copied.append(f"plots/{src.name}")
    return copied


def parse_only(text: str | None) -> list[str]:
    if not text:
        return list(CHECK_NAMES)
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in CHECK_NAMES]
    if bad or not names:
        raise ValueError(
            f"--only {text!r}: unknown check(s) {', '.join(bad) or '(none)'}; "
            f"valid: {', '.join(CHECK_NAMES)}"
        )
    return names


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="attnbench gpu-check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out",
        default=os.environ.get(OUT_ENV),
        help=f"folder for the files (default: ${OUT_ENV}, else runs/<stamp>-gpu-check)",
    )
    p.add_argument(
        "--only",
        metavar="NAME,...",
        help="run these checks only (a rerun of the failed ones): " + ", ".join(CHECK_NAMES),
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=TOTAL_BOX_S,
        help=f"wall time for all checks together (default {TOTAL_BOX_S:.0f}); each "
        "box shrinks to what is left",
    )
    p.add_argument("--child", choices=CHECK_NAMES, help=argparse.SUPPRESS)
    p.add_argument("--state", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args.child, Path(args.state), args.deadline, Path(args.run_dir))
    try:
        chosen = parse_only(args.only)
    except ValueError as e:
        p.error(str(e))
    started = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else ROOT / "runs" / f"{started}-gpu-check"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    end = t0 + args.budget_s
    cuda = torch.cuda.is_available()
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    run_dir = work / f"{started}-gpu-check"
    env = {
        **os.environ,
        "ATTNBENCH_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    env.pop("TRITON_INTERPRET", None)  # compiled Triton kernels, not the CPU interpreter
    wheels = ""
    if cuda:
        try:
            wheels = carried_wheels(env)
        except Exception as e:  # noqa: BLE001 - the checks still run, without the wheels
            wheels = f"not installed: {type(e).__name__}: {e}"[:300]
    env["ATTNBENCH_CARRIED_WHEELS"] = wheels
    checks: list[Check] = []
    for spec in CHECKS:
        box = min(spec.box_s, end - time.time())
        if spec.name not in chosen:
            check = Check(spec.name, detail="not chosen (--only)")
        elif spec.needs_cuda and not cuda:
            check = Check(spec.name, detail="no CUDA device on this machine")
        elif box < min(spec.box_s, 20):
            check = Check(
                spec.name,
                detail=f"out of time: {max(0, box):.0f} s left of the "
                f"check's budget ({args.budget_s:.0f} s)",
            )
        else:
            check = run_in_process(spec, box, env, run_dir, work)
        check.box_s = check.box_s or spec.box_s
        checks.append(check)
        print(
            f"[gpu-check] {check.name}: {check.status} ({check.seconds:.0f} of "
            f"{check.box_s:.0f} s) {check.detail[:200]}",
            file=sys.stderr,
            flush=True,
        )
    seconds = time.time() - t0
    (out / "check.md").write_text(markdown(checks, started, seconds))
    copied = copy_back(run_dir, out)
    from attnbench.bench import results

    info = (
        results.read_run_json(run_dir)
        if (run_dir / results.RUN_FILE).is_file()
        else {"run_id": out.name, "environment": results.environment("cpu")}
    )
    info["gpu_check"] = {
        "started": started,
        "seconds": round(seconds, 1),
        "chosen": chosen,
        "boxes_s": {s.name: s.box_s for s in CHECKS},
        "wheels": wheels,
        "files": copied,
        "checks": [asdict(c) for c in checks],
    }
    (out / "run.json").write_text(json.dumps(info, indent=1, default=str) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print((out / "check.md").read_text())
    skipped = [c for c in checks if c.status == "skipped"]
    if skipped:
        print("not exercised here: " + "; ".join(f"{c.name} ({c.detail})" for c in skipped))
    print(f"gpu-check: {len(list(out.rglob('*.*')))} files in {out}")
    return exit_code(checks, cuda)


if __name__ == "__main__":
    sys.exit(main())
