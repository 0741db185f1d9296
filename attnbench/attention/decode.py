"""Decoders: prefill a prompt, then step one token at a time, each with its variant's own kernel.

Every decoder keeps what its math needs to continue a sequence, for ``kv_heads`` key/value heads
(grouped-query attention: each serves heads / kv_heads query heads):

- KV caches (naive, fused, sparse): every key and value so far, (B, max_len, H_kv, D). A step
  attends to the keys its pattern allows for the new position, with the implementation's kernel:
  ``kv_cache.naive`` (materialised scores, the naive variant's math), ``kv_cache.sdpa`` (PyTorch
  SDPA over the cache), ``kv_cache.flash_attn`` (flash-attn's ``flash_attn_with_kvcache``, which
  appends in place), ``kv_cache.xformers``, ``kv_cache.flex`` (compiled FlexAttention over the
  whole cache, the position a tensor its mask reads: one graph for every step), and
  ``kv_cache.block_sparse`` (a block-sparse pattern: the key blocks of the new token's query
  block, from index tables built once per length; no mask, ``nonzero`` or host sync per step).
- ``ring_buffer.sdpa`` (sliding window): the last ``window`` keys and values; slot ``t % window``.
- ``recurrent`` (linear): the state S = sum_j phi(k_j) v_j^T (H_kv x F x D) and z = sum_j phi(k_j),
  in float32.

``prefill`` runs the variant's own parallel forward and fills the cache, so decoding continues the
exact computation; ``cache_bytes()`` is what the cache or state holds at the current length and
``read_bytes()`` what one step reads of it. Tensors are (B, N, H, D) for queries and (B, N, H_kv,
D) for keys and values; a step takes and returns one token, (B, 1, ., D).

A variant names its decoder class at registration (``register_variant(..., decoder=...)``);
``default_decoder_class(math)`` picks one from the math for variants that do not.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from attnbench.attention.patterns import Full, Pattern, SlidingWindow
from attnbench.attention.reference import LinearMath, expand_heads
from attnbench.case import device_key


class Decoder:
    """Base class: shape checks, positions, prefill; subclasses hold the state and step."""

    name = "decoder"

    def __init__(
        self,
        variant,
        batch: int,
        heads: int,
        head_dim: int,
        *,
        kv_heads: int | None = None,
        max_len: int,
        dtype: torch.dtype = torch.float32,
        device="cpu",
    ):
        kv_heads = kv_heads or heads
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        if kv_heads < 1 or heads % kv_heads:
            raise ValueError(f"kv_heads={kv_heads} must divide heads={heads}")
        self.variant = variant
        self.batch, self.heads, self.kv_heads, self.head_dim = batch, heads, kv_heads, head_dim
        self.max_len, self.dtype, self.device = max_len, dtype, torch.device(device)
        self.position = 0  # tokens seen so far

    def _check(self, q, k, v, steps: int | None = None):
        n = q.shape[1]
        for name, t, h in (("q", q, self.heads), ("k", k, self.kv_heads), ("v", v, self.kv_heads)):
            expect = (self.batch, n, h, self.head_dim)
            if tuple(t.shape) != expect or (steps is not None and t.shape[1] != steps):
                raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {expect}")
        if self.position + n > self.max_len:
            raise ValueError(
                f"decoder is full: {self.position} + {n} tokens > max_len={self.max_len}"
            )

    def prefill(self, q, k, v) -> torch.Tensor:
        """Parallel forward over a prompt (B, P, ., D); fills the cache."""
        if self.position:
            raise ValueError("prefill must come first (the decoder already holds tokens)")
        self._check(q, k, v)
        out = self.variant(q, k, v)
        self._absorb(k, v)
        self.position = q.shape[1]
        return out

    def fill(self, k, v) -> None:
        """Load a context (B, N, H_kv, D) of keys and values without computing outputs
        (benchmarks)."""
        if self.position:
            raise ValueError("fill must come first (the decoder already holds tokens)")
        q = k.new_empty(k.shape[0], k.shape[1], self.heads, k.shape[3])
        self._check(q, k, v)
        self._absorb(k, v)
        self.position = k.shape[1]

    def step(self, q, k, v) -> torch.Tensor:
        """One new token -> its output (B, 1, H, D)."""
        self._check(q, k, v, steps=1)
        out = self._step(q, k, v)
        self.position += 1
        return out

    def cache_bytes(self) -> int:
        raise NotImplementedError

    def kernel(self, q) -> str | None:
        """The kernel a dispatcher picks for the next step of query ``q`` (None: no dispatcher)."""
        return None

    def state_tensors(self) -> list[torch.Tensor]:
        """Tensors a step changes in place beyond the slot it writes (a recurrent state); a KV
        cache has none: the next step at the same position overwrites the same slot."""
        return []

    def snapshot(self) -> tuple:
        """What ``restore`` needs to bring the decoder back to now (position, state, the model's
        short-convolution tail kept on the decoder)."""
        return (
            self.position,
            [t.clone() for t in self.state_tensors()],
            getattr(self, "conv_tail", None),
        )

    def restore(self, snap: tuple) -> None:
        """Back to a ``snapshot``: every timed step then decodes the same token from the same
        state (the step the gate checked)."""
        self.position = snap[0]
        for t, saved in zip(self.state_tensors(), snap[1]):
            t.copy_(saved)
        if snap[2] is not None:
            self.conv_tail = snap[2]

    def read_bytes(self) -> int:
        """Bytes of cache or state the next step reads (for the achieved bandwidth of decoding):
        by default the whole cache with the new token."""
        return self.cache_bytes() + self._per_token()

    def _absorb(self, k, v):
        raise NotImplementedError

    def _step(self, q, k, v):
        raise NotImplementedError

    def _per_token(self) -> int:
        return 2 * self.batch * self.kv_heads * self.head_dim * torch.finfo(self.dtype).bits // 8


def _heads_first(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2)  # (B, N, H, D) -> (B, H, N, D)


def sdpa_one(q, k, v, mask=None) -> torch.Tensor:
    """One query over T keys with SDPA: q (B,1,H,D), k/v (B,T,H_kv,D) -> (B,1,H,D)."""
    out = F.scaled_dot_product_attention(
        _heads_first(q),
        _heads_first(k),
        _heads_first(v),
        attn_mask=mask,
        enable_gqa=k.shape[2] != q.shape[2],
    )
    return _heads_first(out)


class KVCache(Decoder):
    """Every key and value so far; subclasses attend over it with their kernel."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        shape = (self.batch, self.max_len, self.kv_heads, self.head_dim)
        self.k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=self.dtype, device=self.device)

    def _absorb(self, k, v):
        self.k[:, : k.shape[1]] = k
        self.v[:, : v.shape[1]] = v

    def _write(self, k, v) -> int:
        t = self.position
        self.k[:, t] = k[:, 0]
        self.v[:, t] = v[:, 0]
        return t

    def cache_bytes(self) -> int:
        return self.position * self._per_token()

    def keys_read(self) -> int:
        """Cached keys (with the new token's) the next step reads: all of them by default."""
        return self.position + 1

    def read_bytes(self) -> int:
        return self.keys_read() * self._per_token()


