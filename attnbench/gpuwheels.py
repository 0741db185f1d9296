"""Carried kernels: the wheels a lent GPU machine lacks, fetched where the package registries are
and installed there from a folder, without the network.

The GPU machine (one H200, sm_90; Python 3.12, torch 2.11.0+cu130, Triton 3.6, einops, numpy,
transformers; no network) has none of the optional kernel packages. Three wheels fit it and are
carried in the ignored folder ``.whl/`` of the working tree (about 5 MiB of the 64 MiB that
travels; ``download`` refuses more than ``CAP_MIB``):

    make gpu-wheels                          # = python3 attnbench/gpuwheels.py download --dest .whl
    python -m attnbench.gpuwheels download --dest .whl          # where the package imports (torch)
    python -m attnbench.gpuwheels install --folder .whl --target /tmp/site   # there; prints JSON

Run as a file (``python3 attnbench/gpuwheels.py ...``) it needs neither torch nor the package.

``install`` (:func:`install`, for the prepared GPU check) puts them in a target folder; the caller
puts that folder first on ``sys.path`` / ``PYTHONPATH`` (:func:`environ` for subprocesses)
and, before ``import xformers``, calls :func:`preload` (xformers' C++ ops need ``libcudart.so.12``).
``NOT_CARRIED`` says which packages cannot travel this way, and why.

Only the standard library is imported (no torch, no network at import); only ``download`` uses the
network, through ``python -m pip download``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CAP_MIB = 40  # what the wheels may add to the working tree that travels (64 MiB in all)
DEFAULT_DEST = Path(".whl")
DEFAULT_TARGET = Path("/tmp/site")
PYTHON_VERSION = "3.12"
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)


@dataclass(frozen=True)
class Wheel:
    name: str  # the project's name on PyPI
    version: str  # pinned: the one release that fits the GPU machine
    why: str


CARRIED: tuple[Wheel, ...] = (
    Wheel(
        "fla-core",
        "0.6.0",
        "flash-linear-attention's Triton kernels (module fla; linear.*.fla variants). Pure "
        "Python + Triton (py3-none-any, ~1.1 MB); needs einops, torch>=2.7, triton>=3.3: all "
        "there, nothing else to carry. Newest release.",
    ),
    Wheel(
        "xformers",
        "0.0.35",
        "fused.xformers, sliding_window.xformers and the kv_cache.xformers decoder. The only "
        "release that fits torch 2.11: 0.0.34 and older pin torch==2.10.0/2.9.x exactly, 0.0.35 "
        "(py39-none-manylinux_2_28, ~3.3 MB) needs torch>=2.10 because its _C.so uses only "
        "torch's stable C ABI (aoti_torch_*/torch_* shims, no c10/at C++ symbols). It was built "
        "with torch 2.10.0+cu128 and CUDA 12.8 (sm 7.5/8.0/9.0a) and links libcudart.so.12, "
        "which the cu130 machine lacks: see nvidia-cuda-runtime-cu12. Its flash path is torch's "
        "own FlashAttention; its flash3 path needs flash_attn_3 (not carried).",
    ),
    Wheel(
        "nvidia-cuda-runtime-cu12",
        "12.8.90",
        "libcudart.so.12 (CUDA 12.8, the one xformers' _C.so was built with; ~0.9 MB), loaded "
        "by preload() before xformers imports; without it xformers still imports but its "
        "cutlass kernels are missing. The 580 driver runs CUDA 12 code. Risk: two CUDA runtimes "
        "(12.8 for xformers, 13.0 for torch) in one process share the driver's primary context "
        "and streams; supported by the driver, but not what xformers was tested with.",
    ),
)

# requirement -> why it cannot be carried as a wheel
NOT_CARRIED: dict[str, str] = {
    "flash-attn": (
        "no wheel on PyPI (sdist only, 2.8.3.post2 the newest): its setup.py compiles the CUDA "
        "kernels with nvcc against the installed CUDA torch (or fetches a prebuilt wheel, "
        "matched to torch, CUDA and C++ ABI, from GitHub releases: no package registry, and the "
        "GPU machine has no network). Building it takes far longer than a 15-minute loan, and "
        "building it here would need torch 2.11+cu130 and nvcc 13 here."
    ),
    "flash_attn_3": (
        "FlashAttention-3 (modules flash_attn_3, flash_attn_interface) is not on PyPI at all; it "
        "is built with nvcc from flash-attention's hopper/ folder (sm_90a kernels), a CUDA build "
        "of the same cost as flash-attn's."
    ),
}

# shared libraries in the carried wheels that must be loaded before their users import
PRELOAD: tuple[str, ...] = ("nvidia/cuda_runtime/lib/libcudart.so.12",)
# top-level folders that several distributions share: their empty __init__.py is removed after
# an install so that the target's copy cannot shadow the machine's own (nvidia.* of torch cu130)
NAMESPACES: tuple[str, ...] = ("nvidia",)


def _project(wheel: Path) -> str:
    """The normalised project name of a wheel file (``fla_core-0.6.0-...whl`` -> ``fla-core``)."""
    return re.sub(r"[-_.]+", "-", wheel.name.split("-", 1)[0]).lower()


def _version(wheel: Path) -> str:
    return wheel.name.split("-")[1]


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def check_size(paths: list[Path], cap_mib: float = CAP_MIB) -> int:
    """Total bytes of ``paths``; ValueError naming every file's size when it is over the cap."""
    sizes = {Path(p).name: Path(p).stat().st_size for p in paths}
    total = sum(sizes.values())
    if total > cap_mib * 2**20:
        listing = ", ".join(f"{name}: {_mib(n)}" for name, n in sorted(sizes.items()))
        raise ValueError(
            f"the wheels take {_mib(total)}, over the cap of {cap_mib} MiB that "
            f"may travel with the working tree ({listing})"
        )
    return total


