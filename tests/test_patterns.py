"""Patterns: the conventions, prefix consistency, counts, block layouts and FLOPs."""

from __future__ import annotations

import pytest
import torch

import attnbench
from attnbench.attention.blocksparse import block_plan
from attnbench.attention.patterns import BigBird, Full, Longformer, SlidingWindow, Strided, render
from attnbench.registry import Case

PATTERNS = [Full(), Full(False), SlidingWindow(5), SlidingWindow(1), Strided(4, 3),
            BigBird(4, 2, 1, 2, seed=5), Longformer(6, 3)]


def test_window_convention():
    m = SlidingWindow(3).dense_mask(6)
    assert m[5].tolist() == [False, False, False, True, True, True]  # keys i-w+1 .. i
    assert m[0].tolist() == [True] + [False] * 5


@pytest.mark.parametrize("pattern", PATTERNS, ids=str)
def test_pairs_match_a_brute_force_count(pattern):
    for n in (1, 7, 33, 100):
        brute = sum(bool(pattern.mask_fn(n)(torch.tensor(i), torch.tensor(j)))
                    for i in range(n) for j in range(n)) if n <= 33 else int(pattern.dense_mask(n).sum())
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
    assert causal.flops(case) == 4 * 2 * 3 * 16 * (100 * 101 // 2)
    assert causal.flops(Case(batch=2, seq_len=100, heads=3, head_dim=16, pass_="fwd_bwd")) == int(
        3.5 * causal.flops(case))
    sw = attnbench.get_variant("sliding_window.blocked:window=10")
    assert sw.flops(case) == 4 * 2 * 3 * 16 * int(SlidingWindow(10).dense_mask(100).sum())
    lin = attnbench.get_variant("linear.performer.chunked:features=32")
    assert lin.flops(case) == 4 * 2 * 3 * 100 * 32 * 16
