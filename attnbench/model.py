"""The identical language model: a decoder-only transformer whose attention is a variant spec.

Byte-level tokens (vocabulary 256), token embedding, rotary positions, pre-norm blocks of
attention + MLP, a tied output head. Everything but the attention variant is fixed by a
``ModelConfig``, so two models built from the same config and seed differ only in attention::

    cfg = ModelConfig.from_name("small")
    model = TransformerLM(cfg, attention="sliding_window.blocked:window=128")
    logits = model(tokens)                      # (B, N) int64 -> (B, N, 256)
    model.set_attention("fused.sdpa")           # same weights, another variant (drop-in)
    out = model.generate(prompt, 32)            # greedy, with the variants' decoders

Presets (``PRESETS``): ``tiny`` for tests, ``small`` for CPU quality runs, ``gpt2`` (GPT-2 small
sized) for GPUs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from attnbench.registry import get_variant

NORMS = ("rms", "layer")
POSITIONS = ("rotary", "learned")


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "layer":
        return nn.LayerNorm(cfg.dim, eps=cfg.norm_eps, bias=False)
    return nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 256  # byte-level tokens
    dim: int = 256  # residual stream width
    n_layers: int = 4  # transformer blocks
    n_heads: int = 4  # attention heads; head_dim = dim // n_heads
    n_kv_heads: int = 0  # key/value heads (grouped-query attention, dividing n_heads); 0: n_heads
    mlp_ratio: int = 4  # MLP hidden width = mlp_ratio * dim
    rope_base: float = 10000.0  # rotary frequency base
    norm_eps: float = 1e-5  # RMSNorm epsilon
    # > 0: a causal depthwise convolution of this width on the attention input of every block
    # (Zoology's short convolution: it does the copying step of associative recall, so a 2-layer
    # model learns MQAR in hundreds of steps instead of sitting on a plateau for thousands)
    conv_width: int = 0
    init_std: float = 0.02  # std of the normal initialisation
    # nanoGPT's choices, for calibration against its published figures: "layer" (LayerNorm,
    # no bias) instead of RMSNorm; "learned" absolute positions (GPT-2's table of max_positions
    # rows, added to the token embedding) instead of rotary ones
    norm: str = "rms"
    positions: str = "rotary"
    max_positions: int = 1024

    def __post_init__(self):
        for f in ("vocab_size", "dim", "n_layers", "n_heads", "mlp_ratio"):
            if getattr(self, f) < 1:
                raise ValueError(f"ModelConfig.{f} must be >= 1, got {getattr(self, f)}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if self.conv_width < 0:
            raise ValueError(f"ModelConfig.conv_width must be >= 0, got {self.conv_width}")
        if self.n_kv_heads < 0 or self.n_heads % self.kv_heads:
            raise ValueError(f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; valid: {', '.join(NORMS)}")
        if self.positions not in POSITIONS:
            raise ValueError(f"unknown positions {self.positions!r}; valid: {', '.join(POSITIONS)}")
        if self.positions == "rotary" and self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary positions")
        if self.max_positions < 1:
            raise ValueError(f"ModelConfig.max_positions must be >= 1, got {self.max_positions}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @classmethod
    def from_name(cls, name: str, **overrides) -> ModelConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; valid: {', '.join(PRESETS)}")
        valid = {f.name for f in fields(cls)}
        bad = [k for k in overrides if k not in valid]
        if bad:
            raise ValueError(
                f"unknown ModelConfig field {bad[0]!r}; valid: {', '.join(sorted(valid))}"
            )
        return replace(PRESETS[name], **overrides)

    def num_params(self) -> int:
        d, h = self.dim, self.mlp_ratio * self.dim
        kv = self.kv_heads * self.head_dim
        per_block = 2 * d * d + 2 * d * kv + 2 * d * h + 2 * d + self.conv_width * d
        return self.vocab_size * d + self.n_layers * per_block + d


PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(dim=64, n_layers=2, n_heads=2),  # head_dim 32; tests
    "small": ModelConfig(dim=256, n_layers=4, n_heads=4),  # head_dim 64; CPU quality runs
    "gpt2": ModelConfig(dim=768, n_layers=12, n_heads=12),  # GPT-2 small sized; GPUs
    # recall (MQAR) at CPU scale: tiny, with a width-3 short convolution before attention
    "recall": ModelConfig(dim=64, n_layers=2, n_heads=2, conv_width=3),
}


def model_shape(preset: str) -> tuple[int, int, int]:
    """(heads, kv_heads, head_dim) of a model preset: attnbench's (``attnbench.model.PRESETS``) or
    a transformers model's (``hf:NAME`` or ``hf:FOLDER``)."""
    if preset.startswith("hf:"):
        from attnbench import hf

        cfg = hf.config(preset[3:])
        heads = cfg.num_attention_heads
        return (
            heads,
            getattr(cfg, "num_key_value_heads", None) or heads,
            getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
        )
    cfg = ModelConfig.from_name(preset)
    return cfg.n_heads, cfg.kv_heads, cfg.head_dim


