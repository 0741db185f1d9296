"""sparse: causal softmax attention restricted to a block-sparse pattern.

    O_i = sum_{j in A(i)} softmax_j(q_i . k_j / sqrt(D)) v_j,     A(i) subset of {0..i}

Three patterns (``attnbench.attention.patterns``):

- ``strided`` (Sparse Transformer, Child et al. 2019): query block I sees key block J when
  I-J < stride or (I-J) % stride == 0.   Parameters: ``block``, ``stride``.
- ``bigbird`` (Zaheer et al. 2020): ``window`` sliding blocks + ``globals`` global blocks +
  ``randoms`` random blocks per row (seeded by ``seed``).
- ``longformer`` (Beltagy et al. 2020): a ``window``-token sliding window + ``globals`` global
  tokens.

Implementations, each pattern: ``masked`` (SDPA with the dense mask: quadratic), ``blocked`` (our
block-sparse PyTorch: cost proportional to the attended blocks), ``flex`` (FlexAttention
BlockMask); for strided and bigbird ``union`` (ours, CPU: ``attnbench.attention.flashunion``:
disjoint dense pieces, one flash call each, merged through their log-sum-exps; strided keys
become a causal attention over the blocks re-ordered by residue), and for longformer ``banded``
(ours: the window as strided key bands plus the global keys, merged the same way on the CPU).

Decoding keeps a full KV cache and attends to the key blocks of the new token's query block
(``kv_cache.block_sparse``: index tables built once); the flex variants decode with FlexAttention.
"""

from __future__ import annotations

import torch

from attnbench.attention.blocksparse import banded_attention, block_sparse_attention
from attnbench.attention.decode import BlockSparseKVDecoder, FlexKVDecoder
from attnbench.attention.flashunion import union_attention
from attnbench.attention.masked import (
    flex,
    masked_sdpa,
    prepare_banded,
    prepare_blocked,
    prepare_dense,
    prepare_flex,
    prepare_union,
)
from attnbench.attention.patterns import BigBird, Longformer, Strided
from attnbench.case import Capabilities
from attnbench.registry import positive, register_variant

MASKED = Capabilities(gqa=True)  # SDPA takes grouped-query inputs with enable_gqa
FLEX = Capabilities(gqa=True, cpu={"backward": False, "dtypes": (torch.float32, torch.bfloat16)})
UNION = Capabilities(devices=("cpu",))  # the CPU flash op returns the log-sum-exps it merges


# --- strided ----------------------------------------------------------------------------------


@register_variant(
    "sparse.strided.masked",
    family="sparse",
    supports=MASKED,
    prepare=prepare_dense,
    decoder=BlockSparseKVDecoder,
    validate=positive("block", "stride"),
)
def strided_masked(q, k, v, *, block: int = 64, stride: int = 4):
    """Dense masked SDPA (quadratic cost) over the strided pattern."""
    return masked_sdpa(q, k, v, Strided(block, stride))


@register_variant(
    "sparse.strided.blocked",
    family="sparse",
    prepare=prepare_blocked,
    decoder=BlockSparseKVDecoder,
    validate=positive("block", "stride"),
)
def strided_blocked(q, k, v, *, block: int = 64, stride: int = 4):
    """Block-sparse PyTorch, cost proportional to the attended blocks (strided pattern)."""
    return block_sparse_attention(q, k, v, Strided(block, stride), block)


@register_variant(
    "sparse.strided.flex",
    family="sparse",
    supports=FLEX,
    prepare=prepare_flex,
    decoder=FlexKVDecoder,
    validate=positive("block", "stride"),
)
def strided_flex(q, k, v, *, block: int = 64, stride: int = 4):
    """FlexAttention with the strided pattern's BlockMask."""
    return flex(q, k, v, Strided(block, stride))


@register_variant(
    "sparse.strided.union",
    family="sparse",
    supports=UNION,
    prepare=prepare_union,
    decoder=BlockSparseKVDecoder,
    validate=positive("block", "stride"),
)
def strided_union(q, k, v, *, block: int = 64, stride: int = 4):
    """Ours: a band of stride+1 blocks and the strided blocks re-ordered by residue into one causal
    call, each one CPU flash call, merged through their log-sum-exps."""
    return union_attention(q, k, v, Strided(block, stride))


