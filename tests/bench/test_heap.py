"""The CPU timing worker's heap (``timing.cpu_heap``): kept for reuse within a case, so a timed
call does not pay the kernel zeroing fresh pages, and given back between cases."""

import json
import os
import subprocess
import sys

import pytest

from attnbench.bench import measure
from attnbench.bench import suite as suite_mod
from attnbench.settings import TimingConfig

# Allocate, touch and free a 64 MiB tensor three times; report each round's minor page faults,
# then the resident set before and after the worker's between-case trim.
_PROBE = r"""
import json, resource, torch
from attnbench.bench import measure, worker
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds = []
for _ in range(3):
    before = faults()
    x = torch.empty(16 << 20).fill_(1.0)
    del x
    rounds.append(faults() - before)
held = measure.held_bytes("cpu")
worker._return_heap()
print(json.dumps({"faults": rounds, "held": held, "after_trim": measure.held_bytes("cpu")}))
"""


def _probe(env: dict[str, str]) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env={**base, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_a_kept_heap_serves_the_next_call_without_fresh_pages():
    kept = _probe(measure.timing_env(TimingConfig(), "cpu"))
    # the first call faults its 64 MiB in (on 2 MiB pages); the next ones reuse them
    first = kept["faults"][0]
    assert first >= 32 and max(kept["faults"][1:]) < 0.05 * first
    # between cases the worker gives the heap back
    assert kept["held"] - kept["after_trim"] > (48 << 20)
    returned = _probe(measure.timing_env(TimingConfig(cpu_heap="return"), "cpu"))
    assert min(returned["faults"]) > 0.5 * first  # glibc's default: every call pays again


def test_the_heap_setting_reaches_the_cpu_timing_worker_only():
    keep = measure.timing_env(TimingConfig(env={"THP_MEM_ALLOC_ENABLE": "1"}), "cpu")
    assert keep == {**measure.KEEP_HEAP_ENV, "THP_MEM_ALLOC_ENABLE": "1"}
    assert measure.timing_env(TimingConfig(cpu_heap="return"), "cpu") == {}
    assert measure.timing_env(TimingConfig(), "cuda:0") == {}
    # the suite's own [timing.env] wins
    mine = {"MALLOC_MMAP_MAX_": "7"}
    assert measure.timing_env(TimingConfig(env=mine), "cpu")["MALLOC_MMAP_MAX_"] == "7"
    # the memory worker overrides every key the kept heap sets: its peak is one call's own
    assert set(measure.KEEP_HEAP_ENV) <= set(measure.MEMORY_ENV)


def test_a_bad_heap_setting_names_the_valid_ones():
    with pytest.raises(ValueError, match="cpu_heap 'cache'; valid: keep, return"):
        suite_mod.from_dict({"op": {"variants": ["fused.sdpa"]}, "timing": {"cpu_heap": "cache"}})