def download_command(dest: Path, wheels: tuple[Wheel, ...] = CARRIED) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        PYTHON_VERSION,
        "--implementation",
        "cp",
    ]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    return cmd + ["-d", str(dest)] + [f"{w.name}=={w.version}" for w in wheels]


def download(dest: Path, cap_mib: float = CAP_MIB) -> list[Path]:
    """Download the pinned ``CARRIED`` wheels into ``dest`` (a CPU machine with the registries).

    Other versions of the same projects left in ``dest`` are removed (two versions of one project
    stop the install). Every wheel in ``dest`` travels, so the size cap counts them all. Returns
    the carried wheels' paths."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(download_command(dest), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"pip download failed (exit {proc.returncode}):\n{(proc.stderr or proc.stdout)[-2000:]}"
        )
    pinned = {re.sub(r"[-_.]+", "-", w.name).lower(): w.version for w in CARRIED}
    got: list[Path] = []
    for wheel in sorted(dest.glob("*.whl")):
        want = pinned.get(_project(wheel))
        if want is None:
            continue
        if _version(wheel) != want:
            wheel.unlink()
        else:
            got.append(wheel)
    missing = sorted(set(pinned) - {_project(w) for w in got})
    if missing:
        raise RuntimeError(f"pip download left no wheel for {', '.join(missing)} in {dest}")
    check_size(sorted(dest.glob("*.whl")), cap_mib)
    return got


def install(folder: Path, target: Path = DEFAULT_TARGET) -> dict:
    """Install every wheel in ``folder`` into ``target`` with pip, without the network.

    Returns ``{"installed": [wheel file names], "target": str(target)}``, or ``{"skipped": why}``
    when the folder is missing or holds no wheel. It does not touch ``sys.path``: the caller puts
    ``target`` first on it (or on PYTHONPATH, :func:`environ`) and calls :func:`preload`.
    RuntimeError, with the end of pip's stderr, when pip fails."""
    folder, target = Path(folder), Path(target)
    if not folder.is_dir():
        return {
            "skipped": f"no wheel folder {folder} (make gpu-wheels fetches it where the "
            f"package registries are, then it travels with the working tree)"
        }
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        return {"skipped": f"no wheels in {folder}"}
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        "--no-index",
        "--no-deps",
        "--no-compile",
        "--no-cache-dir",
        "--upgrade",
        "--target",
        str(target),
        *map(str, wheels),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"pip install of {len(wheels)} wheels from {folder} into {target} "
            f"failed (exit {proc.returncode}):\n"
            f"{(proc.stderr or proc.stdout)[-2000:]}"
        )
    for ns in NAMESPACES:
        init = target / ns / "__init__.py"
        if init.is_file() and init.stat().st_size == 0:
            init.unlink()
    return {"installed": [w.name for w in wheels], "target": str(target)}


def preload(target: Path = DEFAULT_TARGET) -> list[str]:
    """Load the carried shared libraries (``PRELOAD``) found under ``target`` into this process,
    globally, so that xformers' _C.so finds libcudart.so.12; call it before ``import xformers``.
    Returns the paths loaded."""
    import ctypes

    loaded = []
    for rel in PRELOAD:
        path = Path(target) / rel
        if path.is_file():
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            loaded.append(str(path))
    return loaded


def environ(target: Path = DEFAULT_TARGET, base: dict | None = None) -> dict[str, str]:
    """A copy of ``base`` (default ``os.environ``) for subprocesses: ``target`` first on
    PYTHONPATH and the folders of ``PRELOAD`` first on LD_LIBRARY_PATH."""
    env = dict(os.environ if base is None else base)

    def prepend(key: str, paths: list[str]) -> None:
        rest = [p for p in env.get(key, "").split(os.pathsep) if p and p not in paths]
        env[key] = os.pathsep.join(paths + rest)

    prepend("PYTHONPATH", [str(target)])
    libs = sorted(
        {str((Path(target) / rel).parent) for rel in PRELOAD if (Path(target) / rel).is_file()}
    )
    if libs:
        prepend("LD_LIBRARY_PATH", libs)
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m attnbench.gpuwheels",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("download", help="fetch the carried wheels (needs the package registries)")
    p.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    p = sub.add_parser("install", help="install the wheels of a folder, offline; prints JSON")
    p.add_argument("--folder", type=Path, default=DEFAULT_DEST)
    p.add_argument("--target", type=Path, default=DEFAULT_TARGET)
    args = parser.parse_args(argv)
    if args.cmd == "download":
        wheels = download(args.dest)
        for w in wheels:
            print(f"{w}  {_mib(w.stat().st_size)}")
        total = check_size(sorted(Path(args.dest).glob("*.whl")))
        print(
            f"{len(wheels)} carried wheels; {Path(args.dest)} holds {_mib(total)} "
            f"(cap {CAP_MIB} MiB)"
        )
        for name, why in NOT_CARRIED.items():
            print(f"not carried: {name}: {why}")
        return 0
    print(json.dumps(install(args.folder, args.target)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
