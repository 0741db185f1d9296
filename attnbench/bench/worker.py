"""The worker: measures cases in a separate process, one at a time, and reports a row for each.

The launcher (``attnbench.bench.runner``) starts ``python -m attnbench.bench.worker`` with
``subprocess.Popen`` and two pipes, and sends it one request at a time. A case that raises becomes
a row with status ``error`` or ``oom``; a case that hangs or kills the process is recorded by the
launcher (``timeout``, ``crash``), which then starts a fresh worker and goes on.

A worker has a role, fixed when it starts:

- ``time``: on a CPU a heap kept for reuse within a case (``timing.cpu_heap``, trimmed between
  cases), plus the suite's ``timing.env`` (the same for every variant and the ceiling). For
  each op or model case: the variant's probes (a kernel that cannot take the case is
  ``unsupported``), inputs, masks and plans (``mask_ms``), the first call of the timed
  pass (compilation, ``first_call_ms``), the correctness gate of that pass against the float64
  reference (``attnbench.bench.gate``: ``incorrect`` rows keep no timing), ``warmup`` more untimed
  calls, then the timing. On CUDA it also takes the allocator's peak.
- ``memory`` (CPU): the glibc settings that return freed blocks to the system
  (``measure.MEMORY_ENV``): builds the same case, runs the pass once, then measures the peak
  resident set of one more call. Nothing is timed in it.
- ``train``: quality and recall cases (training and evaluation; nothing timed but the training
  throughput they report).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os
import time
import traceback
import zlib
from collections.abc import Callable
from typing import Any

import torch

from attnbench import tune
from attnbench.bench import gate, measure
from attnbench.bench.flops import attention_flops, model_flops
from attnbench.case import Case
from attnbench.registry import get_variant, load_plugin

DEFAULT_THREADS = torch.get_num_threads()  # PyTorch's default here, before init sets the timing's


class _all_threads:
    """PyTorch's default thread count for work that is not timed (inputs, references, the gate's
    checks), while the timed repetitions keep the worker's timing threads (one on a CPU)."""

    def __enter__(self):
        self.timed = torch.get_num_threads()
        torch.set_num_threads(max(self.timed, DEFAULT_THREADS))

    def __exit__(self, *exc):
        torch.set_num_threads(self.timed)


def _classify(exc: BaseException) -> str:
    text = str(exc).lower()
    if (
        isinstance(exc, (MemoryError, torch.OutOfMemoryError))
        or "out of memory" in text
        or "can't allocate memory" in text
    ):
        return "oom"
    return "error"


class Prepared:
    """A case ready to run, on two input sets: ``fns[i]()`` runs the pass once on set ``i``;
    ``checks[i](result)`` gates its first result (None when right); ``timed_checks[i]`` gates the
    result of a timed repetition (default: the same); ``before(i)``, when given, runs untimed
    before each call (a decoder restoring its state)."""

    def __init__(
        self,
        fns: list[Callable[[], Any]],
        checks: list[Callable[[Any], str | None]],
        tokens: int,
        flops: int,
        extra: dict[str, Any],
        before: Callable[[int], None] | None = None,
        timed_checks: list[Callable[[Any], str | None]] | None = None,
    ):
        self.fns, self.checks, self.tokens, self.flops = fns, checks, tokens, flops
        self.extra, self.before = extra, before
        self.timed_checks = timed_checks or checks

    @property
    def fn(self) -> Callable[[], Any]:
        return self.fns[0]


INPUT_SETS = 2  # timed alternately, each gated
TIMED_SETS = 2  # of an op case's input sets, the first two are timed; all are gated
DECODE_STEPS = 4  # consecutive steps the decode gate checks before timing


def case_seed(case: Case) -> int:
    """The gate's seed for ``case``: from its id, so each case samples its own rows."""
    return zlib.crc32(case.case_id.encode()) % (2**31 - 8)


def _inputs(case: Case, device: torch.device, seed: int = 0, dist: str = "normal"):
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rand(heads):
        return torch.randn(case.batch, case.seq_len, heads, case.head_dim, generator=g)

    q, k, v = rand(case.heads), rand(case.kv_heads), rand(case.kv_heads)
    q, k = gate.shape_inputs(q, k, dist)
    return [x.to(device=device, dtype=case.dtype) for x in (q, k, v)] + [g]


