"""Per-machine choices of an implementation's tile or chunk size: a short autotune on the shape at
hand, run on the first call (as Triton's autotuner and ``torch.backends.cudnn.benchmark`` do),
cached per key, and recorded in every benchmark row that used it.

    size = tune.choose("chunk", key, (32, 64, 128), run, default=64, device=q.device)
    with tune.recording() as chosen:   # the worker, around a case
        ...                            # chosen: [{"param", "key", "choice", "ms", "tuned"}]
    tune.seed(chosen)                  # another process reuses those choices (memory worker)

A parameter given as ``"auto"`` (``tune.AUTO``) is chosen here; an integer is used as given. The
sizes tried are the implementation's; the fastest wins only by more than ``MARGIN`` over the
default, so that timing noise does not flip a choice between repeats. Nothing about the maths
changes with the choice: the gate checks whichever was chosen, and FLOPs are the maths'.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

AUTO = "auto"
MARGIN = 0.03  # a candidate must beat the default by this share to replace it
REPS = 3  # timed calls per candidate (the fastest counts), after one untimed

_CACHE: dict[tuple[str, str], dict[str, Any]] = {}  # (param, key as text) -> the choice
_RECORDINGS: list[list[dict[str, Any]]] = []


def _sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def key_text(key: tuple) -> str:
    """A key as rows record it: its parts joined by ``|``."""
    return "|".join(str(k) for k in key)


def choose(
    param: str,
    key: tuple,
    candidates: Sequence[Any],
    run: Callable[[Any], object],
    *,
    default: Any,
    device: torch.device | str | None = None,
) -> Any:
    """The fastest of ``candidates`` for ``key`` (tuned once per process: ``run(candidate)`` once
    untimed, then ``REPS`` timed calls, the fastest counted), or ``default`` unless a candidate
    beats it by more than ``MARGIN``."""
    full = (param, key_text(key))
    entry = _CACHE.get(full)
    tuned = entry is None
    if tuned:
        times: dict[Any, float] = {}
        for c in candidates:
            run(c)
            _sync(device)
            best = float("inf")
            for _ in range(REPS):
                t0 = time.perf_counter()
                run(c)
                _sync(device)
                best = min(best, time.perf_counter() - t0)
            times[c] = round(best * 1e3, 4)
        choice = min(times, key=times.get)
        if default in times and times[choice] > times[default] * (1 - MARGIN):
            choice = default
        entry = {"param": param, "key": full[1], "choice": choice, "ms": times}
        _CACHE[full] = entry
    for log in _RECORDINGS:
        log.append({**entry, "ms": dict(entry["ms"]), "tuned": tuned})
    return entry["choice"]


@contextlib.contextmanager
def recording() -> Iterator[list[dict[str, Any]]]:
    """Every choice made or reused inside the block, once per (param, key), in order;
    ``tuned`` says whether it was tuned there or reused."""
    log: list[dict[str, Any]] = []
    _RECORDINGS.append(log)
    try:
        yield log
    finally:
        _RECORDINGS.remove(log)
        seen: dict[tuple, dict[str, Any]] = {}
        for e in log:
            k = (e["param"], e["key"])
            seen[k] = {**e, "tuned": seen[k]["tuned"] or e["tuned"]} if k in seen else e
        log[:] = list(seen.values())


def choice(entry: dict[str, Any]) -> dict[str, Any]:
    """A recorded entry without how it was obtained (``tuned``): the choice itself."""
    return {k: entry[k] for k in ("param", "key", "choice", "ms")}


def seed(chosen: list[dict[str, Any]] | None) -> None:
    """Reuse ``chosen`` (a recording's entries, from another process) instead of tuning again, so
    a case's memory is measured at the sizes its time was."""
    for e in chosen or ():
        _CACHE[(e["param"], e["key"])] = choice(e)


def clear() -> None:
    """Forget every choice (tests)."""
    _CACHE.clear()
