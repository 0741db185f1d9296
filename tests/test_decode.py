"""Token-by-token decoding reproduces the parallel forward, for every variant that decodes."""

from __future__ import annotations

import pytest
import torch

import attnbench
from attnbench.attention.decode import KVCacheDecoder, RecurrentDecoder, RingBufferDecoder
from attnbench.registry import Case

from helpers import is_flex, random_qkv, small_variant

SHAPE = (2, 40, 2, 32)  # B, N, H, D
PROMPT = 13


def _decodable():
    for name in attnbench.variant_names():
        v = small_variant(name)
        # flex compiles one kernel per prompt length: keep it to the prompt only
        yield pytest.param(v.label, id=v.label)


@pytest.mark.parametrize("spec", list(_decodable()))
def test_decode_matches_parallel_forward(spec):
    variant = attnbench.get_variant(spec)
    b, n, h, d = SHAPE
    for pass_ in ("fwd", "decode"):
        reasons = variant.not_supported_reasons(Case(batch=b, seq_len=n, heads=h, head_dim=d, pass_=pass_))
        if reasons:
            pytest.skip(f"{variant.label} [{pass_}]: " + "; ".join(reasons))
    q, k, v = random_qkv(SHAPE, torch.float32)
    dec = variant.decoder(b, h, d, max_len=n)
    outs = [dec.prefill(q[:, :PROMPT], k[:, :PROMPT], v[:, :PROMPT])]
    sizes = []
    for t in range(PROMPT, n):
        outs.append(dec.step(q[:, t : t + 1], k[:, t : t + 1], v[:, t : t + 1]))
        sizes.append(dec.cache_bytes())
    got = torch.cat(outs, dim=1)
    ref = variant.reference(q, k, v)
    full = ref if is_flex(spec) else variant(q, k, v).double()  # flex: avoid a second compile
    torch.testing.assert_close(got.double(), full, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got.double(), ref, atol=2e-5, rtol=1e-4)
    # the cache holds what the family keeps
    per_token = 2 * b * h * d * 4
    if isinstance(dec, KVCacheDecoder):
        assert sizes[-1] == n * per_token
    elif isinstance(dec, RingBufferDecoder):
        assert sizes[-1] == min(n, variant.pattern.window) * per_token
        assert variant.pattern.window < n  # the test wraps the ring buffer around
    else:
        assert isinstance(dec, RecurrentDecoder) and len(set(sizes)) == 1


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


def test_decode_from_an_empty_cache():
    variant = attnbench.get_variant("sliding_window.blocked:window=4")
    q, k, v = random_qkv((1, 9, 1, 8), torch.float32)
    dec = variant.decoder(1, 1, 8, max_len=9)
    got = torch.cat([dec.step(q[:, t : t + 1], k[:, t : t + 1], v[:, t : t + 1]) for t in range(9)], 1)
    torch.testing.assert_close(got.double(), variant.reference(q, k, v), atol=1e-5, rtol=1e-5)