class SdpaKVDecoder(KVCache):
    """Full attention: PyTorch SDPA of the new token over the cache."""

    name = "kv_cache.sdpa"

    def kernel(self, q) -> str | None:
        from attnbench.attention.backends import sdpa_choice

        t = self.position + 1
        return sdpa_choice(q, self.k[:, :t], self.v[:, :t], causal=False)

    def _step(self, q, k, v):
        t = self._write(k, v)
        return sdpa_one(q, self.k[:, : t + 1], self.v[:, : t + 1])


class NaiveKVDecoder(KVCache):
    """Full attention the textbook way: the scores of the new token materialised, softmax,
    weighted sum (the naive variant's own math, in the input dtype)."""

    name = "kv_cache.naive"

    def _step(self, q, k, v):
        t = self._write(k, v)
        b, _, h, d = q.shape
        g = h // self.kv_heads
        qg = q.view(b, self.kv_heads, g, d)  # (B, H_kv, G, D): the query heads of each kv head
        keys, values = self.k[:, : t + 1], self.v[:, : t + 1]  # (B, T, H_kv, D)
        scores = torch.einsum("bkgd,btkd->bkgt", qg, keys) / d**0.5
        out = torch.einsum("bkgt,btkd->bkgd", scores.softmax(-1), values)
        return out.reshape(b, 1, h, d)


