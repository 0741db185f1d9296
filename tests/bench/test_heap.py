"""The CPU timing worker's heap (``timing.cpu_heap``): kept for reuse within a case and held
between cases up to a share of the machine, so neither a timed call nor the next case pays the
kernel zeroing fresh pages."""

import json
import os
import subprocess
import sys

import pytest

from attnbench.bench import measure
from attnbench.bench import suite as suite_mod
from attnbench.settings import TimingConfig

# Allocate, touch and free a 64 MiB tensor three times (one case's repetitions); report each
# round's minor page faults, the resident set before and after the worker's between-case step, the
# faults of the same allocation after it (the next case), and the resident set after a forced trim.
_PROBE = r"""
import json, resource, torch
from attnbench.bench import measure, worker
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def call():
    before = faults()
    x = torch.empty(16 << 20).fill_(1.0)
    del x
    return faults() - before
rounds = [call() for _ in range(3)]
held = measure.held_bytes("cpu")
worker._return_heap()
between = measure.held_bytes("cpu")
next_case = call()
worker._return_heap(hold=0)
print(json.dumps({"faults": rounds, "held": held, "between": between, "next_case": next_case,
                  "after_trim": measure.held_bytes("cpu")}))
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
def test_a_kept_heap_serves_the_next_call_and_the_next_case_without_fresh_pages():
    kept = _probe(measure.timing_env(TimingConfig(), "cpu"))
    # the first call faults its 64 MiB in (on 2 MiB pages); the next ones reuse them
    first = kept["faults"][0]
    assert first >= 32 and max(kept["faults"][1:]) < 0.05 * first
    # between cases the timing worker holds what it freed (far below its share of the machine),
    # so the next case reuses those pages too
    assert kept["held"] - kept["between"] < (16 << 20)
    assert kept["next_case"] < 0.05 * first
    # past what it may hold it gives the heap back
    assert kept["held"] - kept["after_trim"] > (48 << 20)
    returned = _probe(measure.timing_env(TimingConfig(cpu_heap="return"), "cpu"))
    assert min(returned["faults"]) > 0.5 * first  # glibc's default: every call pays again


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_a_worker_that_trims_after_every_case_faults_the_next_case_in_again():
    # the planted wrong policy (what the timing worker did before, and what the memory worker
    # must do): hold nothing between cases
    env = {**measure.timing_env(TimingConfig(), "cpu"), measure.HEAP_HOLD_ENV: "0"}
    trimmed = _probe(env)
    assert trimmed["held"] - trimmed["between"] > (48 << 20)
    assert trimmed["next_case"] > 0.5 * trimmed["faults"][0]
    assert measure.MEMORY_ENV[measure.HEAP_HOLD_ENV] == "0"


def test_the_heap_setting_reaches_the_cpu_timing_worker_only():
    keep = measure.timing_env(TimingConfig(env={"THP_MEM_ALLOC_ENABLE": "1"}), "cpu")
    hold = {measure.HEAP_HOLD_ENV: str(measure.heap_hold_bytes())}
    assert keep == {**measure.KEEP_HEAP_ENV, **hold, "THP_MEM_ALLOC_ENABLE": "1"}
    assert measure.heap_hold_bytes() > 0
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
