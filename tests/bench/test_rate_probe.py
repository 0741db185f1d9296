"""The rate probe (``measure.RateProbe``): each row's ceiling scaled to the machine's speed while
the row was timed, so a slow spell of a shared machine moves a row's time but not its fraction."""

from __future__ import annotations

import time

import pytest

from attnbench.bench import measure
from attnbench.bench.rows import efficiency


class _Machine:
    """A machine whose speed is ``slowdown``: a kernel and a probe that take that much longer."""

    def __init__(self, kernel_ms: float, probe_ms: float):
        self.kernel_ms, self.probe_ms, self.slowdown, self.probes = kernel_ms, probe_ms, 1.0, 0

    def kernel(self):
        time.sleep(self.kernel_ms * self.slowdown / 1e3)

    class _Probe:
        flops = 2 * measure.PROBE_N**3

        def __init__(self, machine):
            self.machine = machine

        def __call__(self) -> float:
            self.machine.probes += 1
            return self.machine.probe_ms * self.machine.slowdown

    def probe(self):
        return self._Probe(self)


def _row(machine: _Machine, flops: float) -> dict:
    probe = machine.probe()
    t = measure.time_fn(machine.kernel, "cpu", budget_s=0.25, min_reps=5, probe=probe)
    return {
        "status": "ok",
        "reason": "",
        "dtype": "float32",
        "time_ms": t.median_ms,
        "flops_per_s": flops / (t.median_ms / 1e3),
        "probe_flops_per_s": probe.flops / (t.probe_ms / 1e3),
    }


def test_the_probe_runs_before_between_and_after_the_repetitions():
    machine = _Machine(kernel_ms=30, probe_ms=1.0)
    t = measure.time_fn(machine.kernel, "cpu", budget_s=0.35, min_reps=5, probe=machine.probe())
    # one before, one every PROBE_EVERY_S of repetitions (0.35 s: 1), one after
    assert 3 <= machine.probes <= 4 and t.probe_ms == pytest.approx(1.0)
    assert measure.time_fn(machine.kernel, "cpu", budget_s=0.05).probe_ms is None


def test_a_slow_spell_moves_the_time_but_not_the_fraction_of_the_ceiling():
    machine = _Machine(kernel_ms=20, probe_ms=1.0)
    ceilings = {"float32": 100e9}
    probe_at_ceiling = 2 * measure.PROBE_N**3 / 1e-3  # the probe's rate next to the ceiling
    flops = 1e9  # 50 GFLOP/s at full speed: half the ceiling
    quick = _row(machine, flops)
    machine.slowdown = 1.3  # another tenant takes the memory bus for a minute
    slow = _row(machine, flops)
    for row in (quick, slow):
        efficiency(row, ceilings, None, "", probe_at_ceiling)
    assert slow["time_ms"] / quick["time_ms"] == pytest.approx(1.3, rel=0.08)
    assert slow["machine_rate"] == pytest.approx(1 / 1.3, rel=1e-6)
    assert slow["ceiling_measured_flops_per_s"] == 100e9
    assert slow["ceiling_flops_per_s"] == pytest.approx(100e9 / 1.3)
    assert slow["frac_of_ceiling"] == pytest.approx(quick["frac_of_ceiling"], rel=0.08)
    # the control: the ceiling measured at the start alone divides the slow row by the fast machine
    unscaled = dict(slow)
    efficiency(unscaled, ceilings, None, "")
    assert unscaled["frac_of_ceiling"] == pytest.approx(quick["frac_of_ceiling"] / 1.3, rel=0.08)


def test_a_row_faster_than_the_scaled_ceiling_is_implausible():
    row = {"status": "ok", "reason": "", "dtype": "float32", "flops_per_s": 80e9}
    row["probe_flops_per_s"] = 50e9  # the machine ran at half speed while this row was timed
    efficiency(row, {"float32": 100e9}, None, "", probe_at_ceiling=100e9)
    assert row["status"] == "implausible" and "1.60x" in row["reason"]


def test_the_real_probe_measures_this_machine_near_its_ceiling():
    probe = measure.RateProbe("cpu")
    rate = probe.rate(0.05)
    ceiling = measure.ceilings(["float32"], "cpu", budget_s=0.4)
    assert ceiling["probe_flops_per_s"] > 0
    # a 384^3 product is smaller than the ceiling's: slower, but of its order
    assert 0.2 < rate / ceiling["matmul_flops_per_s"]["float32"] < 2.0