def _record_kernel(extra: dict, variant, q, k, v, causal: bool) -> None:
    kernel = variant.kernel_used(q, k, v, causal=causal)
    if kernel:
        extra["kernel"] = kernel


def prepare_op(case: Case, rows: int) -> Prepared:
    """Inputs (two sets, from the gate's two distributions for this math), masks and plans of an
    op case, and its pass as functions (``mask_ms`` covers what the variant builds per shape,
    and for decode the decoders with their caches)."""
    variant = get_variant(case.variant)
    device = torch.device(case.device)
    # two standard-normal sets, timed alternately and gated; the math's second distribution
    # gated on its first call only (large scores make some kernels 5-15 % faster or slower:
    # timed, they would mix two speeds into one median)
    dists = ("normal", "normal", gate.distributions_for(variant)[1])
    b, n = case.batch, case.seq_len
    kw = {} if case.causal else {"causal": False}
    seed = case_seed(case)
    extra: dict[str, Any] = {
        "gate_inputs": list(dists),
        "gate_seed": seed,
        "timed_inputs": TIMED_SETS,
    }
    sets = [_inputs(case, device, seed=seed + i, dist=dist) for i, dist in enumerate(dists)]
    t0 = time.perf_counter()
    held = measure.held_bytes(device)
    variant.prepare(case)  # per-shape state (masks, plans): the variant's, not an input
    measure.sync(device)
    extra["setup_mem_bytes"] = max(0, measure.held_bytes(device) - held)
    if case.pass_ == "decode":
        return _prepare_decode(case, variant, sets, extra, t0)
    extra["mask_ms"] = (time.perf_counter() - t0) * 1e3
    flops = attention_flops(variant, case)
    fns, checks, timed = [], [], []
    for i, (q, k, v, _) in enumerate(sets):
        if case.pass_ == "fwd":

            def fn(q=q, k=k, v=v):
                with torch.no_grad():
                    return variant(q, k, v, **kw)

            fns.append(fn)
            checks.append(gate.ForwardGate(variant, q, k, v, case.causal, rows, seed + i).check)
            continue
        inputs = [x.requires_grad_() for x in (q, k, v)]  # a dispatcher sees the backward too
        grads = gate.GradientGate(variant, q, k, v, case.causal, rows, seed=seed + i)
        if case.pass_ == "fwd_bwd":

            def fn(inputs=inputs, grads=grads):
                out = variant(*inputs, **kw)
                return torch.autograd.grad(out, inputs, grads.grad)
        else:  # bwd: the backward alone, from one forward whose graph is kept
            holder: dict[str, Any] = {}

            def fn(inputs=inputs, grads=grads, holder=holder):
                if "out" not in holder:
                    holder["out"] = variant(*inputs, **kw)
                return torch.autograd.grad(holder["out"], inputs, grads.grad, retain_graph=True)

        def first_check(result, grads=grads):
            # the first result, then a fresh forward and backward with its output checked too
            return grads.check(result) or grads.check_fresh()

        fns.append(fn)
        checks.append(first_check)
        timed.append(grads.check)
    _record_kernel(extra, variant, sets[0][0], sets[0][1], sets[0][2], case.causal)
    return Prepared(fns, checks, b * n, flops, extra, timed_checks=timed or None)