def rotary(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Rotate pairs (x[..., :D/2], x[..., D/2:]) by position-dependent angles. x: (B, N, H, D)."""
    d = x.shape[-1]
    inv_freq = base ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    angles = positions.float()[:, None] * inv_freq[None, :]  # (N, D/2)
    cos, sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.kv_dim = cfg.kv_heads * cfg.head_dim
        self.qkv = nn.Linear(cfg.dim, cfg.dim + 2 * self.kv_dim, bias=False)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.variant = None  # set by TransformerLM.set_attention

    def forward(self, x: torch.Tensor, positions: torch.Tensor, decoder=None) -> torch.Tensor:
        b, n, _ = x.shape
        cfg = self.cfg
        q, k, v = self.qkv(x).split([cfg.dim, self.kv_dim, self.kv_dim], dim=-1)
        q = q.view(b, n, cfg.n_heads, cfg.head_dim)  # (B, N, H, D)
        k, v = (t.view(b, n, cfg.kv_heads, cfg.head_dim) for t in (k, v))  # (B, N, H_kv, D)
        if cfg.positions == "rotary":
            q, k = rotary(q, positions, cfg.rope_base), rotary(k, positions, cfg.rope_base)
        if decoder is None:
            y = self.variant(q, k, v)  # (B, N, H, D)
        elif decoder.position == 0:
            y = decoder.prefill(q, k, v)
        else:
            y = torch.cat(
                [decoder.step(q[:, i : i + 1], k[:, i : i + 1], v[:, i : i + 1]) for i in range(n)],
                dim=1,
            )
        return self.proj(y.reshape(b, n, self.cfg.dim))


class ShortConv(nn.Module):
    """Causal depthwise convolution over time, added to its input: y_t = x_t + sum_i w_i * x_{t-i}.
    When decoding, the last ``width - 1`` inputs are kept on the block's decoder."""

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.width = width
        self.weight = nn.Parameter(torch.randn(dim, 1, width) * width**-0.5)

    def forward(self, x: torch.Tensor, decoder=None) -> torch.Tensor:
        b, n, d = x.shape  # (B, N, dim)
        past = (
            getattr(decoder, "conv_tail", None)
            if decoder is not None and decoder.position
            else None
        )
        if past is None:
            past = x.new_zeros(b, self.width - 1, d)
        full = torch.cat([past, x], dim=1)  # (B, w - 1 + N, dim)
        if decoder is not None:
            decoder.conv_tail = full[:, -(self.width - 1) :].detach()
        y = F.conv1d(full.transpose(1, 2), self.weight, groups=d)  # (B, dim, N)
        return x + y.transpose(1, 2)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = make_norm(cfg)
        self.conv = ShortConv(cfg.dim, cfg.conv_width) if cfg.conv_width > 0 else None
        self.attn = Attention(cfg)
        self.norm2 = make_norm(cfg)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.dim, cfg.mlp_ratio * cfg.dim, bias=False),
            nn.GELU(),
            nn.Linear(cfg.mlp_ratio * cfg.dim, cfg.dim, bias=False),
        )

    def forward(self, x, positions, decoder=None):
        h = self.norm1(x)
        if self.conv is not None:
            h = self.conv(h, decoder)
        x = x + self.attn(h, positions, decoder)
        return x + self.mlp(self.norm2(x))