class FlashKVDecoder(KVCache):
    """flash-attn's ``flash_attn_with_kvcache``: appends the new key and value to the cache in
    place and attends in one kernel (CUDA)."""

    name = "kv_cache.flash_attn"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seqlens = torch.zeros(self.batch, dtype=torch.int32, device=self.device)

    def _step(self, q, k, v):
        from flash_attn import flash_attn_with_kvcache

        self.seqlens.fill_(self.position)
        return flash_attn_with_kvcache(
            q,
            self.k,
            self.v,
            k=k,
            v=v,
            cache_seqlens=self.seqlens,
            causal=True,
            **self.window_kwargs(),
        )

    def window_kwargs(self) -> dict:
        """A sliding-window variant's window as flash-attn's ``window_size`` (left, right)."""
        w = self.variant.params.get("window")
        return {"window_size": (w - 1, 0)} if w else {}

    def keys_read(self) -> int:
        """With a window, the kernel reads the last ``window`` keys only (not the whole cache)."""
        w = self.variant.params.get("window")
        return min(self.position + 1, w) if w else self.position + 1


class XformersKVDecoder(KVCache):
    """xformers' ``memory_efficient_attention`` of the new token over the cache (key/value heads
    repeated for grouped-query attention)."""

    name = "kv_cache.xformers"

    def first_key(self, t: int) -> int:
        """The oldest cached key the token at ``t`` attends to (a window overrides it)."""
        return 0

    def keys_read(self) -> int:
        return self.position + 1 - self.first_key(self.position)

    def _step(self, q, k, v):
        from attnbench.attention.backends import import_quietly

        t = self._write(k, v)
        first = self.first_key(t)
        keys, values = (expand_heads(x[:, first : t + 1], self.heads) for x in (self.k, self.v))
        return import_quietly("xformers.ops").memory_efficient_attention(q, keys, values)


