"""Patterns: the conventions, prefix consistency, counts, block layouts and FLOPs."""

from __future__ import annotations

import pytest
import torch

import attnbench
from attnbench.attention.blocksparse import block_plan
from attnbench.attention.patterns import BigBird, Full, Longformer, SlidingWindow, Strided, render
from attnbench.bench.flops import attention_flops
from attnbench.case import Case, device_key

PATTERNS = [
    Full(),
    Full(False),
    SlidingWindow(5),
    SlidingWindow(1),
    Strided(4, 3),
    BigBird(4, 2, 1, 2, seed=5),
    Longformer(6, 3),
]


def test_window_convention():
    m = SlidingWindow(3).dense_mask(6)
    assert m[5].tolist() == [False, False, False, True, True, True]  # keys i-w+1 .. i
    assert m[0].tolist() == [True] + [False] * 5


@pytest.mark.parametrize("pattern", PATTERNS, ids=str)
def test_pairs_match_a_brute_force_count(pattern):
    for n in (1, 7, 33, 100):
        brute = (
            sum(
                bool(pattern.mask_fn(n)(torch.tensor(i), torch.tensor(j)))
                for i in range(n)
                for j in range(n)
            )
            if n <= 33
            else int(pattern.dense_mask(n).sum())
        )
        assert pattern.attended_pairs(n) == brute
        assert int(pattern.block_counts(n, 8).sum()) == brute


@pytest.mark.parametrize("pattern", [p for p in PATTERNS if p.causal], ids=str)
def test_causal_and_prefix_consistent(pattern):
    big = pattern.dense_mask(90)
    assert not big.triu(1).any()
    assert big.diagonal().all()  # every query sees itself
    assert torch.equal(pattern.dense_mask(41), big[:41, :41])
    for i in (0, 13, 89):
        assert torch.equal(pattern.row_mask(i), big[i, : i + 1])


def test_bigbird_random_blocks_are_seeded():
    a, b, c = BigBird(4, 1, 0, 2, seed=1), BigBird(4, 1, 0, 2, seed=1), BigBird(4, 1, 0, 2, seed=2)
    assert torch.equal(a.dense_mask(64), b.dense_mask(64))
    assert not torch.equal(a.dense_mask(64), c.dense_mask(64))
    # each row block has `randoms` random earlier blocks (besides its window)
    table = a.random_table(16)
    assert table[5:].sum(1).tolist() == [2] * 11


def test_block_plan_only_touches_attended_blocks():
    plan = block_plan(SlidingWindow(16), 1000, 16, "cpu")
    assert plan.max_keys == 2  # a 16-token window spans at most two 16-token blocks
    assert plan.pairs == SlidingWindow(16).attended_pairs(1000)
    assert int(plan.mask[:, :, :].sum()) >= plan.pairs


def test_render_draws_the_pattern():
    pic = render(SlidingWindow(2), 4).splitlines()
    assert pic == ["#...", "##..", ".##.", "..##"]


def test_flops_follow_the_documented_convention():
    case = Case(batch=2, seq_len=100, heads=3, head_dim=16)
    causal = attnbench.get_variant("fused.sdpa")
    fwd = attention_flops(causal, case)
    assert fwd == 4 * 2 * 3 * 16 * (100 * 101 // 2)
    assert attention_flops(causal, case.replace(pass_="fwd_bwd")) == int(3.5 * fwd)
    assert attention_flops(causal, case.replace(pass_="bwd")) == int(2.5 * fwd)
    assert attention_flops(causal, case.replace(kv_heads=1)) == fwd  # work per query head
    sw = attnbench.get_variant("sliding_window.blocked:window=10")
    assert attention_flops(sw, case) == 4 * 2 * 3 * 16 * int(
        SlidingWindow(10).dense_mask(100).sum()
    )
    lin = attnbench.get_variant("linear.performer.chunked:features=32")
    projection = 2 * 100 * (3 + 3) * 2 * 16 * 32  # B * N * (q and k heads) * 2 D F
    assert attention_flops(lin, case) == 4 * 2 * 3 * 100 * 32 * 16 + projection
    elu = attnbench.get_variant("linear.elu.chunked")  # element-wise features: no projection
    assert attention_flops(elu, case) == 4 * 2 * 3 * 100 * 16 * 16
    taylor = attnbench.get_variant("linear.taylor.chunked:feature_dim=4")  # F = 1 + 4 + 16
    expansion = 2 * 100 * (3 + 3) * (2 * 16 * 4 + 4 * 4)  # rows * (2 D f projection + f^2)
    assert attention_flops(taylor, case) == 4 * 2 * 3 * 100 * 21 * 16 + expansion


def test_mask_caches_have_one_key_per_device():
    """`prepare` (case.device, e.g. "cuda") and the call (tensor.device, e.g. "cuda:0") must hit
    the same cache entry: otherwise every mask is built twice, mask_ms times the unused one and
    both stay in memory."""
    from attnbench.attention import masked

    assert device_key("cpu") == device_key(torch.device("cpu")) == "cpu"
    if torch.cuda.is_available():
        assert device_key("cuda") == device_key(torch.device("cuda", torch.cuda.current_device()))
    variant = attnbench.get_variant("sliding_window.masked:window=7")
    masked.dense_mask.cache_clear()
    variant.prepare(Case(seq_len=50, heads=2, head_dim=16))
    q = torch.randn(1, 50, 2, 16)
    variant(q, q, q)
    info = masked.dense_mask.cache_info()
    assert info.misses == 1 and info.hits == 1


def test_flex_block_masks_are_built_compiled_on_cuda():
    from torch.nn.attention.flex_attention import create_block_mask

    from attnbench.attention import masked

    assert masked.block_mask_builder("cpu") is create_block_mask
    built = masked.block_mask_builder("cuda")  # compiling is lazy: no GPU is touched here
    assert built is not create_block_mask and built is masked.block_mask_builder("cuda:0")