# --- bigbird ----------------------------------------------------------------------------------


@register_variant(
    "sparse.bigbird.masked",
    family="sparse",
    supports=MASKED,
    prepare=prepare_dense,
    decoder=BlockSparseKVDecoder,
    validate=positive("block"),
)
def bigbird_masked(
    q, k, v, *, block: int = 64, window: int = 3, globals: int = 1, randoms: int = 2, seed: int = 0
):
    """Dense masked SDPA (quadratic cost) over the BigBird pattern."""
    return masked_sdpa(q, k, v, BigBird(block, window, globals, randoms, seed))


@register_variant(
    "sparse.bigbird.blocked",
    family="sparse",
    prepare=prepare_blocked,
    decoder=BlockSparseKVDecoder,
    validate=positive("block"),
)
def bigbird_blocked(
    q, k, v, *, block: int = 64, window: int = 3, globals: int = 1, randoms: int = 2, seed: int = 0
):
    """Block-sparse PyTorch, cost proportional to the attended blocks (BigBird pattern)."""
    return block_sparse_attention(q, k, v, BigBird(block, window, globals, randoms, seed), block)


@register_variant(
    "sparse.bigbird.flex",
    family="sparse",
    supports=FLEX,
    prepare=prepare_flex,
    decoder=FlexKVDecoder,
    validate=positive("block"),
)
def bigbird_flex(
    q, k, v, *, block: int = 64, window: int = 3, globals: int = 1, randoms: int = 2, seed: int = 0
):
    """FlexAttention with the BigBird pattern's BlockMask."""
    return flex(q, k, v, BigBird(block, window, globals, randoms, seed))


@register_variant(
    "sparse.bigbird.union",
    family="sparse",
    supports=UNION,
    prepare=prepare_union,
    decoder=BlockSparseKVDecoder,
    validate=positive("block"),
)
def bigbird_union(
    q, k, v, *, block: int = 64, window: int = 3, globals: int = 1, randoms: int = 2, seed: int = 0
):
    """Ours: a band of window blocks, the global blocks and the gathered random blocks, one CPU
    flash call each, merged through their log-sum-exps."""
    return union_attention(q, k, v, BigBird(block, window, globals, randoms, seed))


# --- longformer -------------------------------------------------------------------------------


@register_variant(
    "sparse.longformer.masked",
    family="sparse",
    supports=MASKED,
    prepare=prepare_dense,
    decoder=BlockSparseKVDecoder,
)
def longformer_masked(q, k, v, *, window: int = 256, globals: int = 16):
    """Dense masked SDPA (quadratic cost) over the Longformer pattern."""
    return masked_sdpa(q, k, v, Longformer(window, globals))


@register_variant(
    "sparse.longformer.blocked",
    family="sparse",
    prepare=prepare_blocked,
    decoder=BlockSparseKVDecoder,
    validate=positive("block"),
)
def longformer_blocked(q, k, v, *, window: int = 256, globals: int = 16, block: int = 64):
    """Block-sparse PyTorch over ``block``-token tiles, cost proportional to the attended tiles
    (the Longformer pattern is token-level: the tile size is the implementation's)."""
    return block_sparse_attention(q, k, v, Longformer(window, globals), block)


@register_variant(
    "sparse.longformer.flex",
    family="sparse",
    supports=FLEX,
    prepare=prepare_flex,
    decoder=FlexKVDecoder,
)
def longformer_flex(q, k, v, *, window: int = 256, globals: int = 16):
    """FlexAttention with the Longformer pattern's BlockMask."""
    return flex(q, k, v, Longformer(window, globals))


@register_variant(
    "sparse.longformer.banded",
    family="sparse",
    validate=positive("block", "window"),
    prepare=prepare_banded,
    decoder=BlockSparseKVDecoder,
)
def longformer_banded(q, k, v, *, window: int = 256, globals: int = 16, block: int = 64):
    """Ours: the window as strided bands of keys, the global keys merged through the log-sum-exps
    on the CPU (elsewhere in front of every band), see sliding_window.banded."""
    return banded_attention(q, k, v, Longformer(window, globals), block)
