"""Planning: a suite's cases in the order they are measured, what the launcher can tell about a
case without running it, and how cases are grouped and shared between launcher slots or jobs.

    plan(suite) -> [Case]       every (variant, shape, dtype, pass, repeat), smallest N first
"""

from __future__ import annotations

from attnbench.bench.suite import Suite
from attnbench.case import Case
from attnbench.model import model_shape
from attnbench.quality.cases import plan_quality, plan_recall
from attnbench.registry import get_variant


def plan(suite: Suite) -> list[Case]:
    """Every case of ``suite``, grouped by variant with N ascending (so OOM skipping works); with
    ``timing.repeats`` > 1 the whole op and model sweep is repeated, so the measurements of one
    case are interleaved with the other variants' rather than taken back to back (a slow spell
    of the machine then spreads over every variant instead of landing on one)."""
    device = suite.resolved_device()
    cases: list[Case] = []
    reps = range(1)
    if suite.op is not None:
        op = suite.op
        for spec in op.variants:
            ident = dict(get_variant(spec).case_fields, device=device)
            for dtype in op.dtypes:
                for d in op.head_dims:
                    heads = op.heads_for(d)
                    for kv in op.kv_heads or (heads,):
                        for causal in op.causal:
                            for pass_ in op.passes:
                                for n in sorted(op.seq_lens):
                                    cases += [
                                        Case(
                                            level="op",
                                            **ident,
                                            pass_=pass_,
                                            batch=op.batch_for(n),
                                            seq_len=n,
                                            heads=heads,
                                            kv_heads=kv,
                                            head_dim=d,
                                            dtype=dtype,
                                            causal=causal,
                                            repeat=r,
                                        )
                                        for r in reps
                                    ]
    if suite.model is not None:
        m = suite.model
        heads, kv_heads, head_dim = model_shape(m.preset)
        for spec in m.variants:
            ident = get_variant(spec).case_fields
            for dtype in m.dtypes:
                for pass_ in m.passes:
                    for n in sorted(m.seq_lens):
                        cases += [
                            Case(
                                level="model",
                                **ident,
                                pass_=pass_,
                                batch=m.batch,
                                seq_len=n,
                                heads=heads,
                                kv_heads=kv_heads,
                                head_dim=head_dim,
                                dtype=dtype,
                                device=device,
                                preset=m.preset,
                                repeat=r,
                            )
                            for r in reps
                        ]
    cases = [c.replace(repeat=r) for r in range(suite.timing.repeats) for c in cases]
    if suite.quality is not None:
        cases += plan_quality(suite.quality, device)
    if suite.recall is not None:
        cases += plan_recall(suite.recall, device)
    return cases


def unsupported_reasons(case: Case) -> list[str]:
    """What the launcher can tell without running a kernel (probes run in the worker)."""
    if case.family == "baseline":  # the n-gram floor: no attention
        return []
    return get_variant(case.variant).not_supported_reasons(case, probe=False)


def case_timeout(case: Case, suite: Suite) -> float:
    if case.level in ("quality", "recall"):
        return getattr(suite, case.level).timeout_s
    return suite.timing.timeout_s


def groups_of(cases: list[Case]) -> list[list[Case]]:
    """Cases split by (variant, device), in plan order: compilation and warm-up are paid once per
    group, and a group's N stay ascending (so skipping after an OOM works)."""
    out: dict[tuple, list] = {}
    for c in cases:
        out.setdefault((c.variant, c.device), []).append(c)
    return list(out.values())


def balance(groups: list[list[Case]], k: int) -> list[list[Case]]:
    """At most ``k`` bins of whole groups, largest first into the emptiest bin."""
    bins: list[list[Case]] = [[] for _ in range(min(k, len(groups)))]
    for g in sorted(groups, key=len, reverse=True):
        min(bins, key=len).extend(g)
    return [b for b in bins if b]