class FlexKVDecoder(KVCache):
    """Compiled FlexAttention of the new token over the cache, through a BlockMask whose key-block
    list and position are tensors updated in place each step (``masked.FlexDecodeMask``): one
    compiled graph for every step, and only the key blocks the pattern attends are visited."""

    name = "kv_cache.flex"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from attnbench.attention.masked import FlexDecodeMask

        self.mask = FlexDecodeMask(self.variant.math.pattern_for(True), self.max_len, self.device)

    def read_bytes(self) -> int:
        from attnbench.attention.masked import FLEX_BLOCK

        blocks = int(self.mask.num_all[self.position // FLEX_BLOCK])
        return min(self.position + 1, blocks * FLEX_BLOCK) * self._per_token()

    def _step(self, q, k, v):
        from attnbench.attention.masked import compiled_flex_attention

        t = self._write(k, v)
        self.mask.move_to(t)
        out = compiled_flex_attention()(
            _heads_first(q),
            _heads_first(self.k),
            _heads_first(self.v),
            block_mask=self.mask.block_mask,
            enable_gqa=self.kv_heads != self.heads,
        )
        return _heads_first(out)


class BlockSparseKVDecoder(KVCache):
    """A block-sparse pattern: the new token at position t in query block I attends to the key
    blocks of row I of the pattern's block plan at ``max_len`` (built once: the gather indices and
    the token mask of every row), gathered from the cache and passed to SDPA with that row's
    mask."""

    name = "kv_cache.block_sparse"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        pattern = self.variant.pattern
        self.block = getattr(pattern, "block", None) or self.variant.params.get("block", 64)
        self.tokens, self.masks = decode_tables(
            pattern, self.max_len, self.block, device_key(self.device)
        )

    def read_bytes(self) -> int:
        return self.tokens.shape[1] * self._per_token()  # the gathered key blocks of one row

    def _step(self, q, k, v):
        t = self._write(k, v)
        row = t // self.block
        idx = self.tokens[row]  # (max_keys * block,) token positions, padded
        mask = self.masks[row, t % self.block].view(1, 1, 1, -1)  # which of them query t sees
        keys, values = self.k.index_select(1, idx), self.v.index_select(1, idx)
        return sdpa_one(q, keys, values, mask)


@functools.lru_cache(maxsize=8)
def decode_tables(pattern: Pattern, max_len: int, block: int, device: str):
    """(tokens (nb, L) int64, masks (nb, block, L) bool): for each query block, the positions of
    the keys of its attended key blocks and, per query row of the block, which it sees."""
    from attnbench.attention.blocksparse import block_plan

    plan = block_plan(pattern, max_len, block, device)
    offsets = torch.arange(block, device=plan.key_blocks.device)
    tokens = (plan.key_blocks[:, :, None] * block + offsets).flatten(1)  # (nb, kb * block)
    tokens = tokens.clamp(max=max_len - 1)  # the padded tail block: masked anyway
    return tokens, plan.mask


class RingBufferDecoder(Decoder):
    """The last ``window`` keys and values; constant memory and time per step (SDPA over them)."""

    name = "ring_buffer.sdpa"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.window = self.variant.pattern.window
        shape = (self.batch, min(self.window, self.max_len), self.kv_heads, self.head_dim)
        self.k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=self.dtype, device=self.device)

    def _absorb(self, k, v):
        n, w = k.shape[1], self.k.shape[1]
        tail = torch.arange(max(0, n - w), n, device=self.device)
        self.k[:, tail % w] = k[:, tail]
        self.v[:, tail % w] = v[:, tail]

    def _step(self, q, k, v):
        t, w = self.position, self.k.shape[1]
        self.k[:, t % w] = k[:, 0]
        self.v[:, t % w] = v[:, 0]
        filled = min(t + 1, w)  # slots 0..filled-1 hold the keys t-filled+1..t (in some order)
        return sdpa_one(q, self.k[:, :filled], self.v[:, :filled])

    def cache_bytes(self) -> int:
        return min(self.position, self.k.shape[1]) * self._per_token()

    def read_bytes(self) -> int:
        return min(self.position + 1, self.k.shape[1]) * self._per_token()


class RecurrentDecoder(Decoder):
    """Linear attention's recurrent state, kept in float32: S (B, H_kv, F, D) and z (B, H_kv, F);
    the query heads of a group read their key/value head's state."""

    name = "recurrent"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.phi = self.variant.feature_map
        f = self.phi.num_features(self.head_dim)
        self.state = torch.zeros(self.batch, self.kv_heads, f, self.head_dim, device=self.device)
        self.norm = torch.zeros(self.batch, self.kv_heads, f, device=self.device)

    def _absorb(self, k, v):
        fk = self.phi(k.float(), is_query=False)  # (B, N, H_kv, F)
        self.state += torch.einsum("bnhf,bnhd->bhfd", fk, v.float())
        self.norm += fk.sum(1)

    def _step(self, q, k, v):
        self._absorb(k, v)
        b, _, h, d = q.shape
        fq = self.phi(q.float(), is_query=True).view(b, self.kv_heads, h // self.kv_heads, -1)
        num = torch.einsum("bkgf,bkfd->bkgd", fq, self.state)
        den = torch.einsum("bkgf,bkf->bkg", fq, self.norm)
        return (num / den[..., None]).reshape(b, 1, h, d).to(q.dtype)

    def state_tensors(self) -> list[torch.Tensor]:
        return [self.state, self.norm]

    def cache_bytes(self) -> int:
        return (self.state.numel() + self.norm.numel()) * self.state.element_size()

    def read_bytes(self) -> int:
        return self.cache_bytes()


def default_decoder_class(math) -> type[Decoder]:
    """The decoder of a math: recurrent (linear), ring buffer (window), SDPA over a KV cache
    (full attention) or over the pattern's key blocks (block-sparse patterns)."""
    if isinstance(math, LinearMath):
        return RecurrentDecoder
    pattern = math.pattern
    if isinstance(pattern, SlidingWindow):
        return RingBufferDecoder
    if isinstance(pattern, Full):
        return SdpaKVDecoder
    return BlockSparseKVDecoder
