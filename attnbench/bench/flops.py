"""FLOP counts, one documented convention for every variant.

Softmax attention (flash-attention's convention): a forward pass costs
``4 * B * H * D * pairs`` FLOPs, where ``pairs`` is the number of attended (query, key) pairs of the
variant's pattern counted from the pattern itself (causal: N(N+1)/2; window w: about N*w), so
sparse and windowed variants get honest numbers. Backward = 2.5 x forward; forward+backward = 3.5 x.

Linear attention (its own formula, the recurrent/state form): per token and head, the state update
phi(k) v^T and the read-out phi(q)^T S cost 2*F*D each, so a forward pass costs
``4 * B * H * N * F * D`` (F = number of features), independent of how an implementation arranges
the work, plus the feature map's own projection where it has one (FAVOR+: each query and key
row multiplied by a D x F random matrix, 2 D F per row, as much again as the state work at equal
head counts; Taylor (Based): the D x f projection, 2 D f per row, and the f^2 products of its
second-order features, with F = 1 + f + f^2 in the state work). Backward and forward+backward use
the same 2.5 x and 3.5 x factors.

The chunked form of linear attention executes more than that: inside each chunk of C tokens it also
forms the full C x C block phi(Q_c) phi(K_c)^T (masked afterwards) and multiplies it with V,
2 C (F + D) per token and head. ``chunked_linear_flops`` counts that executed work,
``4 N F D + 2 N C (F + D)`` per head and pass factor, for judging how close a chunked kernel runs
to the matmul ceiling; ``attention_flops`` (and every row's ``flops``) keeps the
implementation-independent count. That is what ``linear.*.chunked`` executes; the native kernel of
``linear.*.fused`` stops its masked products at the diagonal and executes less (1.3-1.6x the
credited forward instead of 1.5-2.0x at chunks 32-64; docs/performance-notes.md).

A decode step counts the pairs of the new token only (its row of the pattern), or 4*F*D per head
for linear attention (plus the projection of its query and key).
"""

from __future__ import annotations

from attnbench.attention.reference import LinearMath
from attnbench.case import Case

PASS_FACTOR = {"fwd": 1.0, "fwd_bwd": 3.5, "bwd": 2.5, "decode": 1.0}


def attention_flops(variant, case) -> int:
    """FLOPs of one call of ``variant`` at ``case`` (a ``Case``; grouped-query attention does the
    same work per query head, so ``heads`` counts, not ``kv_heads``)."""
    b, n, h, d = case.batch, case.seq_len, case.heads, case.head_dim
    math = variant.math
    if isinstance(math, LinearMath):  # the projection of every query and key row (FAVOR+, Taylor)
        rows = (1 if case.pass_ == "decode" else n) * b * (h + (case.kv_heads or h))
        projection = rows * math.feature_map.projection_flops(d)
    if case.pass_ == "decode":
        if isinstance(math, LinearMath):
            return 4 * b * h * math.feature_map.num_features(d) * d + projection
        # the new token sits at position n, after n tokens of context
        row = int(variant.math.pattern_for(case.causal).row_mask(n).sum())
        return 4 * b * h * d * row
    if isinstance(math, LinearMath):
        fwd = 4 * b * h * n * math.feature_map.num_features(d) * d + projection
    else:
        fwd = 4 * b * h * d * math.attended_pairs(n, causal=case.causal)
    return int(fwd * PASS_FACTOR[case.pass_])


def chunked_linear_flops(variant, case, chunk: int | None = None) -> int:
    """FLOPs the chunked linear-attention form executes at ``case`` (chunk size ``chunk``, default
    the variant's ``chunk`` parameter; for ``chunk="auto"`` pass the size its row's ``tuned``
    records): ``attention_flops`` plus the intra-chunk blocks, 2 N C (F + D) per head and pass
    factor."""
    math = variant.math
    if not isinstance(math, LinearMath) or "chunk" not in variant.params:
        raise ValueError(f"{variant.label} is not a chunked linear-attention variant")
    c = variant.params["chunk"] if chunk is None else chunk
    if not isinstance(c, int):
        raise ValueError(
            f"{variant.label}: chunk {c!r} is chosen per machine; pass the chunk its row's "
            "`tuned` records"
        )
    f, d = math.feature_map.num_features(case.head_dim), case.head_dim
    blocks = 2 * case.batch * case.heads * case.seq_len * c * (f + d) * PASS_FACTOR[case.pass_]
    return int(attention_flops(variant, case) + blocks)


def model_flops(lm, batch: int, seq_len: int, pass_: str) -> int:
    """FLOPs of a language model (``attnbench.bench.lm.LanguageModel``): 2 * (weights multiplied
    per token) * tokens for the matmuls (forward) plus each layer's attention FLOPs; a train step
    counts 3x the matmul and 3.5x the attention forward."""
    matmul = lm.matmul_params()
    case = Case(
        batch=batch,
        seq_len=seq_len,
        heads=lm.heads,
        kv_heads=lm.kv_heads,
        head_dim=lm.head_dim,
        pass_="decode" if pass_ == "decode" else "fwd",
    )
    attn = lm.n_layers * attention_flops(lm.variant, case)
    if pass_ == "decode":
        return int(2 * matmul * batch + attn)
    if pass_ == "train_step":
        return int(3 * 2 * matmul * batch * seq_len + 3.5 * attn)
    return int(2 * matmul * batch * seq_len + attn)
