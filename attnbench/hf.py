"""Any attention variant inside a Hugging Face transformers model (``pip install 'attnbench[hf]'``).

    from attnbench import hf
    model = hf.build("llama-tiny")  # or hf.load("path/saved/by/save_pretrained")
    hf.use_variant(model, "sliding_window.banded:window=256")
    model(input_ids).logits; model.generate(input_ids, max_new_tokens=16)

``use_variant`` registers the variant with transformers' ``AttentionInterface`` (and the matching
mask function with ``AttentionMaskInterface``) as ``attnbench-<label>`` and sets it on the
model's config, so every attention layer that uses the interface runs it. The contract: each
layer computes exactly the variant's math (queries rescaled to the layer's ``scaling``,
grouped-query heads passed as they are), or the call raises ``VariantRefused`` naming the
variant and the reason: a mask that hides a key the variant would attend to (padding, a narrower
sliding window), attention dropout while training, soft-capping, sinks, position biases, a
bidirectional layer for a causal-only variant. With transformers' KV cache the new queries go
through the variant's parallel forward over the cached sequence (a correctness path, not a fast
decoder). Models come from ``PRESETS`` or a local ``save_pretrained`` folder; nothing is
downloaded. The rules in full: ``docs/hf.md``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from attnbench.registry import get_variant
from attnbench.variant import Variant

PREFIX = "attnbench-"

# Tiny configurations for tests and CPU runs (random weights; no download).
PRESETS: dict[str, dict[str, Any]] = {
    "llama-tiny": dict(
        model_type="llama",
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
    ),
    "mistral-tiny": dict(
        model_type="mistral",
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        sliding_window=32,
    ),
    "qwen2-tiny": dict(
        model_type="qwen2",
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        max_position_embeddings=2048,
    ),
    "llama-small": dict(
        model_type="llama",
        vocab_size=256,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
    ),
}


class VariantRefused(ValueError):
    """A variant cannot honour what the model asks of its attention."""


def _transformers():
    try:
        import transformers
    except ImportError as e:  # an optional extra
        raise ImportError("attnbench.hf needs transformers: pip install 'attnbench[hf]'") from e
    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bars in our logs
    return transformers


def config(name_or_dir: str, **overrides):
    """A transformers config: a preset name (``PRESETS``) or a local folder with config.json."""
    tf = _transformers()
    if name_or_dir in PRESETS:
        spec = dict(PRESETS[name_or_dir], **overrides)
        return tf.AutoConfig.for_model(spec.pop("model_type"), **spec)
    path = Path(name_or_dir)
    if not (path / "config.json").is_file():
        raise ValueError(
            f"unknown model {name_or_dir!r}: "
            f"not a preset (valid: {', '.join(PRESETS)}) "
            "and not a folder with a config.json (written by save_pretrained)"
        )
    return tf.AutoConfig.from_pretrained(path, local_files_only=True, **overrides)


def build(name_or_dir: str, *, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """A causal LM with random weights from a config (``seed`` fixes them); or, for a folder,
    its saved weights (``load``)."""
    tf = _transformers()
    if name_or_dir not in PRESETS:
        return load(name_or_dir, dtype=dtype)
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(
        config(name_or_dir, **overrides), attn_implementation="sdpa", dtype=dtype
    )
    return model.eval()


def load(folder: str | Path, *, dtype: torch.dtype = torch.float32):
    """A pretrained causal LM from a local folder written by ``save_pretrained`` (no network)."""
    tf = _transformers()
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} has no config.json: not a save_pretrained folder")
    model = tf.AutoModelForCausalLM.from_pretrained(
        folder, local_files_only=True, dtype=dtype, attn_implementation="sdpa"
    )
    return model.eval()


def tokenizer_of(folder: str | Path):
    """The folder's own tokenizer, or None (then text is scored as bytes)."""
    tf = _transformers()
    folder = Path(folder)
    if not any(
        (folder / f).exists()
        for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    ):
        return None
    return tf.AutoTokenizer.from_pretrained(folder, local_files_only=True)


def implementation_name(variant: Variant) -> str:
    """The name under which the variant is registered with transformers."""
    return PREFIX + re.sub(r"[^A-Za-z0-9_.=,-]", "_", variant.label)


