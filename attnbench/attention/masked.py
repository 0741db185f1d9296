"""A pattern through PyTorch's own kernels: dense masked SDPA and FlexAttention.

- ``masked_sdpa``: PyTorch SDPA with the pattern's dense (N, N) boolean mask: the quadratic
  strawman of every structured pattern.
- ``flex``: FlexAttention (compiled once per process) with the pattern's ``BlockMask``. On CUDA
  block masks are built by the compiled ``create_block_mask`` (the eager one materialises the
  whole (N, N) mask: about 9 GiB of temporaries at 32k); they are cached per (pattern, N,
  device), so their construction stays outside timed regions. ``FlexDecodeMask`` is the
  decoder's.
- ``prepare_*``: the ``prepare`` hooks of the variants that use these and our engines: they build
  the per-shape masks and plans ahead of timing.

Caches are keyed by ``attnbench.case.device_key`` (``cuda`` and ``cuda:0`` are one entry).
Grouped-query inputs (k, v with fewer heads) go to the kernels with ``enable_gqa``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from attnbench.attention.patterns import Full, Pattern
from attnbench.case import device_key

FLEX_BLOCK = 128


@functools.lru_cache(maxsize=32)
def dense_mask(pattern: Pattern, n: int, device: str) -> torch.Tensor:
    return pattern.dense_mask(n, device=device)


def masked_sdpa(q, k, v, pattern: Pattern) -> torch.Tensor:
    """SDPA with the dense boolean mask of ``pattern``; (B, N, H, D) in and out."""
    mask = dense_mask(pattern, q.shape[1], device_key(q.device))
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        attn_mask=mask,
        enable_gqa=k.shape[2] != q.shape[2],
    )
    return out.transpose(1, 2)


@functools.lru_cache(maxsize=1)
def compiled_flex_attention():
    """``torch.compile(flex_attention)``. Each (pattern, shape, dtype) is its own graph: past
    dynamo's default recompile limit (8) it would silently fall back to the unfused eager path
    and a benchmark would time the wrong thing, so the limit is raised for this process."""
    import torch._dynamo.config as dynamo_config
    from torch.nn.attention.flex_attention import flex_attention

    for name in (
        "recompile_limit",
        "cache_size_limit",
        "accumulated_recompile_limit",
        "accumulated_cache_size_limit",
    ):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), 4096))
    return torch.compile(flex_attention, dynamic=False)


@functools.lru_cache(maxsize=32)
def flex_block_mask(pattern: Pattern, n: int, device: str):
    """FlexAttention BlockMask for ``pattern`` at length ``n`` (None: no mask needed)."""
    if isinstance(pattern, Full) and not pattern.causal:
        return None
    return block_mask_builder(device)(
        pattern.flex_mask_mod(n, device), None, None, n, n, device=device, BLOCK_SIZE=FLEX_BLOCK
    )


def block_mask_builder(device):
    """``create_block_mask``, compiled on CUDA: eagerly it materialises the whole (N, N) mask
    (about 9 GiB of temporaries at N = 32k). On the CPU, where N stays at 16k and compiling it
    would cost more than it saves, the eager one."""
    from torch.nn.attention.flex_attention import create_block_mask

    if torch.device(device).type == "cuda":
        return _compiled_create_block_mask()
    return create_block_mask


@functools.lru_cache(maxsize=1)
def _compiled_create_block_mask():
    from torch.nn.attention.flex_attention import create_block_mask

    return torch.compile(create_block_mask)


class FlexDecodeMask:
    """The BlockMask of one query over a cache of ``max_len`` keys, at the position held in the
    tensor ``pos``: the mask reads ``pos`` when the kernel runs, and ``move_to(t)`` copies the
    key-block list of t's query block into the BlockMask's own index tensors, so one compiled
    graph serves every step and each step visits only the key blocks its pattern attends."""

    def __init__(self, pattern: Pattern, max_len: int, device):
        from torch.nn.attention.flex_attention import BlockMask

        counts = pattern.block_counts(max_len, FLEX_BLOCK) > 0  # (nqb, nkb) attended blocks
        order = torch.sort(counts.to(torch.int8), dim=1, descending=True, stable=True).indices
        self.num_all = counts.sum(1).to(torch.int32).to(device)  # (nqb,)
        self.idx_all = order.to(torch.int32).to(device)  # (nqb, nkb): attended blocks first
        self.pos = torch.zeros(1, dtype=torch.int64, device=device)
        fn, pos = pattern.mask_fn(max_len, device), self.pos

        def mask_mod(b, h, q_idx, kv_idx):
            return (kv_idx <= pos[0]) & fn(pos[0], kv_idx)

        self.num = self.num_all[:1].clone().view(1, 1, 1)
        self.idx = self.idx_all[:1].clone().view(1, 1, 1, -1)
        self.block_mask = BlockMask.from_kv_blocks(
            self.num, self.idx, BLOCK_SIZE=FLEX_BLOCK, mask_mod=mask_mod, seq_lengths=(1, max_len)
        )

    def move_to(self, t: int) -> None:
        row = t // FLEX_BLOCK
        self.pos.fill_(t)
        self.num.view(-1).copy_(self.num_all[row])
        self.idx.view(-1).copy_(self.idx_all[row])


def flex(q, k, v, pattern: Pattern) -> torch.Tensor:
    """FlexAttention over ``pattern``; (B, N, H, D) in and out."""
    block_mask = flex_block_mask(pattern, q.shape[1], device_key(q.device))
    out = compiled_flex_attention()(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        block_mask=block_mask,
        enable_gqa=k.shape[2] != q.shape[2],
    )
    return out.transpose(1, 2)


def prepare_dense(variant, case) -> None:
    dense_mask(variant.math.pattern_for(case.causal), case.seq_len, device_key(case.device))


def prepare_flex(variant, case) -> None:
    flex_block_mask(variant.math.pattern_for(case.causal), case.seq_len, device_key(case.device))


def prepare_blocked(variant, case) -> None:
    from attnbench.attention.blocksparse import block_plan

    block_plan(variant.pattern, case.seq_len, variant.params["block"], device_key(case.device))


def prepare_banded(variant, case) -> None:
    from attnbench.attention.blocksparse import band_plan

    band_plan(
        variant.params["window"],
        variant.params["block"],
        variant.params.get("globals", 0),
        case.dtype,
        case.device,
    )


def prepare_union(variant, case) -> None:
    from attnbench.attention.flashunion import union_plan

    union_plan(
        variant.math.pattern_for(case.causal), case.seq_len, case.dtype, device_key(case.device)
    )
