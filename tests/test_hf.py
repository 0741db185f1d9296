"""Variants inside Hugging Face transformers models (tiny random Llama and Mistral from configs):
exact variants give transformers' own logits and greedy generation; approximations do not; what
a variant cannot honour is refused with its reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from attnbench import hf  # noqa: E402

EXACT = [
    "naive.softmax",
    "fused.sdpa",
    "fused.sdpa_math",
    "sparse.strided.blocked:block=8,stride=1",
    "linear.elu.chunked",
]  # the last is not exact: it must differ
IDS = torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(0))


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def llama():
    return hf.build("llama-tiny")


@pytest.mark.parametrize(
    "spec",
    [
        "naive.softmax",
        "fused.sdpa",
        "fused.sdpa_math",
        "sparse.longformer.blocked:window=64,globals=2",
        "sliding_window.banded:window=64,block=8",
    ],
)
def test_exact_variants_give_transformers_own_logits(llama, spec):
    hf.use_variant(llama, "sdpa")
    base = _logits(llama)
    hf.use_variant(llama, spec)
    assert llama.config._attn_implementation == hf.implementation_name(
        __import__("attnbench").get_variant(spec)
    )
    torch.testing.assert_close(_logits(llama), base, atol=1e-4, rtol=1e-4)


def test_a_narrower_window_or_linear_attention_changes_the_logits(llama):
    hf.use_variant(llama, "sdpa")
    base = _logits(llama)
    for spec in ("sliding_window.blocked:window=8", "linear.elu.chunked:chunk=16"):
        hf.use_variant(llama, spec)
        assert (_logits(llama) - base).abs().max() > 1e-3, spec


@pytest.mark.parametrize("spec", ["naive.softmax", "fused.sdpa", "sliding_window.masked:window=64"])
def test_greedy_generation_with_the_kv_cache_matches_sdpa(llama, spec):
    prompt = IDS[:, :10]
    hf.use_variant(llama, "sdpa")
    with torch.no_grad():
        want = llama.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
        hf.use_variant(llama, spec)
        got = llama.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(got, want)


def test_mistral_window_is_honoured_or_refused():
    model = hf.build("mistral-tiny")  # sliding_window = 32, N = 48: the window binds
    base = _logits(model)
    hf.use_variant(model, "sliding_window.blocked:window=32")  # the model's own window: exact
    torch.testing.assert_close(_logits(model), base, atol=1e-4, rtol=1e-4)
    hf.use_variant(model, "sliding_window.blocked:window=16")  # narrower: runs, and differs
    assert (_logits(model) - base).abs().max() > 1e-3
    hf.use_variant(model, "fused.sdpa")  # full attention would see keys the window hides
    with pytest.raises(
        hf.VariantRefused, match="fused.sdpa cannot honour .* query 32 would see key 0"
    ):
        _logits(model)
    short = IDS[:, :24]  # shorter than the window: full attention is the model's attention
    hf.use_variant(model, "sdpa")
    want = _logits(model, short)
    hf.use_variant(model, "fused.sdpa")
    torch.testing.assert_close(_logits(model, short), want, atol=1e-4, rtol=1e-4)


def test_a_padding_mask_is_refused(llama):
    hf.use_variant(llama, "fused.sdpa")
    mask = torch.ones_like(IDS)
    mask[0, :5] = 0  # left padding of the first sequence
    with pytest.raises(hf.VariantRefused, match="cannot honour a padding mask"):
        with torch.no_grad():
            llama(IDS, attention_mask=mask)


def test_grouped_query_heads_reach_the_variant(llama):
    """llama-tiny has 4 query heads over 2 key/value heads; qwen2-tiny one key/value head."""
    model = hf.build("qwen2-tiny")
    base = _logits(model)
    hf.use_variant(model, "fused.sdpa")  # native grouped-query attention
    torch.testing.assert_close(_logits(model), base, atol=1e-4, rtol=1e-4)
    hf.use_variant(model, "sliding_window.banded:window=64,block=8")  # heads repeated for it
    torch.testing.assert_close(_logits(model), base, atol=1e-4, rtol=1e-4)


def test_a_saved_checkpoint_loads_without_network(tmp_path, llama):
    hf.use_variant(llama, "sdpa")
    llama.save_pretrained(tmp_path / "ckpt")
    again = hf.load(tmp_path / "ckpt")
    torch.testing.assert_close(_logits(again), _logits(llama))
    assert hf.tokenizer_of(tmp_path / "ckpt") is None  # no tokenizer files: scored as bytes
    with pytest.raises(ValueError, match="not a preset"):
        hf.config(str(tmp_path / "nothing"))


def test_transformers_own_attention_and_variants_pass_the_future_leak_test(llama, planted_variants):
    """The quality gate's future-leak test on a transformers model: its own implementations
    (eager, sdpa) and honest variants are causal; a variant that sees the next tokens is not."""
    from attnbench.quality.precheck import future_leak

    def logits_of(ids):
        return llama(ids, use_cache=False).logits

    vocab = llama.config.vocab_size
    for spec in ("eager", "sdpa", "fused.sdpa", "sliding_window.blocked:window=8"):
        hf.use_variant(llama, spec)
        assert future_leak(logits_of, vocab, 40) is None, spec
    hf.use_variant(llama, "fused.planted_leaky")
    why = future_leak(logits_of, vocab, 40)
    assert why and why.startswith("sees the future: changing the tokens after position 20")
    hf.use_variant(llama, "sdpa")


@pytest.mark.slow  # a quality run through the command line
def test_a_transformers_dropin_gates_each_variant_with_the_leak_test(tmp_path, llama):
    """Drop-in evaluation of a saved transformers model through the CLI: an honest variant is
    scored; one that sees the next tokens gets an ``incorrect`` row and no number."""
    from attnbench.bench import results
    from helpers import only_run, run_cli

    planted = str(Path(__file__).parent / "plugins" / "planted.py")

    hf.use_variant(llama, "sdpa")
    llama.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "runs"
    run_cli(
        "quality",
        "--hf-model",
        str(tmp_path / "ckpt"),
        "--dataset",
        "pystdlib",
        "--variants",
        "fused.sdpa,fused.planted_leaky",
        "--eval-lens",
        "32",
        "--eval-tokens",
        "2K",
        "--ngram-order",
        "0",
        "--plugins",
        planted,
        "--out",
        str(out),
        "--quiet",
    )
    rows = [r for r in results.read_rows(only_run(out)) if "eval_len" in r]
    by = {r["variant"]: r for r in rows}
    assert by["fused.sdpa"]["status"] == "ok" and abs(by["fused.sdpa"]["rel_diff"]) < 1e-4
    leaky = by["fused.planted_leaky"]
    assert leaky["status"] == "incorrect" and "sees the future" in leaky["reason"]
    assert leaky.get("bits_per_byte") is None


def test_decoding_inside_a_transformers_model_steps_the_variants_own_decoder(llama):
    """A new token against transformers' cache goes through the variant's decoder, which the
    layer keeps between steps; a new prompt, or a cache that is not the decoder's, rebuilds it."""
    hf.use_variant(llama, "sdpa")
    prompt = IDS[:, :9]
    with torch.no_grad():
        want = llama.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0)
    for spec, name in (
        ("fused.sdpa", "kv_cache.sdpa"),
        ("sliding_window.blocked:window=8", "ring_buffer.sdpa"),
    ):
        hf.use_variant(llama, spec)
        with torch.no_grad():
            got = llama.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0)
        held = hf.held_decoders(llama)
        assert len(held) == llama.config.num_hidden_layers
        assert held[0][1].name == name and held[0][1].position == 9 + 10 - 1
        if spec == "fused.sdpa":
            assert torch.equal(got, want)
    # another prompt of the same length: the held decoders are not reused stale
    hf.use_variant(llama, "fused.sdpa")
    other = IDS[:, 20:29]
    with torch.no_grad():
        a = llama.generate(other, max_new_tokens=6, do_sample=False, pad_token_id=0)
        hf.use_variant(llama, "sdpa")
        b = llama.generate(other, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(a, b)


def test_model_level_decode_rows_of_a_transformers_model_are_real_decoders(
    tmp_path, planted_variants
):
    from attnbench.bench import results, runner
    from attnbench.bench.suite import from_dict

    suite = from_dict(
        {
            "name": "t",
            "device": "cpu",
            "model": {
                "preset": "hf:llama-tiny",
                "variants": [
                    "fused.sdpa",
                    "linear.elu.chunked:chunk=16",
                    "fused.planted_drop_oldest",
                ],
                "seq_lens": [48],
                "batch": 1,
                "passes": ["decode"],
            },
            "timing": {"budget_s": 0.05, "max_reps": 10, "ceiling_s": 0.1, "memory": False},
        }
    )
    planted = str(Path(__file__).parent / "plugins" / "planted.py")
    runner.run(suite, tmp_path / "run", plugins=[planted], progress=False)
    rows = {r["variant"]: r for r in results.read_rows(tmp_path / "run")}
    # a decoder that drops the oldest key is caught inside the model too
    assert rows["fused.planted_drop_oldest"]["status"] == "incorrect"
    for variant, decoder in (
        ("fused.sdpa", "kv_cache.sdpa"),
        ("linear.elu.chunked:chunk=16", "recurrent"),
    ):
        row = rows[variant]
        assert row["status"] == "ok", row["reason"]
        assert row["decode_kind"] == "decoder" and row["decoder"].startswith(decoder)