def _prepare_decode(case: Case, variant, sets, extra: dict, t0: float) -> Prepared:
    """One decoder per input set, filled with N tokens; each timed step decodes token N from
    that same state (restored untimed before every repetition)."""
    device = torch.device(case.device)
    b, n, h, d = case.batch, case.seq_len, case.heads, case.head_dim

    def new_decoder(max_len=n + 1):
        return variant.decoder(
            b, h, d, kv_heads=case.kv_heads, max_len=max_len, dtype=case.dtype, device=device
        )

    decs, snaps, fns, checks, timed = [], [], [], [], []
    for q, k, v, g in sets:
        dec = new_decoder()
        dec.fill(k, v)
        q1, k1, v1 = (
            torch.randn(b, 1, x.shape[2], d, generator=g).to(device=device, dtype=case.dtype)
            for x in (q, k, v)
        )
        decs.append(dec)
        snaps.append(dec.snapshot())
        full = [torch.cat([x, x1], dim=1) for x, x1 in ((q, q1), (k, k1), (v, v1))]

        def fn(dec=dec, q1=q1, k1=k1, v1=v1):
            return dec.step(q1, k1, v1)

        def step_check(out, full=full):
            return gate.check_decode_step(variant, *full, out)

        def first_check(out, full=full, step_check=step_check):  # then consecutive steps
            return step_check(out) or gate.check_decode_steps(
                variant, *full, DECODE_STEPS, lambda: new_decoder(full[0].shape[1])
            )

        fns.append(fn)
        checks.append(first_check)
        timed.append(step_check)
    measure.sync(device)
    extra["mask_ms"] = (time.perf_counter() - t0) * 1e3

    def before(i):
        decs[i].restore(snaps[i])

    dec = decs[0]
    extra.update(
        decoder=dec.name,
        cache_bytes=dec.cache_bytes(),
        read_bytes=dec.read_bytes(),
        decode_steps_gated=DECODE_STEPS,
    )
    kernel = dec.kernel(sets[0][0][:, :1])
    if kernel:  # where a dispatcher picks the kernel: the one it picked
        extra["kernel"] = kernel
    return Prepared(
        fns, checks, b, attention_flops(variant, case), extra, before=before, timed_checks=timed
    )


def prepare_model(case: Case, gate_on: bool) -> Prepared:
    """A language model with the variant (``attnbench.bench.lm``: the identical LM at a preset,
    or ``hf:NAME`` for a transformers model): train step, prefill or decode, on two token sets."""
    from attnbench.bench.lm import LanguageModel

    device = torch.device(case.device)
    b, n = case.batch, case.seq_len
    lm = LanguageModel.build(case)
    lm.scale_query_key(gate.PEAK_QK)  # peaked attention: what the gate can see (every variant)
    g = torch.Generator().manual_seed(1)
    idxs = [
        torch.randint(0, lm.vocab_size, (b, n + 1), generator=g).to(device)
        for _ in range(INPUT_SETS)
    ]
    extra: dict[str, Any] = {
        "model_params": lm.num_params(),
        "model_kind": lm.kind,
        "qk_scale": gate.PEAK_QK,
    }
    flops = model_flops(lm, b, n, case.pass_)
    if case.pass_ == "train_step":
        lm.train()
        got = before = None
        if gate_on:  # loss and gradient norm before any optimizer step changes the weights
            before = lm.with_attention(lm.variant, case.dtype)
            got = gate.loss_and_grads(lm, idxs[0], n)
        opt = torch.optim.AdamW(lm.module.parameters(), lr=1e-4)
        fns = []
        for idx in idxs:

            def fn(idx=idx):
                loss = lm.loss(idx[:, :-1], idx[:, 1:])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                return loss.detach()

            fns.append(fn)

        def first(_):
            return gate.ModelGate(before, "train_step", idxs[0], n).check(got)

        def finite(loss):  # the weights move with every step: only the loss's finiteness
            return None if torch.isfinite(loss).all() else f"train step loss {float(loss)}"

        return Prepared(fns, [first, finite], b * n, flops, extra, timed_checks=[finite] * 2)
    lm.train(False)
    if case.pass_ == "prefill":
        fns, checks = [], []
        for idx in idxs:

            def fn(idx=idx):
                with torch.no_grad():
                    return lm.logits(idx[:, :n])

            fns.append(fn)
            checks.append(gate.ModelGate(lm, "prefill", idx, n).check)
        return Prepared(fns, checks, b * n, flops, extra)
    fns, checks, states, snaps = [], [], [], []
    for idx in idxs:
        with torch.no_grad():
            state = lm.prefill(idx[:, :n])
        states.append(state)
        snaps.append(lm.snapshot(state))
        nxt = idx[:, n : n + 1]

        def fn(state=state, nxt=nxt):
            with torch.no_grad():
                return lm.step(state, nxt, n)

        fns.append(fn)
        checks.append(gate.ModelGate(lm, "decode", idx, n).check)

    def restore(i):
        lm.restore(states[i], snaps[i])

    extra.update(
        decoder=lm.decoder_name(states[0]),
        cache_bytes=lm.cache_bytes(states[0]),
        decode_kind=lm.decode_kind,
    )
    return Prepared(fns, checks, b, flops, extra, before=restore)


def prepare(case: Case, timing: dict) -> Prepared:
    if case.level == "op":
        return prepare_op(case, timing["gate_rows"])
    return prepare_model(case, timing["gate"])


