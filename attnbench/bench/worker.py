"""The worker: measures cases in a separate process, one at a time, and reports a row for each.

The launcher (``attnbench.bench.runner``) starts ``python -m attnbench.bench.worker`` with
``subprocess.Popen`` and two pipes, and sends it one request at a time. A case that raises becomes
a row with status ``error`` or ``oom``; a case that hangs or kills the process is recorded by the
launcher (``timeout``, ``crash``), which then starts a fresh worker and goes on.

A worker has a role, fixed when it starts:

- ``time``: the default allocator, plus the suite's ``timing.env`` (the same for every variant
  and the ceiling). For each op or model case: the variant's probes (a kernel that cannot take the
  case is ``unsupported``), inputs, masks and plans (``mask_ms``), the first call of the timed
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

import os
import time
import traceback
from typing import Any, Callable

import torch

from attnbench.bench import gate, measure
from attnbench.bench.flops import attention_flops, model_flops
from attnbench.case import Case
from attnbench.registry import get_variant, load_plugin


def _classify(exc: BaseException) -> str:
    text = str(exc).lower()
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in text \
            or "can't allocate memory" in text:
        return "oom"
    return "error"


class Prepared:
    """A case ready to run: ``fn()`` runs the pass once; ``check(result)`` gates a result of it."""

    def __init__(self, fn: Callable[[], Any], check: Callable[[Any], str | None], tokens: int,
                 flops: int, extra: dict[str, Any]):
        self.fn, self.check, self.tokens, self.flops, self.extra = fn, check, tokens, flops, extra


def _inputs(case: Case, device: torch.device, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rand(heads):
        x = torch.randn(case.batch, case.seq_len, heads, case.head_dim, generator=g)
        return x.to(device=device, dtype=case.dtype)

    return rand(case.heads), rand(case.kv_heads), rand(case.kv_heads), g


def prepare_op(case: Case, rows: int) -> Prepared:
    """Inputs, masks and plans of an op case, and its pass as a function (``mask_ms`` covers what
    the variant builds per shape, and for decode the decoder with its cache)."""
    variant = get_variant(case.variant)
    device = torch.device(case.device)
    q, k, v, g = _inputs(case, device)
    b, n, h, d = case.batch, case.seq_len, case.heads, case.head_dim
    kw = {} if case.causal else {"causal": False}
    extra: dict[str, Any] = {}
    t0 = time.perf_counter()
    variant.prepare(case)
    if case.pass_ == "decode":
        dec = variant.decoder(b, h, d, kv_heads=case.kv_heads, max_len=n + 1, dtype=case.dtype,
                              device=device)
        dec.fill(k, v)
        q1, k1, v1 = (torch.randn(b, 1, x.shape[2], d, generator=g).to(device=device,
                                                                       dtype=case.dtype)
                      for x in (q, k, v))
    measure.sync(device)
    extra["mask_ms"] = (time.perf_counter() - t0) * 1e3
    if case.pass_ == "decode":
        def fn():
            dec.position = n  # every repetition decodes token n with n tokens of context
            return dec.step(q1, k1, v1)

        full = [torch.cat([x, x1], dim=1) for x, x1 in ((q, q1), (k, k1), (v, v1))]
        check = lambda out: gate.check_decode_step(variant, *full, out)  # noqa: E731
        extra.update(decoder=dec.name, cache_bytes=dec.cache_bytes(), read_bytes=dec.read_bytes())
        if dec.kernel(q1):  # where a dispatcher picks the kernel: the one it picked
            extra["kernel"] = dec.kernel(q1)
        return Prepared(fn, check, b, attention_flops(variant, case), extra)
    if case.pass_ != "fwd":
        inputs = [x.requires_grad_() for x in (q, k, v)]  # a dispatcher sees the backward too
    if variant.kernel_used(q, k, v, causal=case.causal):
        extra["kernel"] = variant.kernel_used(q, k, v, causal=case.causal)
    if case.pass_ == "fwd":
        def fn():
            with torch.no_grad():
                return variant(q, k, v, **kw)

        check = lambda out: gate.check_forward(variant, q, k, v, out, case.causal, rows)  # noqa: E731
        return Prepared(fn, check, b * n, attention_flops(variant, case), extra)
    grad_out = torch.randn(b, n, h, d, generator=g).to(device=device, dtype=case.dtype)
    check = lambda _: gate.check_gradients(variant, q, k, v, case.causal, rows)  # noqa: E731
    if case.pass_ == "fwd_bwd":
        def fn():
            out = variant(*inputs, **kw)
            return torch.autograd.grad(out, inputs, grad_out)
    else:  # bwd: the backward alone, from one forward whose graph is kept
        holder = {}

        def fn():
            if "out" not in holder:
                holder["out"] = variant(*inputs, **kw)
            return torch.autograd.grad(holder["out"], inputs, grad_out, retain_graph=True)
    return Prepared(fn, check, b * n, attention_flops(variant, case), extra)


def prepare_model(case: Case, gate_on: bool) -> Prepared:
    """A language model with the variant (``attnbench.bench.lm``: the identical LM at a preset,
    or ``hf:NAME`` for a transformers model): train step, prefill or decode."""
    from attnbench.bench.lm import LanguageModel

    device = torch.device(case.device)
    b, n = case.batch, case.seq_len
    lm = LanguageModel.build(case)
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, lm.vocab_size, (b, n + 1), generator=g).to(device)
    extra: dict[str, Any] = {"model_params": lm.num_params(), "model_kind": lm.kind}
    flops = model_flops(lm, b, n, case.pass_)
    if case.pass_ == "train_step":
        lm.train()
        got = before = None
        if gate_on:  # loss and gradient norm before any optimizer step changes the weights
            before = lm.with_attention(lm.variant, case.dtype)
            got = gate.loss_and_grad_norm(lm, idx, n)
        opt = torch.optim.AdamW(lm.module.parameters(), lr=1e-4)

        def fn():
            loss = lm.loss(idx[:, :-1], idx[:, 1:])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.detach()

        check = lambda _: gate.check_model(before, "train_step", idx, n, got)  # noqa: E731
        return Prepared(fn, check, b * n, flops, extra)
    lm.train(False)
    if case.pass_ == "prefill":
        def fn():
            with torch.no_grad():
                return lm.logits(idx[:, :n])

        check = lambda out: gate.check_model(lm, "prefill", idx, n, out)  # noqa: E731
        return Prepared(fn, check, b * n, flops, extra)
    with torch.no_grad():
        state = lm.prefill(idx[:, :n])
    nxt = idx[:, n : n + 1]

    def fn():
        with torch.no_grad():
            return lm.step(state, nxt, n)

    check = lambda out: gate.check_model(lm, "decode", idx, n, out)  # noqa: E731
    extra.update(decoder=lm.decoder_name(state), cache_bytes=lm.cache_bytes(state))
    return Prepared(fn, check, b, flops, extra)


def prepare(case: Case, timing: dict) -> Prepared:
    if case.level == "op":
        return prepare_op(case, timing["gate_rows"])
    return prepare_model(case, timing["gate"])


def time_case(case: Case, timing: dict) -> dict[str, Any]:
    """The ``time`` role: probes, setup, first call, gate, warm-up, timing (and on CUDA memory)."""
    variant = get_variant(case.variant)
    # with the kernel probes: here, not in the launcher
    reasons = variant.not_supported_reasons(case)
    if reasons:
        return {"status": "unsupported", "reason": "; ".join(reasons)}
    device = measure.indexed(case.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    p = prepare(case, timing)
    row: dict[str, Any] = dict(p.extra)
    t0 = time.perf_counter()
    first = p.fn()
    measure.sync(device)
    row["first_call_ms"] = (time.perf_counter() - t0) * 1e3
    row["gated"] = bool(timing["gate"])
    if timing["gate"]:
        why = p.check(first)
        if why:
            return {**row, "status": "incorrect", "reason": why}
    del first
    t = measure.time_fn(p.fn, device, warmup=timing["warmup"], budget_s=timing["budget_s"],
                        min_reps=timing["min_reps"], max_reps=timing["max_reps"],
                        l2_flush=timing["l2_flush"], cuda_graphs=timing["cuda_graphs"])
    seconds = t.median_ms / 1e3
    row.update(status="ok", reason="", time_ms=t.median_ms, time_ms_p20=t.p20_ms,
               time_ms_p80=t.p80_ms, reps=t.reps, spread=t.spread, noisy=t.spread > timing["noisy"],
               flops=p.flops, flops_per_s=p.flops / seconds, tokens_per_s=p.tokens / seconds)
    if "read_bytes" in row:
        row["bytes_per_s"] = row["read_bytes"] / seconds
    if device.type == "cuda" and timing["memory"]:
        row["peak_mem_bytes"], row["mem_method"] = measure.peak_memory(p.fn, device)
    if timing["cooldown_s"]:
        time.sleep(timing["cooldown_s"])
    return row


def memory_case(case: Case, timing: dict) -> dict[str, Any]:
    """The ``memory`` role: the peak of one call of the pass, after one unmeasured call."""
    p = prepare(case, dict(timing, gate=False))
    p.fn()  # the first call (compilation, caches) is not what the pass holds
    peak, method = measure.peak_memory(p.fn, torch.device(case.device))
    return {"peak_mem_bytes": peak, "mem_method": method}


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
    case: Case = payload
    if case.level in ("quality", "recall"):
        return _training_case(case, init)
    if kind == "memory":
        return memory_case(case, init["timing"])
    return time_case(case, init["timing"])


def main(recv_conn, conn) -> None:
    """Worker loop. First message: the init dict; then (kind, payload) -> a dict, for kind
    ``case`` (a Case: its row's measured fields), ``memory`` (a Case: its peak memory),
    ``ceilings`` ({dtypes, device}); ``stop`` ends it."""
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
            result = {"status": _classify(exc),
                      "reason": f"{type(exc).__name__}: {first}"[:500] + where}
        conn.send(result)


if __name__ == "__main__":
    import sys
    from multiprocessing.connection import Connection

    main(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
