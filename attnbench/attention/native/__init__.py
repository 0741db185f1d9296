"""Native CPU kernels: C sources beside this module, compiled on first use by the machine's C
compiler and loaded with ctypes.

    library("linear_chunked") -> ctypes.CDLL     compiled once per source, compiler and CPU
    unavailable("linear_chunked") -> [reason]     empty when it builds and loads

Each source is compiled with ``-O3 -march=native`` (its vector width is the build machine's), so
the cached library is keyed by the source's hash, the compiler's version, the flags and the
processor (model and flags from ``/proc/cpuinfo``): a cache shared between machines never hands an
AVX-512 build to an AVX2 processor. The cache is ``$ATTNBENCH_NATIVE_CACHE``, or
``$XDG_CACHE_HOME/attnbench/native`` (``~/.cache/attnbench/native``). The compiler is ``$CC`` or
``cc``. A build is written to a temporary file and renamed into place, so processes that build
at once (launcher slots, test workers) never load half a file. Nothing here needs PyTorch's
headers: the kernels take raw float pointers, and a call costs a few microseconds.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCES = Path(__file__).parent
FLAGS = ("-O3", "-march=native", "-std=gnu11", "-fPIC", "-shared", "-fno-math-errno")


class NativeUnavailable(RuntimeError):
    """The kernel cannot be built or loaded here; the message says why."""


def compiler() -> str:
    return os.environ.get("CC") or "cc"


def cache_dir() -> Path:
    env = os.environ.get("ATTNBENCH_NATIVE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "attnbench" / "native"


def _processor() -> str:
    """The processor's model and flags (what ``-march=native`` depends on)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    keep = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(dict.fromkeys(keep))  # the first core's lines (all cores agree)


def _compiler_version(cc: str) -> str:
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NativeUnavailable(f"no C compiler: {cc!r} cannot run ({e}); set CC") from e
    return out.stdout.splitlines()[0] if out.stdout else cc


def _source(name: str) -> Path:
    path = SOURCES / f"{name}.c"
    if not path.is_file():
        known = sorted(p.stem for p in SOURCES.glob("*.c"))
        raise ValueError(f"no native kernel {name!r}; known: {', '.join(known)}")
    return path


def build(name: str) -> Path:
    """The compiled library of ``name``, built into the cache unless it is there already."""
    src = _source(name)
    cc = compiler()
    if shutil.which(cc) is None:
        raise NativeUnavailable(f"no C compiler: {cc!r} is not on PATH (set CC to one)")
    key = hashlib.sha256(
        "\0".join([src.read_text(), _compiler_version(cc), " ".join(FLAGS), _processor()]).encode()
    ).hexdigest()[:16]
    out = cache_dir() / f"{name}-{key}.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        res = subprocess.run(
            [cc, *FLAGS, str(src), "-o", tmp], capture_output=True, text=True, timeout=300
        )
        if res.returncode != 0:
            raise NativeUnavailable(
                f"{cc} could not compile {src.name}: {res.stderr.strip()[-800:]}"
            )
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


@functools.cache
def library(name: str) -> ctypes.CDLL:
    """``name``'s kernels, built if needed and loaded (once per process)."""
    try:
        return ctypes.CDLL(str(build(name)))
    except OSError as e:
        raise NativeUnavailable(f"the built {name} library does not load: {e}") from e


@functools.cache
def unavailable(name: str) -> tuple[str, ...]:
    """Why ``name`` cannot run here (empty when it can): for a variant's ``reasons``."""
    try:
        library(name)
    except NativeUnavailable as e:
        return (str(e),)
    return ()


@functools.cache
def _pool(threads: int):
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(threads, thread_name_prefix="attnbench-native")


def over_heads(fn, heads: int, *args, threads: int | None = None) -> None:
    """``fn(h0, h1, *args)`` for ranges [h0, h1) of ``heads`` heads, one range per thread
    (``threads``: PyTorch's intra-op count); ctypes releases the GIL during each call. ``args``:
    ints (int64), lists of ints (int64 arrays), CPU tensors (their data pointers; the kernel
    reads them through the strides it is given) and None (a null pointer). A non-zero return
    (a failed workspace allocation) raises ``MemoryError``."""
    import torch

    cargs = []
    for a in args:
        if a is None:
            cargs.append(ctypes.c_void_p(None))
        elif isinstance(a, torch.Tensor):
            if a.device.type != "cpu":
                raise TypeError(f"native kernels take CPU tensors, got one on {a.device}")
            cargs.append(ctypes.c_void_p(a.data_ptr()))
        elif isinstance(a, (list, tuple)):
            cargs.append((ctypes.c_int64 * len(a))(*a))
        else:
            cargs.append(ctypes.c_int64(a))
    threads = max(1, min(threads or torch.get_num_threads(), heads))

    def one(lo: int, hi: int) -> None:
        if fn(ctypes.c_int64(lo), ctypes.c_int64(hi), *cargs) != 0:
            raise MemoryError(f"{fn.__name__}: its workspace could not be allocated")

    if threads == 1:
        return one(0, heads)
    cuts = [heads * i // threads for i in range(threads + 1)]
    list(_pool(threads).map(one, cuts[:-1], cuts[1:]))
