"""Shared building blocks of the variants: dense masked SDPA, FlexAttention, optional packages.

- ``masked_sdpa``: PyTorch SDPA with the pattern's dense (N, N) boolean mask: the quadratic
  strawman of every structured pattern.
- ``flex``: FlexAttention (compiled once per process) with the pattern's ``BlockMask``; block
  masks are cached per (pattern, N, device), so their construction stays outside timed regions.
- ``probe_reasons``: runs an optional package's kernel on a tiny input and turns the
  ``NotImplementedError`` it raises (xformers lists every kernel and why it cannot run) into
  reasons, cached per (device, dtype, head dim, pass).
"""

from __future__ import annotations

import functools
import re
import warnings
from typing import Callable

import torch
import torch.nn.functional as F

from attnbench.attention.patterns import Full, Pattern

FLEX_BLOCK = 128


@functools.lru_cache(maxsize=32)
def dense_mask(pattern: Pattern, n: int, device: str) -> torch.Tensor:
    return pattern.dense_mask(n, device=device)


def masked_sdpa(q, k, v, pattern: Pattern) -> torch.Tensor:
    """SDPA with the dense boolean mask of ``pattern``; (B, N, H, D) in and out."""
    mask = dense_mask(pattern, q.shape[1], str(q.device))
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
    )
    return out.transpose(1, 2)


@functools.lru_cache(maxsize=1)
def compiled_flex_attention():
    """``torch.compile(flex_attention)``. Each (pattern, shape, dtype) is its own graph: past
    dynamo's default recompile limit (8) it would silently fall back to the unfused eager path
    and a benchmark would time the wrong thing, so the limit is raised for this process."""
    import torch._dynamo.config as dynamo_config
    from torch.nn.attention.flex_attention import flex_attention

    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                 "accumulated_cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), 4096))
    return torch.compile(flex_attention, dynamic=False)


@functools.lru_cache(maxsize=32)
def flex_block_mask(pattern: Pattern, n: int, device: str):
    """FlexAttention BlockMask for ``pattern`` at length ``n`` (None: no mask needed)."""
    if isinstance(pattern, Full) and not pattern.causal:
        return None
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(
        pattern.flex_mask_mod(n, device), None, None, n, n, device=device, BLOCK_SIZE=FLEX_BLOCK
    )


def flex(q, k, v, pattern: Pattern) -> torch.Tensor:
    """FlexAttention over ``pattern``; (B, N, H, D) in and out."""
    block_mask = flex_block_mask(pattern, q.shape[1], str(q.device))
    out = compiled_flex_attention()(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=block_mask
    )
    return out.transpose(1, 2)


def prepare_dense(variant, case) -> None:
    dense_mask(variant.math.pattern_for(case.causal), case.seq_len, str(case.device))


def prepare_flex(variant, case) -> None:
    flex_block_mask(variant.math.pattern_for(case.causal), case.seq_len, str(case.device))


def prepare_blocked(variant, case) -> None:
    from attnbench.attention.blocksparse import block_plan

    block_plan(variant.pattern, case.seq_len, variant.params["block"], str(case.device))


def prepare_banded(variant, case) -> None:
    from attnbench.attention.blocksparse import band_plan

    band_plan(variant.params["window"], variant.params["block"], variant.params.get("globals", 0),
              case.dtype, case.device)


def prepare_union(variant, case) -> None:
    from attnbench.attention.flashunion import union_plan

    union_plan(variant.math.pattern_for(case.causal), case.seq_len, case.dtype, str(case.device))


def import_quietly(module: str):
    """Import an optional package, silencing import-time warnings (xformers warns on CPU)."""
    import importlib
    import logging

    logger = logging.getLogger(module.split(".")[0])
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(module)
    finally:
        logger.setLevel(level)


def probe_reasons(run: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                  key: tuple, device: str, dtype: torch.dtype, head_dim: int,
                  backward: bool) -> list[str]:
    """Run ``run(q, k, v)`` on a tiny (1, 16, 1, head_dim) input; reasons if it cannot."""
    return list(_probe(run, key, device, dtype, head_dim, backward))


@functools.lru_cache(maxsize=None)
def _probe(run, key, device, dtype, head_dim, backward) -> tuple[str, ...]:
    q = torch.randn(1, 16, 1, head_dim, device=device).to(dtype).requires_grad_(backward)
    try:
        out = run(q, q, q)
        if backward:
            out.sum().backward()
    except NotImplementedError as e:
        return tuple(summarize_not_implemented(str(e)))
    except (RuntimeError, ValueError, TypeError) as e:
        return (f"{type(e).__name__}: {str(e).splitlines()[0][:300]}",)
    return ()


def summarize_not_implemented(message: str) -> list[str]:
    """xformers' dispatch error -> one reason per kernel: '`ckF`: device=cpu (...); ...'."""
    reasons, current, why = [], None, []
    for line in message.splitlines():
        m = re.match(r"\s*`([^`]+)` is not supported because:", line)
        if m:
            if current:
                reasons.append(f"{current}: " + "; ".join(why))
            current, why = m.group(1), []
        elif current and line.strip():
            why.append(line.strip())
    if current:
        reasons.append(f"{current}: " + "; ".join(why))
    return reasons or [message.strip().splitlines()[0][:300]]
