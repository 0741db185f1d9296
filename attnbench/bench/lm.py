"""The language models a model-level case measures, behind one small interface: the identical
model (``attnbench.model``, a preset name) or a Hugging Face transformers model (``hf:NAME`` or
``hf:FOLDER``, see ``attnbench.hf``), each with the case's attention variant.

    lm = LanguageModel.build(case)          # case.preset: "small" or "hf:llama-tiny"
    lm.logits(idx); lm.loss(idx, targets)
    state = lm.prefill(idx[:, :n]); lm.step(state, idx[:, n:n+1], n)   # one decoded token
    lm.with_attention(ReferenceAttention(variant, torch.float64), torch.float64)
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

HF_PREFIX = "hf:"


class LanguageModel:
    """What the harness asks of a model: logits, loss, prefill and one decode step."""

    decode_kind = "decoder"  # rows of older runs may say "full_forward": a parallel forward

    kind = "attnbench"

    def __init__(self, module: torch.nn.Module):
        self.module = module

    @staticmethod
    def build(case) -> LanguageModel:
        device = torch.device(case.device)
        if case.preset.startswith(HF_PREFIX):
            from attnbench import hf

            torch.manual_seed(0)
            module = hf.build(case.preset[len(HF_PREFIX) :]).to(device=device, dtype=case.dtype)
            lm = HFModel(module)
        else:
            from attnbench.model import ModelConfig, TransformerLM

            torch.manual_seed(0)
            module = TransformerLM(ModelConfig.from_name(case.preset))
            lm = OwnModel(module.to(device=device, dtype=case.dtype))
        lm.set_attention(case.variant)
        return lm

    # --- what subclasses provide ---------------------------------------------------------
    vocab_size: int
    n_layers: int
    heads: int
    kv_heads: int
    head_dim: int

    def set_attention(self, spec) -> None:
        raise NotImplementedError

    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def prefill(self, idx: torch.Tensor) -> Any:
        raise NotImplementedError

    def step(self, state: Any, token: torch.Tensor, position: int) -> torch.Tensor:
        """Logits (B, 1, V) of one new token at ``position``, continuing ``state``."""
        raise NotImplementedError

    def snapshot(self, state: Any) -> Any:
        """What ``restore`` needs to decode the same token again from ``state`` as it is now."""
        return None

    def restore(self, state: Any, snap: Any) -> None:
        """Back to ``snapshot``'s state (untimed, before each timed decode step)."""

    def decoder_name(self, state: Any) -> str:
        raise NotImplementedError

    def cache_bytes(self, state: Any) -> int:
        raise NotImplementedError

    # --- shared ---------------------------------------------------------------------------
    @property
    def variant(self):
        return self._variant

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(idx).float().flatten(0, 1), targets.flatten())

    def num_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def matmul_params(self) -> int:
        """Weights multiplied per token: every Linear (and a tied output head)."""
        return sum(
            m.weight.numel() for m in self.module.modules() if isinstance(m, torch.nn.Linear)
        )

    def with_attention(self, attention, dtype: torch.dtype) -> LanguageModel:
        """A copy in ``dtype`` with ``attention`` in place of the variant (the gate's models)."""
        other = copy.copy(self)
        other.module = copy.deepcopy(self.module).to(dtype)
        other.set_attention(attention)
        return other

    def scale_query_key(self, factor: float) -> None:
        """Multiply every layer's query and key projections by ``factor`` (scores by its square):
        peaked attention at initial weights, for the model-level gate."""
        with torch.no_grad():
            for w in self.query_key_weights():
                w.mul_(factor)

    def query_key_weights(self) -> list[torch.Tensor]:
        """The weight rows that make queries and keys (every layer)."""
        out = []
        for name, module in self.module.named_modules():
            if name.endswith(("q_proj", "k_proj")) and hasattr(module, "weight"):
                out.append(module.weight)
        return out

    def train(self, mode: bool = True) -> LanguageModel:
        self.module.train(mode)
        return self


class OwnModel(LanguageModel):
    """attnbench's identical transformer LM."""

    def __init__(self, module):
        super().__init__(module)
        cfg = module.cfg
        self.vocab_size, self.n_layers = cfg.vocab_size, cfg.n_layers
        self.heads, self.kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim

    def set_attention(self, spec) -> None:
        self.module.set_attention(spec)
        self._variant = self.module.variant

    def logits(self, idx):
        return self.module(idx)

    def matmul_params(self) -> int:
        return super().matmul_params() + self.module.embed.weight.numel()  # the tied head

    def query_key_weights(self) -> list[torch.Tensor]:
        cfg = self.module.cfg
        qk = cfg.dim + cfg.kv_heads * cfg.head_dim  # the q and k rows of each fused projection
        return [blk.attn.qkv.weight[:qk] for blk in self.module.blocks]

    def prefill(self, idx):
        decoders = self.module.new_decoders(idx.shape[0], idx.shape[1] + 1)
        self.module(idx, decoders)
        return decoders

    def step(self, state, token, position):
        return self.module(token, state, start=position)

    def snapshot(self, state):
        return [dec.snapshot() for dec in state]

    def restore(self, state, snap) -> None:
        for dec, s in zip(state, snap):
            dec.restore(s)

    def decoder_name(self, state) -> str:
        return state[0].name

    def cache_bytes(self, state) -> int:
        return sum(d.cache_bytes() for d in state)


class HFModel(LanguageModel):
    """A transformers causal LM whose attention layers run the variant (``attnbench.hf``)."""

    kind = "transformers"

    def __init__(self, module):
        super().__init__(module)
        cfg = module.config
        self.vocab_size, self.n_layers = cfg.vocab_size, cfg.num_hidden_layers
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads

    def set_attention(self, spec) -> None:
        from attnbench import hf
        from attnbench.registry import get_variant

        variant = get_variant(spec) if isinstance(spec, str) else spec
        hf.use_variant(self.module, variant)
        self._variant = variant

    def logits(self, idx):
        return self.module(idx, use_cache=False).logits

    def _cache_kwarg(self) -> str:
        """transformers renamed ``past_key_values`` to ``cache`` (5.2x); take what this one has."""
        import inspect

        params = inspect.signature(self.module.forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    def prefill(self, idx):
        from transformers import DynamicCache

        from attnbench import hf

        cache = DynamicCache(config=self.module.config)
        self.module(idx, use_cache=True, **{self._cache_kwarg(): cache})
        hf.start_decoders(self.module, cache, self._variant)  # the variant's, from the cache
        return cache

    def step(self, state, token, position):
        extra = state.get_seq_length() - position
        if extra > 0:  # every repetition decodes the same token: drop the last one's entry
            state.crop(-extra)
        return self.module(token, use_cache=True, **{self._cache_kwarg(): state}).logits

    # transformers hands the attention the new token's query and every cached key; attnbench.hf
    # steps the variant's own decoder, which each layer holds (filled from the cache after the
    # prefill), so a decode row times the variant's decoder inside the model
    decode_kind = "decoder"

    def snapshot(self, state):
        from attnbench import hf

        return hf.save_decoders(self.module)  # this sequence's decoders, at the prompt's end

    def restore(self, state, snap) -> None:
        from attnbench import hf

        hf.load_decoders(snap)

    def decoder_name(self, state) -> str:
        from attnbench import hf

        held = hf.held_decoders(self.module)
        return (held[0][1].name if held else "none") + " inside transformers (its cache kept too)"

    def cache_bytes(self, state) -> int:
        total = 0
        for layer in getattr(state, "layers", []):
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
        return total
