"""Token-by-token decoding reproduces the parallel forward, for every variant that decodes, with
the variant's own decoder, and grouped-query caches hold only the key/value heads."""

from __future__ import annotations

import pytest
import torch

import attnbench
from attnbench.attention.decode import (
    BlockSparseKVDecoder,
    FlexKVDecoder,
    KVCache,
    NaiveKVDecoder,
    RecurrentDecoder,
    RingBufferDecoder,
    SdpaKVDecoder,
)
from attnbench.bench.gate import conditioning
from attnbench.case import Case
from helpers import assert_close_to_reference, is_flex, random_qkv, small_variant

SHAPE = (2, 40, 4, 32, 2)  # B, N, H, D, H_kv: grouped-query attention
PROMPT = 13


def _decodable():
    for name in attnbench.variant_names():
        v = small_variant(name)
        yield pytest.param(v.label, id=v.label)


@pytest.mark.parametrize("spec", list(_decodable()))
def test_decode_matches_parallel_forward(spec):
    variant = attnbench.get_variant(spec)
    b, n, h, d, kv = SHAPE
    for pass_ in ("fwd", "decode"):
        reasons = variant.not_supported_reasons(
            Case(batch=b, seq_len=n, heads=h, kv_heads=kv, head_dim=d, pass_=pass_)
        )
        if reasons:
            pytest.skip(f"{variant.label} [{pass_}]: " + "; ".join(reasons))
    q, k, v = random_qkv(SHAPE, torch.float32)
    dec = variant.decoder(b, h, d, kv_heads=kv, max_len=n)
    assert dec.name == variant.decoder_name
    outs = [dec.prefill(q[:, :PROMPT], k[:, :PROMPT], v[:, :PROMPT])]
    sizes = []
    for t in range(PROMPT, n):
        outs.append(dec.step(q[:, t : t + 1], k[:, t : t + 1], v[:, t : t + 1]))
        sizes.append(dec.cache_bytes())
    got = torch.cat(outs, dim=1)
    # the gate's rule against the float64 reference (a fixed atol flaked on one processor's
    # float32 rounding of FAVOR+ features, 6e-5 on outputs of order 1)
    ref = variant.reference(q, k, v)
    plain = variant.reference(q, k, v, dtype=torch.float32)
    assert_close_to_reference(
        f"{variant.label} decoded",
        got,
        plain,
        ref,
        torch.float32,
        conditioning=conditioning(variant, q, k),
    )
    if not is_flex(spec):  # flex: avoid a second compile; its forward is tested elsewhere
        assert_close_to_reference(
            f"{variant.label} parallel",
            variant(q, k, v),
            plain,
            ref,
            torch.float32,
            conditioning=conditioning(variant, q, k),
        )
    # the cache holds what the family keeps, for the key/value heads only
    per_token = 2 * b * kv * d * 4
    if isinstance(dec, RingBufferDecoder):
        assert sizes[-1] == min(n, variant.pattern.window) * per_token
        assert variant.pattern.window < n  # the test wraps the ring buffer around
    elif isinstance(dec, KVCache):
        assert sizes[-1] == n * per_token
    else:
        assert isinstance(dec, RecurrentDecoder) and len(set(sizes)) == 1
        assert dec.state.shape[1] == kv


def test_each_family_decodes_with_its_own_kernel():
    name = {n: attnbench.get_variant(n).decoder_name for n in attnbench.variant_names()}
    assert name["naive.softmax"] == NaiveKVDecoder.name == "kv_cache.naive"
    assert name["fused.sdpa"] == SdpaKVDecoder.name
    assert name["fused.sdpa_math"] == "kv_cache.sdpa_math"
    assert name["fused.flash_attn"] == "kv_cache.flash_attn"
    assert name["fused.xformers"] == "kv_cache.xformers"
    assert name["fused.flex"] == name["sparse.bigbird.flex"] == FlexKVDecoder.name
    assert name["sparse.bigbird.blocked"] == BlockSparseKVDecoder.name
    assert name["sliding_window.blocked"] == RingBufferDecoder.name
    assert name["linear.elu.chunked"] == RecurrentDecoder.name
    assert len({name["naive.softmax"], name["fused.sdpa"], name["sparse.strided.union"]}) == 3


def test_block_sparse_decoding_builds_its_indices_once():
    """No per-step mask, nonzero or gather index construction: the tables come from one cached
    build per (pattern, length, block)."""
    from attnbench.attention import decode

    variant = attnbench.get_variant("sparse.strided.blocked:block=8,stride=3")
    decode.decode_tables.cache_clear()
    q, k, v = random_qkv((1, 64, 2, 16), torch.float32)
    dec = variant.decoder(1, 2, 16, max_len=64)
    dec.prefill(q[:, :8], k[:, :8], v[:, :8])
    for t in range(8, 64):
        dec.step(q[:, t : t + 1], k[:, t : t + 1], v[:, t : t + 1])
    info = decode.decode_tables.cache_info()
    assert info.misses == 1 and info.currsize == 1


def test_decoder_rejects_bad_use():
    variant = attnbench.get_variant("fused.sdpa")
    dec = variant.decoder(1, 2, 8, max_len=3)
    q = torch.randn(1, 2, 2, 8)
    dec.prefill(q, q, q)
    with pytest.raises(ValueError, match="prefill must come first"):
        dec.prefill(q, q, q)
    with pytest.raises(ValueError, match="expected"):
        dec.step(q, q, q)
    one = q[:, :1]
    dec.step(one, one, one)
    with pytest.raises(ValueError, match="decoder is full"):
        dec.step(one, one, one)
    with pytest.raises(ValueError, match="kv_heads=3 must divide heads=2"):
        variant.decoder(1, 2, 8, kv_heads=3, max_len=3)


def test_decode_from_an_empty_cache():
    variant = attnbench.get_variant("sliding_window.blocked:window=4")
    q, k, v = random_qkv((1, 9, 1, 8), torch.float32)
    dec = variant.decoder(1, 1, 8, max_len=9)
    got = torch.cat(
        [dec.step(q[:, t : t + 1], k[:, t : t + 1], v[:, t : t + 1]) for t in range(9)], 1
    )
    torch.testing.assert_close(got.double(), variant.reference(q, k, v), atol=1e-5, rtol=1e-5)