def use_variant(model, spec: str | Variant):
    """Make every attention layer of ``model`` (one using transformers' AttentionInterface) run
    the variant; returns the model. ``use_variant(model, "sdpa")`` (or any built-in name of
    transformers) switches back."""
    tf = _transformers()
    if isinstance(spec, str) and spec in ("sdpa", "eager", "flex_attention", "flash_attention_2"):
        model.set_attn_implementation(spec)
        return model
    variant = get_variant(spec) if isinstance(spec, str) else spec
    name = implementation_name(variant)
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    tf.AttentionInterface.register(name, attention_function(variant))
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, sdpa_mask)  # None for a plain causal mask
    model.set_attn_implementation(name)
    if model.config._attn_implementation != name:
        raise ValueError(
            f"{type(model).__name__} does not take attention implementations through "
            "transformers' AttentionInterface; attnbench cannot swap its attention"
        )
    return model


def attention_function(variant: Variant):
    """The AttentionInterface function of ``variant``: (module, q, k, v, mask, ...) -> (out, None)
    with q (B, H, Nq, D), k and v (B, H_kv, Nk, D), out (B, Nq, H, D)."""

    def attend(
        module,
        query,
        key,
        value,
        attention_mask,
        dropout: float = 0.0,
        scaling: float | None = None,
        **kwargs,
    ):
        _refuse_what_cannot_be_honoured(variant, module, dropout, kwargs)
        causal = kwargs.get("is_causal")
        causal = getattr(module, "is_causal", True) if causal is None else causal
        if not causal and not variant.info.takes_causal:
            raise VariantRefused(
                f"{variant.label} computes causal attention only; this layer is bidirectional"
            )
        nq, nk, d = query.shape[2], key.shape[2], query.shape[-1]
        _check_mask(variant, attention_mask, nq, nk, causal)
        if scaling is not None and abs(scaling - d**-0.5) > 1e-12 * d**-0.5:
            query = query * (scaling * d**0.5)  # the variant scales by 1/sqrt(D)
        q, k, v = (x.transpose(1, 2) for x in (query, key, value))  # (B, N, H, D)
        if nq < nk and causal:  # new tokens against the cache: the variant's own decoder
            return decode_step(module, variant, q, k, v), None
        module.__dict__.pop(DECODER_ATTR, None)  # a new sequence: a held decoder is stale
        if nq < nk:  # bidirectional over a cache: the queries at the end of the sequence
            q = torch.cat([q.new_zeros(q.shape[0], nk - nq, *q.shape[2:]), q], dim=1)
        out = variant(q, k, v) if causal else variant(q, k, v, causal=False)
        return out[:, nk - nq :].contiguous(), None

    attend.__name__ = f"attnbench_{variant.name.replace('.', '_')}"
    return attend


DECODER_ATTR = "_attnbench_decoder"  # the variant's decoder a layer holds between calls


def _filled_decoder(module, variant: Variant, k, v, heads: int, room: int):
    """The variant's decoder for this layer holding the cache's keys and values ``k``, ``v``
    (B, N, H_kv, D; no outputs computed: the cache already has them), with room for ``room``
    more tokens (at least; the model's positions when it says)."""
    b, n, hk, d = k.shape
    conf = getattr(module, "config", None)
    max_len = max(getattr(conf, "max_position_embeddings", 0) or 0, n + room)
    dec = variant.decoder(b, heads, d, kv_heads=hk, max_len=max_len, dtype=k.dtype, device=k.device)
    if n:
        dec.fill(k.contiguous(), v.contiguous())
        dec.last_key = k[:, -1].clone()
    return dec


def decode_step(module, variant: Variant, q, k, v) -> torch.Tensor:
    """The new tokens (q: B, Nq, H, D) against transformers' cache (k, v: B, Nk, H_kv, D, the
    new tokens last) through the variant's own decoder, which the layer keeps between calls: it
    continues while it holds exactly the cache's first Nk - Nq tokens (its last key is the
    cache's), and is otherwise rebuilt from the cache (``fill``: keys and values, no outputs)."""
    nq, nk = q.shape[1], k.shape[1]
    past = nk - nq
    dec = module.__dict__.get(DECODER_ATTR)
    fresh = (
        dec is None
        or dec.variant.label != variant.label
        or dec.batch != q.shape[0]
        or dec.position != past
        or (past and not torch.equal(dec.last_key, k[:, past - 1]))
    )
    if fresh:
        dec = _filled_decoder(module, variant, k[:, :past], v[:, :past], q.shape[2], nq + 1)
    outs = [
        dec.step(q[:, i : i + 1], k[:, past + i : past + i + 1], v[:, past + i : past + i + 1])
        for i in range(nq)
    ]
    dec.last_key = k[:, nk - 1].clone()
    module.__dict__[DECODER_ATTR] = dec
    return torch.cat(outs, dim=1).contiguous()


