"""The worker: measures cases in a separate process, one at a time, and reports a row for each.

The runner (``attnbench.runner``) starts it with ``multiprocessing`` (spawn) and sends it case
dicts over a pipe. A case that raises becomes a row with status ``error`` or ``oom``; a case that
hangs or kills the process is recorded by the runner (``timeout``, ``crash``), which then starts a
fresh worker and goes on.

For each case: build inputs; build masks/plans (``mask_ms``); first call (compilation,
``first_call_ms``); correctness gate against the float64 reference on a subset of query rows
(``incorrect`` rows keep no timing); timing; peak memory.
"""

from __future__ import annotations

import os
import time
import traceback
from typing import Any

import torch

from attnbench.bench import measure
from attnbench.attention.reference import reference_error
from attnbench.registry import Case, get_variant, load_plugin, parse_dtype


def _classify(exc: BaseException) -> str:
    text = str(exc).lower()
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in text \
            or "can't allocate memory" in text:
        return "oom"
    return "error"


def gate(variant, q, k, v, out, case: Case, rows: int) -> str | None:
    """None if ``out`` (batch 0) matches the float64 reference on a subset of query rows, else why not."""
    n = case.seq_len
    pick = torch.unique(torch.cat([
        torch.arange(min(n, rows // 3)),
        torch.arange(max(0, n - rows // 3), n),
        torch.linspace(0, n - 1, steps=max(1, rows // 3)).long(),
    ])).to(q.device)
    q1, k1, v1 = q[:1].detach(), k[:1].detach(), v[:1].detach()
    ref = variant.math.reference_rows(q1, k1, v1, pick, causal=case.causal)
    plain = variant.math.reference_rows(q1, k1, v1, pick, causal=case.causal, dtype=q.dtype)
    return reference_error(out[:1, pick].detach(), plain, ref, q.dtype)


def _measure(fn, device, timing: dict, flops: int, tokens: int) -> dict[str, Any]:
    """Time ``fn`` to the suite's budget, then its peak memory: the fields of an ``ok`` row."""
    t = measure.time_fn(fn, device, warmup=timing["warmup"], budget_s=timing["budget_s"],
                        min_reps=timing["min_reps"], max_reps=timing["max_reps"])
    peak, method = measure.peak_memory(fn, device)
    return dict(status="ok", reason="", time_ms=t.median_ms, time_ms_p20=t.p20_ms,
                time_ms_p80=t.p80_ms, reps=t.reps, peak_mem_bytes=peak, mem_method=method,
                flops=flops, flops_per_s=flops / (t.median_ms / 1e3),
                tokens_per_s=tokens / (t.median_ms / 1e3))


def run_op_case(c: dict, timing: dict) -> dict[str, Any]:
    variant = get_variant(c["variant"])
    dtype, device = parse_dtype(c["dtype"]), torch.device(c["device"])
    b, n, h, d, pass_ = c["batch"], c["seq_len"], c["heads"], c["head_dim"], c["pass"]
    case = Case(batch=b, seq_len=n, heads=h, head_dim=d, dtype=dtype, device=c["device"],
                pass_=pass_, causal=c["causal"])
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(b, n, h, d, generator=g).to(device=device, dtype=dtype) for _ in range(3))
    row: dict[str, Any] = {}
    t0 = time.perf_counter()
    variant.prepare(case)
    measure.sync(device)
    row["mask_ms"] = (time.perf_counter() - t0) * 1e3

    if pass_ == "decode":
        dec = variant.decoder(b, h, d, max_len=n + 1, dtype=dtype, device=device)
        dec.fill(k, v)
        q1, k1, v1 = q[:, :1], k[:, :1], v[:, :1]

        def fn():
            dec.position = n  # every repetition decodes token n with n tokens of context
            return dec.step(q1, k1, v1)

        t0 = time.perf_counter()
        fn()
        measure.sync(device)
        row["first_call_ms"] = (time.perf_counter() - t0) * 1e3
        tokens = b
    else:
        causal = c["causal"]
        with torch.no_grad():
            t0 = time.perf_counter()
            out = variant(q, k, v, causal=causal) if not causal else variant(q, k, v)
            measure.sync(device)
            row["first_call_ms"] = (time.perf_counter() - t0) * 1e3
        if timing["gate"]:
            why = gate(variant, q, k, v, out, case, timing["gate_rows"])
            if why:
                return {**row, "status": "incorrect", "reason": why}
        del out
        kw = {} if causal else {"causal": False}
        if pass_ == "fwd":
            def fn():
                with torch.no_grad():
                    return variant(q, k, v, **kw)
        else:
            qg, kg, vg = (x.requires_grad_() for x in (q, k, v))
            grad_out = torch.randn(b, n, h, d, generator=g).to(device=device, dtype=dtype)

            def fn():
                out = variant(qg, kg, vg, **kw)
                return torch.autograd.grad(out, (qg, kg, vg), grad_out)
        tokens = b * n
    row.update(_measure(fn, device, timing, variant.flops(case), tokens))
    if pass_ == "decode":
        row["cache_bytes"] = dec.cache_bytes()
    return row


def run_model_case(c: dict, timing: dict) -> dict[str, Any]:
    from attnbench.bench.flops import model_flops
    from attnbench.model import ModelConfig, TransformerLM

    dtype, device = parse_dtype(c["dtype"]), torch.device(c["device"])
    b, n, pass_ = c["batch"], c["seq_len"], c["pass"]
    cfg = ModelConfig.from_name(c["preset"])
    torch.manual_seed(0)
    model = TransformerLM(cfg, attention=c["variant"]).to(device=device, dtype=dtype)
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, cfg.vocab_size, (b, n + 1), generator=g).to(device)
    row: dict[str, Any] = {}
    if pass_ == "train_step":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def fn():
            loss = model.loss(idx[:, :-1], idx[:, 1:])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.detach()
        tokens = b * n
    elif pass_ == "prefill":
        model.eval()

        def fn():
            with torch.no_grad():
                return model(idx[:, :n])
        tokens = b * n
    else:
        model.eval()
        decoders = model.new_decoders(b, n + 1)
        with torch.no_grad():
            model(idx[:, :n], decoders)
        nxt = idx[:, n:]

        def fn():
            with torch.no_grad():
                for dec in decoders:
                    dec.position = n
                return model(nxt, decoders, start=n)
        tokens = b
    t0 = time.perf_counter()
    fn()
    measure.sync(device)
    row["first_call_ms"] = (time.perf_counter() - t0) * 1e3
    row.update(_measure(fn, device, timing, model_flops(cfg, model.variant, b, n, pass_), tokens),
               model_params=cfg.num_params())
    if pass_ == "decode":
        row["cache_bytes"] = sum(d.cache_bytes() for d in decoders)
    return row


def _run_training_case(c: dict, init: dict) -> dict[str, Any]:
    from attnbench.quality.cases import run_quality_case, run_recall_case
    from attnbench.bench.suite import from_dict

    suite = from_dict(init["suite"])
    if c["level"] == "quality":
        return run_quality_case(c, suite.quality, init["run_dir"])
    return run_recall_case(c, suite.recall)


def measure_ceilings(dtypes: list[str], device: str) -> dict[str, Any]:
    out: dict[str, Any] = {"matmul_flops_per_s": {}, "method": "square matmul (2048 on CPU, 8192 on "
                           "CUDA), 20th percentile of >= 10 timings over 2 s; median of a 256 MiB "
                           "copy; on this device"}
    for name in dtypes:
        out["matmul_flops_per_s"][name] = measure.matmul_ceiling(parse_dtype(name), device)
    out["copy_bytes_per_s"] = measure.copy_bandwidth(device)
    return out


def main(recv_conn, conn) -> None:
    """Worker loop. First message: the init dict; then ('case', dict) -> row dict;
    ('ceilings', {...}) -> dict; ('stop', None) ends it."""
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
            if kind == "ceilings":
                result = measure_ceilings(payload["dtypes"], payload["device"])
            elif payload["level"] == "op":
                result = run_op_case(payload, init["timing"])
            elif payload["level"] in ("quality", "recall"):
                result = _run_training_case(payload, init)
            else:
                result = run_model_case(payload, init["timing"])
        except BaseException as exc:  # a failing case is a result, not the end of the sweep
            if isinstance(exc, KeyboardInterrupt):
                raise
            last = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            where = f" (at {os.path.basename(last.filename)}:{last.lineno})" if last else ""
            result = {"status": _classify(exc),
                      "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500] + where}
        conn.send(result)


if __name__ == "__main__":
    import sys
    from multiprocessing.connection import Connection

    main(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
