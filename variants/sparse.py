"""sparse: causal softmax attention restricted to a block-sparse pattern.

    O_i = sum_{j in A(i)} softmax_j(q_i . k_j / sqrt(D)) v_j,     A(i) subset of {0..i}

Three patterns (``attnbench.attention.patterns``), each with three implementations:

- ``strided`` (Sparse Transformer, Child et al. 2019): query block I sees key block J when
  I-J < stride or (I-J) % stride == 0.   Parameters: ``block``, ``stride``.
- ``bigbird`` (Zaheer et al. 2020): ``window`` sliding blocks + ``globals`` global blocks +
  ``randoms`` random blocks per row (seeded by ``seed``).
- ``longformer`` (Beltagy et al. 2020): a ``window``-token sliding window + ``globals`` global tokens.

Implementations: ``masked`` (SDPA with the dense mask: quadratic), ``blocked`` (our block-sparse
PyTorch: cost proportional to the attended blocks), ``flex`` (FlexAttention BlockMask); for
strided and bigbird ``union`` (ours, CPU: ``attnbench.attention.flashunion``: disjoint dense pieces, one flash
call each, merged through their log-sum-exps; strided keys become a causal attention over the
blocks re-ordered by residue), and for longformer ``banded`` (ours: the window as strided key
bands plus the global keys, merged the same way on the CPU).
Decoding keeps a full KV cache and attends to the keys the pattern allows for the new token.
"""

from __future__ import annotations

import inspect

import torch

from attnbench.attention.blocksparse import banded_attention, block_sparse_attention
from attnbench.attention.flashunion import union_attention
from attnbench.attention.masked import (flex, masked_sdpa, prepare_banded, prepare_blocked, prepare_dense,
                               prepare_flex, prepare_union)
from attnbench.attention.patterns import Longformer
from attnbench.attention.reference import MATHS
from attnbench.registry import Capabilities, positive, register_variant

# Each pattern's parameters with their defaults (the pattern classes validate them).
PATTERN_PARAMS = {
    "strided": {"block": 64, "stride": 4},
    "bigbird": {"block": 64, "window": 3, "globals": 1, "randoms": 2, "seed": 0},
    "longformer": {"window": 256, "globals": 16},
}


def _masked(q, k, v, pattern, **impl):
    return masked_sdpa(q, k, v, pattern)


def _blocked(q, k, v, pattern, *, block):
    return block_sparse_attention(q, k, v, pattern, block)


def _flex(q, k, v, pattern, **impl):
    return flex(q, k, v, pattern)


def _union(q, k, v, pattern, **impl):
    return union_attention(q, k, v, pattern)


IMPLS = {
    "masked": (_masked, "Dense masked SDPA (quadratic cost)", Capabilities(), prepare_dense),
    "blocked": (_blocked, "Block-sparse PyTorch, cost proportional to the attended blocks",
                Capabilities(), prepare_blocked),
    "flex": (_flex, "FlexAttention with the pattern's BlockMask",
             Capabilities(cpu={"backward": False, "dtypes": (torch.float32, torch.bfloat16)}),
             prepare_flex),
    "union": (_union, "Ours: the pattern as a union of dense pieces (a band of blocks, the global "
              "blocks, strided blocks re-ordered by residue, gathered random blocks), one CPU "
              "flash call each, merged through their log-sum-exps",
              Capabilities(devices=("cpu",)), prepare_union),
}
UNION_PATTERNS = ("strided", "bigbird")  # longformer's union is its banded implementation


def _register(math: str, impl: str) -> None:
    run, doc, caps, prepare = IMPLS[impl]
    params = dict(PATTERN_PARAMS[math])
    # longformer's pattern is token-level; its blocked implementation needs a tile size
    impl_params = {"block": 64} if impl == "blocked" and "block" not in params else {}
    params.update(impl_params)
    spec = MATHS[math]

    def fn(q, k, v, **kwargs):
        pattern = spec.build(kwargs).pattern
        extra = {"block": kwargs["block"]} if impl == "blocked" else {}
        return run(q, k, v, pattern, **extra)

    fn.__signature__ = inspect.Signature(
        [inspect.Parameter(x, inspect.Parameter.POSITIONAL_OR_KEYWORD) for x in "qkv"]
        + [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d) for n, d in params.items()]
    )
    fn.__doc__ = f"{doc} ({spec.description})."
    fn.__name__ = f"{math}_{impl}"
    register_variant(f"sparse.{math}.{impl}", family="sparse", supports=caps, prepare=prepare,
                     validate=positive("block") if "block" in params else None)(fn)


for _math in PATTERN_PARAMS:
    for _impl in IMPLS:
        if _impl != "union" or _math in UNION_PATTERNS:
            _register(_math, _impl)


@register_variant("sparse.longformer.banded", family="sparse", math="longformer",
                  validate=positive("block", "window"), prepare=prepare_banded)
def longformer_banded(q, k, v, *, window: int = 256, globals: int = 16, block: int = 64):
    """Ours: the window as strided bands of keys, the global keys in front of every band, all in
    one fused SDPA call (see sliding_window.banded)."""
    return banded_attention(q, k, v, Longformer(window, globals), block)