def start_decoders(model, cache, variant: Variant) -> None:
    """After a prefill into ``cache`` (a transformers ``DynamicCache``): every attention layer's
    decoder filled from its cache layer, so that the next step continues it (a benchmark then
    snapshots it before timing steps from the same state)."""
    for m in model.modules():
        idx = getattr(m, "layer_idx", None)
        if idx is None or not hasattr(m, "config") or idx >= len(cache.layers):
            continue
        layer = cache.layers[idx]
        k, v = layer.keys.transpose(1, 2), layer.values.transpose(1, 2)  # (B, N, H_kv, D)
        m.__dict__[DECODER_ATTR] = _filled_decoder(
            m, variant, k, v, m.config.num_attention_heads, 1
        )


def held_decoders(model) -> list:
    """(layer, decoder) for every attention layer holding a variant decoder, in layer order."""
    return [(m, m.__dict__[DECODER_ATTR]) for m in model.modules() if DECODER_ATTR in m.__dict__]


def save_decoders(model) -> list:
    """What ``load_decoders`` needs to put the layers' decoders back as they are now (the decoder
    objects, their state, their last key): several sequences can be decoded in turn."""
    return [(m, d, d.snapshot(), d.last_key.clone()) for m, d in held_decoders(model)]


def load_decoders(saved: list) -> None:
    for m, dec, snap, last in saved:
        dec.restore(snap)
        dec.last_key = last
        m.__dict__[DECODER_ATTR] = dec


def _refuse_what_cannot_be_honoured(variant: Variant, module, dropout: float, kwargs: dict) -> None:
    if dropout and getattr(module, "training", False):
        raise VariantRefused(
            f"{variant.label} cannot apply attention dropout (p={dropout}) while "
            "training; set the config's attention_dropout to 0"
        )
    for key, what in (
        ("softcap", "logit soft-capping"),
        ("s_aux", "attention sinks"),
        ("position_bias", "an additive position bias"),
        ("sinks", "attention sinks"),
    ):
        if kwargs.get(key) is not None:
            raise VariantRefused(
                f"{variant.label} cannot honour {what} ({key}={kwargs[key]!r:.40})"
            )


def _check_mask(
    variant: Variant, mask: torch.Tensor | None, nq: int, nk: int, causal: bool
) -> None:
    """Refuse when the variant would attend to a key that the model's mask hides."""
    if mask is None:
        return  # transformers' plain causal (or full) mask: every variant's pattern lies within it
    allowed = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    allowed = allowed[:, :, -nq:, :nk]  # (B, 1 or H, Nq, Nk)
    qpos = torch.arange(nk - nq, nk, device=allowed.device)[:, None]
    kpos = torch.arange(nk, device=allowed.device)[None, :]
    pattern = variant.math.pattern_for(causal) if variant.pattern is not None else None
    if pattern is not None:
        sees = pattern.mask_fn(nk, allowed.device)(qpos, kpos)
    else:  # linear attention: every earlier key (causal) or every key
        sees = (
            (qpos >= kpos)
            if causal
            else torch.ones(nq, nk, dtype=torch.bool, device=allowed.device)
        )
    hidden = sees & ~allowed
    if hidden.any():
        b, _, i, j = (int(x) for x in hidden.nonzero()[0])
        causal_ok = bool((qpos >= kpos)[i, j])
        what = (
            "a padding mask (or another mask that hides earlier keys)"
            if causal_ok
            else "a mask that hides keys the variant attends"
        )
        raise VariantRefused(
            f"{variant.label} cannot honour {what}: in sequence {b}, query "
            f"{nk - nq + i} would see key {j}, which the model's mask hides"
        )


__all__ = [
    "PRESETS",
    "VariantRefused",
    "build",
    "load",
    "config",
    "use_variant",
    "attention_function",
    "implementation_name",
    "tokenizer_of",
]
