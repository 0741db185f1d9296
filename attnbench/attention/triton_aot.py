"""Ahead-of-time compile of a Triton kernel for a GPU it is not running on, and what ptxas says.

A tile that spills registers to local memory runs slower than the kernel can, so a benchmark that
ships it understates the kernel. Spills are decided by ptxas, which runs on the CPU: this module
compiles a ``@triton.jit`` kernel with ``triton.compile`` for a ``GPUTarget`` (Hopper by default,
``GPUTarget("cuda", 90, 32)``, no GPU needed), then assembles the PTX again with the ptxas that
Triton itself uses for that target and the same flags (``-v`` added), and reads its report:
registers, stack frame, spill stores and loads. Triton's own ``n_regs``/``n_spills`` come from the
CUDA driver when a kernel is loaded, so they exist only on a GPU; they report what ptxas decided.
For sm_90 and later Triton assembles with its ``ptxas-blackwell`` (CUDA 13 in Triton 3.9): the
older ``ptxas`` beside it (CUDA 12.9) rejects the PTX version Triton then emits.

Under ``TRITON_INTERPRET=1`` (the tests set it on CPU machines) Triton's own ``@jit`` library
functions are interpreted, and calling one from a compile patches ``triton.language`` for the
interpreter for good, so there the compile runs in a child Python without that variable:
``resources_batch`` names the kernel by a loader (``"module:function"`` returning it), which the
child imports.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile

HOPPER = (90, 32)  # compute capability, warp size


@dataclasses.dataclass(frozen=True)
class Resources:
    """ptxas -v figures of one compiled kernel, plus Triton's shared memory (bytes)."""

    registers: int
    stack: int  # bytes stack frame
    spill_stores: int  # bytes
    spill_loads: int  # bytes
    shared: int = 0

    @property
    def spill_free(self) -> bool:
        return self.stack == 0 and self.spill_stores == 0 and self.spill_loads == 0

    def __str__(self) -> str:
        return (
            f"{self.registers} regs, {self.stack} B stack, {self.spill_stores} B spill stores, "
            f"{self.spill_loads} B spill loads, {self.shared} B shared"
        )


_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


def parse_ptxas_log(log: str, shared: int = 0) -> Resources:
    """Figures from ``ptxas -v`` output of a module with one kernel."""
    frame, regs = _FRAME.findall(log), _REGS.findall(log)
    if len(frame) != 1 or len(regs) != 1:
        raise ValueError(f"expected one kernel's figures in the ptxas log, got:\n{log}")
    stack, stores, loads = map(int, frame[0])
    return Resources(int(regs[0]), stack, stores, loads, shared)


def _arch(capability: int) -> str:
    from triton.backends.nvidia.compiler import sm_arch_from_capability

    return sm_arch_from_capability(capability)


def ptxas_path(capability: int = HOPPER[0]) -> str | None:
    """The ptxas Triton assembles for ``capability`` with, or None where it is missing."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        path = get_ptxas(capability).path
    except Exception:  # no triton, no NVIDIA backend, or no ptxas in the wheel nor on PATH
        return None
    return path if path and os.path.isfile(path) and os.access(path, os.X_OK) else None


def interpreting() -> bool:
    """Whether Triton here interprets kernels (then this process cannot compile one)."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return True
    from triton import knobs

    return bool(knobs.runtime.interpret)


def compile_for(
    kernel,
    signature: dict,
    constexprs: dict,
    *,
    attrs: dict | None = None,
    target: tuple[int, int] = HOPPER,
    **options,
):
    """``triton.compile`` of ``kernel`` for ``GPUTarget("cuda", *target)``; ``options`` are
    Triton's (num_warps, num_stages, ...). FP fusion defaults to on, as a launch does in 3.x."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if interpreting():
        raise RuntimeError(
            "Triton interprets kernels in this process (TRITON_INTERPRET=1): "
            "compile with resources_batch, which uses a child process"
        )
    options.setdefault("enable_fp_fusion", True)
    src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", *target), options=options)


def ptxas_resources(
    ptx: str, capability: int = HOPPER[0], *, fp_fusion: bool = True, shared: int = 0
) -> Resources:
    """Assemble ``ptx`` with Triton's ptxas and flags (``make_cubin``: -lineinfo, the register
    allocation level Triton asks for) plus ``-v``, and parse the report."""
    path = ptxas_path(capability)
    if path is None:
        raise FileNotFoundError(
            "Triton's ptxas is missing (set TRITON_PTXAS_BLACKWELL_PATH or "
            "TRITON_PTXAS_PATH, or pip install nvidia-cuda-nvcc)"
        )
    flags = ["-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={_arch(capability)}"]
    if not fp_fusion:
        flags.append("--fmad=false")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        run = subprocess.run(
            [path, *flags, src, "-o", src + ".o"], capture_output=True, text=True, check=False
        )
    if run.returncode != 0:
        raise RuntimeError(f"ptxas failed ({run.returncode}):\n{run.stderr}")
    return parse_ptxas_log(run.stdout + run.stderr, shared)


def resources(
    kernel,
    signature: dict,
    constexprs: dict,
    *,
    attrs: dict | None = None,
    target: tuple[int, int] = HOPPER,
    **options,
) -> Resources:
    """Compile ahead of time for ``target`` and return ptxas's figures and the shared memory."""
    options.setdefault("enable_fp_fusion", True)
    compiled = compile_for(kernel, signature, constexprs, attrs=attrs, target=target, **options)
    return ptxas_resources(
        compiled.asm["ptx"],
        target[0],
        fp_fusion=options["enable_fp_fusion"],
        shared=compiled.metadata.shared,
    )


def _load(loader: str):
    module, _, name = loader.partition(":")
    return getattr(importlib.import_module(module), name)()


def _encode(job: dict) -> dict:
    job = dict(job)
    job["attrs"] = [[list(k), v] for k, v in (job.get("attrs") or {}).items()]
    return job


def _decode(job: dict) -> dict:
    job = dict(job)
    job["attrs"] = {tuple(k): v for k, v in job.get("attrs") or []}
    job["target"] = tuple(job.get("target", HOPPER))
    return job


def _run_jobs(loader: str, jobs: list[dict]) -> list[Resources]:
    kernel = _load(loader)
    return [
        resources(
            kernel,
            j["signature"],
            j["constexprs"],
            attrs=j.get("attrs"),
            target=tuple(j.get("target", HOPPER)),
            **j.get("options", {}),
        )
        for j in jobs
    ]


def resources_batch(loader: str, jobs: list[dict]) -> list[Resources]:
    """``resources`` of each job (a dict of ``signature``, ``constexprs``, ``attrs``, ``target``,
    ``options``) for the kernel ``loader`` (``"module:function"``) returns; in a child Python
    without ``TRITON_INTERPRET`` where this process interprets kernels."""
    if not interpreting():
        return _run_jobs(loader, jobs)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    request = json.dumps({"loader": loader, "jobs": [_encode(j) for j in jobs]})
    run = subprocess.run(
        [sys.executable, "-m", __name__],
        input=request,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if run.returncode != 0:
        raise RuntimeError(
            f"ahead-of-time compile failed in the child ({run.returncode}):\n{run.stderr[-4000:]}"
        )
    return [Resources(**r) for r in json.loads(run.stdout.strip().splitlines()[-1])]


def _main() -> None:
    request = json.load(sys.stdin)
    out = _run_jobs(request["loader"], [_decode(j) for j in request["jobs"]])
    print(json.dumps([dataclasses.asdict(r) for r in out]))


if __name__ == "__main__":
    _main()
