"""The identical language model: exact variants agree, decoding equals repeated forwards."""

from __future__ import annotations

import pytest
import torch

from attnbench.model import PRESETS, ModelConfig, TransformerLM

EXACT = [
    "naive.softmax",
    "fused.sdpa",
    "fused.sdpa_math",
    "fused.sdpa_flash",
    # patterns that cover every earlier key at this length are exact too
    "sliding_window.blocked:window=64",
    "sliding_window.masked:window=64",
    "sparse.strided.blocked:block=8,stride=1",
    "sparse.longformer.blocked:window=64",
]


def _model(spec="fused.sdpa", seed=0):
    torch.manual_seed(seed)
    return TransformerLM(ModelConfig.from_name("tiny"), attention=spec).eval()


def test_presets_and_config_errors():
    assert set(PRESETS) == {"tiny", "small", "gpt2", "recall"}
    assert ModelConfig.from_name("small").head_dim == 64
    assert ModelConfig.from_name("gpt2").dim == 768
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        ModelConfig.from_name("huge")
    with pytest.raises(ValueError, match="unknown ModelConfig field 'width'"):
        ModelConfig.from_name("tiny", width=3)
    with pytest.raises(ValueError, match="not divisible"):
        ModelConfig(dim=10, n_heads=3)
    for cfg in (
        ModelConfig.from_name("tiny"),
        ModelConfig.from_name("small", n_kv_heads=2),
        ModelConfig.from_name("recall"),
    ):
        assert sum(p.numel() for p in TransformerLM(cfg).parameters()) == cfg.num_params()
    with pytest.raises(ValueError, match="n_kv_heads=3 must divide n_heads=4"):
        ModelConfig(n_heads=4, n_kv_heads=3)


def test_same_seed_same_weights_whatever_the_attention():
    a, b = _model("fused.sdpa"), _model("linear.elu.chunked")
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb)


def test_exact_variants_give_the_same_logits():
    model = _model()
    idx = torch.randint(0, 256, (2, 50), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = model(idx)
        for spec in EXACT:
            model.set_attention(spec)
            torch.testing.assert_close(model(idx), base, atol=2e-5, rtol=1e-5, msg=spec)
        model.set_attention("sliding_window.blocked:window=8")
        assert (model(idx) - base).abs().max() > 1e-3  # a narrow window does change the model


@pytest.mark.parametrize(
    "spec",
    [
        "naive.softmax",
        "fused.sdpa",
        "sliding_window.blocked:window=8",
        "sparse.bigbird.blocked:block=4,window=2,randoms=1",
        "linear.elu.chunked:chunk=8",
        "linear.performer.chunked:chunk=8",
    ],
)
@pytest.mark.parametrize("kv_heads", [0, 1], ids=["mha", "mqa"])
def test_greedy_decoding_equals_repeated_forwards(spec, kv_heads):
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig.from_name("tiny", n_kv_heads=kv_heads), attention=spec).eval()
    prompt = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(2))
    cached = model.generate(prompt, 20)
    uncached = model.generate(prompt, 20, use_cache=False)
    assert cached.shape == (2, 27)
    assert torch.equal(cached, uncached)


def test_training_step_runs_and_lowers_the_loss():
    model = _model("sliding_window.blocked:window=16").train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    idx = torch.randint(0, 256, (4, 33), generator=torch.Generator().manual_seed(3))
    losses = []
    for _ in range(15):
        loss = model.loss(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0


@pytest.mark.parametrize("spec", ["fused.sdpa", "linear.elu.chunked:chunk=8"])
def test_the_short_convolution_decodes_like_the_parallel_forward(spec):
    """The recall preset's width-3 convolution keeps its last inputs on each block's decoder."""
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig.from_name("recall"), attention=spec).eval()
    prompt = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(4))
    assert torch.equal(model.generate(prompt, 12), model.generate(prompt, 12, use_cache=False))


def test_nanogpts_choices_layer_norm_and_learned_positions():
    """The calibration's architecture: LayerNorm without bias and a learned position table; it
    is causal, decodes like its parallel forward, and refuses positions beyond its table."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("tiny", norm="layer", positions="learned", max_positions=32)
    model = TransformerLM(cfg).eval()
    assert isinstance(model.norm, torch.nn.LayerNorm) and model.norm.bias is None
    assert model.pos.weight.shape == (32, cfg.dim)
    rotary = TransformerLM(ModelConfig.from_name("tiny")).eval()
    assert rotary.pos is None and isinstance(rotary.norm, torch.nn.RMSNorm)
    idx = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(5))
    changed = idx.clone()
    changed[:, 11:] = 7
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :11], b[:, :11])  # causal
    assert (a[:, 11:] - b[:, 11:]).abs().max() > 1e-3
    # positions matter: the same token at two positions gives two different outputs
    same = torch.full((1, 4), 65)
    with torch.no_grad():
        out = model(same)
    assert (out[0, 1] - out[0, 2]).abs().max() > 1e-4
    prompt = idx[:, :5]
    assert torch.equal(model.generate(prompt, 12), model.generate(prompt, 12, use_cache=False))
    with pytest.raises(ValueError, match="position 32 is beyond the learned table's 32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown norm 'batch'; valid: rms, layer"):
        ModelConfig.from_name("tiny", norm="batch")