class TransformerLM(nn.Module):
    def __init__(self, cfg: ModelConfig, attention: str = "fused.sdpa"):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos = nn.Embedding(cfg.max_positions, cfg.dim) if cfg.positions == "learned" else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = make_norm(cfg)
        self.apply(self._init)
        for blk in self.blocks:  # GPT-2's scaled init of the residual projections
            for w in (blk.attn.proj.weight, blk.mlp[2].weight):
                nn.init.normal_(w, std=cfg.init_std / math.sqrt(2 * cfg.n_layers))
        self.set_attention(attention)

    def _init(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.cfg.init_std)

    def set_attention(self, spec) -> None:
        """Use variant ``spec`` in every block (weights unchanged). ``spec`` is a spec string, a
        ``Variant``, or any callable ``f(q, k, v) -> out`` with a ``label`` (the benchmark's
        reference attention, for instance)."""
        variant = get_variant(spec) if isinstance(spec, str) else spec
        self.attention = variant.label
        for blk in self.blocks:
            blk.attn.variant = variant

    @property
    def variant(self):
        return self.blocks[0].attn.variant

    def forward(self, idx: torch.Tensor, decoders=None, start: int = 0) -> torch.Tensor:
        """idx: (B, N) token ids -> logits (B, N, vocab). With ``decoders`` (one per block),
        continue a decoding session from position ``start``."""
        if idx.dim() != 2:
            raise ValueError(f"idx must be (B, N) token ids, got shape {tuple(idx.shape)}")
        positions = torch.arange(start, start + idx.shape[1], device=idx.device)
        x = self.embed(idx)
        if self.pos is not None:
            if start + idx.shape[1] > self.cfg.max_positions:
                raise ValueError(
                    f"position {start + idx.shape[1] - 1} is beyond the learned table's "
                    f"{self.cfg.max_positions} positions (ModelConfig.max_positions)"
                )
            x = x + self.pos(positions)
        for i, blk in enumerate(self.blocks):
            x = blk(x, positions, None if decoders is None else decoders[i])
        return F.linear(self.norm(x), self.embed.weight)  # tied head

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self(idx)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    def new_decoders(self, batch: int, max_len: int):
        """One decoder per block for a decoding session of up to ``max_len`` tokens."""
        p = next(self.parameters())
        return [
            self.variant.decoder(
                batch,
                self.cfg.n_heads,
                self.cfg.head_dim,
                max_len=max_len,
                kv_heads=self.cfg.kv_heads,
                dtype=p.dtype,
                device=p.device,
            )
            for _ in self.blocks
        ]

    @torch.no_grad()
    def generate(
        self, prompt: torch.Tensor, new_tokens: int, *, use_cache: bool = True
    ) -> torch.Tensor:
        """Greedy continuation of ``prompt`` (B, P) by ``new_tokens`` tokens -> (B, P + new)."""
        seq = prompt
        if not use_cache:
            for _ in range(new_tokens):
                nxt = self(seq)[:, -1].argmax(-1, keepdim=True)
                seq = torch.cat([seq, nxt], dim=1)
            return seq
        decoders = self.new_decoders(prompt.shape[0], prompt.shape[1] + new_tokens)
        logits = self(prompt, decoders)
        for _ in range(new_tokens):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
            if seq.shape[1] == prompt.shape[1] + new_tokens:
                break
            logits = self(nxt, decoders, start=seq.shape[1] - 1)
        return seq