def time_case(case: Case, timing: dict) -> dict[str, Any]:
    """The ``time`` role: probes, setup, first call, the gate of both input sets, warm-up, timing
    over the input sets alternately, the gate of the timed repetitions' outputs (and on CUDA the
    allocator's peak). Sizes a variant chose for this machine on its first call
    (``attnbench.tune``) are in the row's ``tuned``."""
    with tune.recording() as chosen:
        row = _time_case(case, timing)
    if chosen:
        row["tuned"] = chosen
    return row


def _time_case(case: Case, timing: dict) -> dict[str, Any]:
    variant = get_variant(case.variant)
    # with the kernel probes: here, not in the launcher
    reasons = variant.not_supported_reasons(case)
    if reasons:
        return {"status": "unsupported", "reason": "; ".join(reasons)}
    device = measure.indexed(case.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    t_setup = time.perf_counter()
    with _all_threads():
        p = prepare(case, timing)
    row: dict[str, Any] = dict(p.extra)
    row["setup_ms"] = (time.perf_counter() - t_setup) * 1e3  # inputs, references' plans, masks
    if p.before:
        p.before(0)
    t0 = time.perf_counter()
    first = p.fns[0]()  # with the timing's threads: what is compiled is what is timed
    measure.sync(device)
    row["first_call_ms"] = (time.perf_counter() - t0) * 1e3
    row["gated"] = bool(timing["gate"])
    if timing["gate"]:
        t0 = time.perf_counter()
        for i, check in enumerate(p.checks):
            if i:
                if p.before:
                    p.before(i)
                first = p.fns[i]()
            with _all_threads():
                why = check(first)
            if why:
                return {**row, "status": "incorrect", "reason": _which(p, i, why)}
        row["gate_ms"] = (time.perf_counter() - t0) * 1e3
    del first
    outputs: dict[int, Any] = {}
    timed = p.fns[:TIMED_SETS]
    t_timing = time.perf_counter()
    t = measure.time_fn(
        timed,
        device,
        warmup=timing["warmup"],
        budget_s=timing["budget_s"],
        min_reps=timing["min_reps"],
        max_reps=timing["max_reps"],
        l2_flush=timing["l2_flush"],
        cuda_graphs=timing["cuda_graphs"],
        outputs=outputs if timing["gate"] else None,
        before=p.before,
        probe=_probe(device),
    )
    row["timing_ms"] = (time.perf_counter() - t_timing) * 1e3  # warm-up and repetitions
    # about the repetitions alone (the median times their count, within the timing's wall)
    row["timed_ms"] = min(t.median_ms * t.reps, row["timing_ms"])
    t_late = time.perf_counter()
    if timing["gate"]:
        measure.sync(device)
        for i, check in enumerate(p.timed_checks[: len(timed)]):
            with _all_threads():
                why = check(outputs[i]) if i in outputs else "no timed repetition ran on it"
            if why:
                return {
                    **row,
                    "status": "incorrect",
                    "reason": "a timed repetition, " + _which(p, i, why),
                }
    outputs.clear()
    row["gate_ms"] = row.get("gate_ms", 0.0) + (time.perf_counter() - t_late) * 1e3
    seconds = t.median_ms / 1e3
    row.update(
        status="ok",
        reason="",
        time_ms=t.median_ms,
        time_ms_p20=t.p20_ms,
        time_ms_p80=t.p80_ms,
        reps=t.reps,
        spread=t.spread,
        noisy=t.spread > timing["noisy"],
        flops=p.flops,
        flops_per_s=p.flops / seconds,
        tokens_per_s=p.tokens / seconds,
    )
    if t.probe_ms:  # the machine's speed while this row was timed (rows.efficiency)
        row["probe_flops_per_s"] = _probe(device).flops / (t.probe_ms / 1e3)
    if "read_bytes" in row:
        row["bytes_per_s"] = row["read_bytes"] / seconds
    if device.type == "cuda" and timing["memory"]:
        if p.before:
            p.before(0)
        peak, row["mem_method"] = measure.peak_memory(p.fns[0], device)
        row["call_peak_mem_bytes"] = peak
        row["peak_mem_bytes"] = peak + (row.get("setup_mem_bytes") or 0)
    if timing["cooldown_s"]:
        time.sleep(timing["cooldown_s"])
    return row


def _probe(device: torch.device) -> measure.RateProbe | None:
    """The worker's rate probe on a CPU, the one its ceilings were measured with (None on CUDA,
    whose clocks the ceilings and the cool-down handle)."""
    return measure.rate_probe() if device.type == "cpu" else None


def _which(p: Prepared, i: int, why: str) -> str:
    dists = p.extra.get("gate_inputs")
    return f"input set {i}" + (f" ({dists[i]})" if dists else "") + f": {why}"


def memory_case(
    case: Case, timing: dict, tuned: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The ``memory`` role: the peak of one call of the pass, after one unmeasured call, at the
    sizes the timing worker chose (``tuned``: its row's)."""
    tune.seed(tuned)
    p = prepare(case, dict(timing, gate=False))
    if p.before:
        p.before(0)
    p.fn()  # the first call (compilation, caches) is not what the pass holds
    if p.before:
        p.before(0)
    peak, method = measure.peak_memory(p.fn, torch.device(case.device))
    setup = p.extra.get("setup_mem_bytes") or 0
    return {
        "peak_mem_bytes": None if peak is None else peak + setup,
        "mem_method": method,
        "setup_mem_bytes": setup,
        "call_peak_mem_bytes": peak,
    }


def _training_case(case: Case, init: dict) -> dict[str, Any]:
    from attnbench.bench.suite import from_dict
    from attnbench.quality.cases import run_quality_case, run_recall_case

    suite = from_dict(init["suite"])
    if case.level == "quality":
        return run_quality_case(case, suite.quality, init["run_dir"])
    return run_recall_case(case, suite.recall)


def handle(kind: str, payload: Any, init: dict) -> dict[str, Any]:
    if kind == "ceilings":
        return measure.ceilings(payload["dtypes"], payload["device"], init["timing"]["ceiling_s"])
    if kind == "memory":  # (an op or model case, the sizes its timing row chose)
        case, tuned = payload
        return memory_case(case, init["timing"], tuned)
    case: Case = payload
    if case.level in ("quality", "recall"):
        return _training_case(case, init)
    return time_case(case, init["timing"])


def main(recv_conn, conn) -> None:
    """Worker loop. First message: the init dict; then (kind, payload) -> a dict, for kind
    ``case`` (a Case: its row's measured fields), ``memory`` ((a Case, its timing row's
    ``tuned``): its peak memory), ``ceilings`` ({dtypes, device}); ``stop`` ends it."""
    init = recv_conn.recv()
    if init.get("threads"):
        torch.set_num_threads(init["threads"])
    for path in init.get("plugins", []):
        load_plugin(path)
    conn.send({"ready": True, "threads": torch.get_num_threads(), "pid": os.getpid()})
    while True:
        kind, payload = recv_conn.recv()
        if kind == "stop":
            return
        try:
            result = handle(kind, payload, init)
        except BaseException as exc:  # a failing case is a result, not the end of the sweep
            if isinstance(exc, KeyboardInterrupt):
                raise
            last = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            where = f" (at {os.path.basename(last.filename)}:{last.lineno})" if last else ""
            first = str(exc).splitlines()[0] if str(exc) else ""
            result = {
                "status": _classify(exc),
                "reason": f"{type(exc).__name__}: {first}"[:500] + where,
            }
        conn.send(result)
        _return_heap()


def _return_heap(hold: int | None = None) -> None:
    """Between cases, give the freed heap back to the system once the process holds more than
    ``hold`` bytes (default: ``measure.HEAP_HOLD_ENV`` from the environment, 0 if unset: always).
    The kept heap's timing worker holds what a case freed for the next, so the next case runs on
    pages already mapped instead of faulting back in what a trim returned (split between 2 MiB and
    4 KiB pages by that trim: its repeats varied by up to 30 %); past ``hold`` (an eighth of the
    machine) it trims, so one large case does not starve the memory worker. The memory worker
    always trims: each of its peaks is one case's own."""
    gc.collect()
    if hold is None:
        hold = int(os.environ.get(measure.HEAP_HOLD_ENV) or 0)
    if hold > 0 and measure.held_bytes("cpu") <= hold:
        return
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


@functools.cache
def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:  # not glibc: nothing to trim
        return None


if __name__ == "__main__":
    import sys
    from multiprocessing.connection import Connection

    main(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
