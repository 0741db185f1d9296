"""The :class:`Variant`: a registered implementation (:class:`VariantInfo`) bound to its
parameters, callable as ``attn(q, k, v, causal=True)``, with its math, float64 reference,
decoder and :meth:`Variant.not_supported_reasons`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from attnbench.attention.backends import missing_reason
from attnbench.attention.reference import MATHS, LinearMath, Math, SoftmaxMath, expand_heads
from attnbench.case import Capabilities, Case, dtype_name, parse_dtype

ReasonsFn = Callable[["Case", dict], list[str]]


@dataclass
class VariantInfo:
    """A registered implementation (unbound: parameters not yet chosen)."""

    name: str
    family: str
    math: str
    impl: str
    fn: Callable[..., torch.Tensor]
    defaults: dict[str, Any]
    supports: Capabilities
    exact: bool
    description: str
    reasons: ReasonsFn | None = None
    probe: ReasonsFn | None = None
    decoder: Callable[..., Any] | None = None
    validate: Callable[[dict], None] | None = None
    prepare: Callable[[Variant, Case], None] | None = None
    kernel: Callable[..., str | None] | None = None
    takes_causal: bool = False
    # the static reasons per (device, dtype, head_dim, causal): they depend on the
    # implementation, not on its parameters, so every Variant bound from this entry shares them
    static_reasons: dict[tuple, tuple[str, ...]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def metadata(self) -> dict[str, Any]:
        caps = self.supports
        return {
            "name": self.name,
            "family": self.family,
            "math": self.math,
            "impl": self.impl,
            "params": dict(self.defaults),
            "exact": self.exact,
            "description": self.description,
            "devices": list(caps.devices),
            "dtypes": [dtype_name(d) for d in caps.dtypes],
            "backward": caps.backward,
            "decode": caps.decode,
            "decoder": self.decoder_name(),
            "noncausal": caps.noncausal or self.takes_causal,
            "gqa": "native" if caps.gqa else "expanded",
            "requires": list(caps.requires),
            "cpu_overrides": {k: v for k, v in caps.cpu.items()},
        }

    def decoder_name(self) -> str:
        """The name of the decoder this variant decodes with (rows record it)."""
        if self.decoder is not None:
            return getattr(self.decoder, "name", getattr(self.decoder, "__name__", "custom"))
        from attnbench.attention import decode

        return decode.default_decoder_class(MATHS[self.math].build(dict(self.defaults))).name


class Variant:
    """A registered implementation bound to its parameters. Call it as ``attn(q, k, v)``."""

    def __init__(self, info: VariantInfo, params: dict[str, Any], math: Math):
        self.info = info
        self.params = params
        self.math = math

    # --- identity -------------------------------------------------------------------------
    name = property(lambda self: self.info.name)
    family = property(lambda self: self.info.family)
    impl = property(lambda self: self.info.impl)
    exact = property(lambda self: self.info.exact)
    supports = property(lambda self: self.info.supports)

    @property
    def label(self) -> str:
        """The spec string with every parameter spelled out (for legends and table rows)."""
        if not self.params:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in self.params.items())

    @property
    def pattern(self):
        """The attention pattern (softmax maths) or None (linear attention)."""
        return self.math.pattern if isinstance(self.math, SoftmaxMath) else None

    @property
    def feature_map(self):
        return self.math.feature_map if isinstance(self.math, LinearMath) else None

    @property
    def case_fields(self) -> dict[str, Any]:
        """What a ``Case`` copies from the registry when it is planned, so that stored rows carry
        what reports need: ``Case(**variant.case_fields, seq_len=..., ...)``."""
        return dict(
            variant=self.label,
            family=self.family,
            math=self.info.math,
            impl=self.impl,
            exact=self.exact,
        )

    def __repr__(self) -> str:
        return f"Variant({self.label!r})"

    # --- running --------------------------------------------------------------------------
    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True):
        """q: (B, N, H, D); k, v: (B, N, H_kv, D) with H_kv dividing H -> (B, N, H, D).

        Grouped-query attention (H_kv < H) goes to the implementation as it is where it declares
        ``Capabilities(gqa=True)``; otherwise each key/value head is repeated for its group of
        query heads first (that copy is part of what a benchmark times)."""
        check_qkv(q, k, v)
        if not causal and not self.info.takes_causal:
            raise ValueError(
                f"variant {self.label} computes causal attention only (causal=False given)"
            )
        static = self._static_reasons(str(q.device.type), q.dtype, q.shape[-1], causal)
        if static:
            raise ValueError(f"variant {self.label} cannot run here: " + "; ".join(static))
        if k.shape[2] != q.shape[2] and not self.supports.on(q.device.type).gqa:
            k, v = expand_heads(k, q.shape[2]), expand_heads(v, q.shape[2])
        if self.info.takes_causal:
            return self.info.fn(q, k, v, causal=causal, **self.params)
        return self.info.fn(q, k, v, **self.params)

    def prepare(self, case: Case) -> None:
        """Build the per-shape caches (masks, block plans) of ``case`` ahead of timing."""
        if self.info.prepare is not None:
            self.info.prepare(self, case)

    def kernel_used(self, q, k, v, *, causal: bool = True) -> str | None:
        """The kernel a dispatching implementation runs for these inputs (None: it names none)."""
        return None if self.info.kernel is None else self.info.kernel(q, k, v, causal=causal)

    def reference(self, q, k, v, *, causal: bool = True, dtype: torch.dtype = torch.float64):
        """This variant's math, materialised, in ``dtype`` (float64: the reference)."""
        return self.math.reference(q, k, v, causal=causal, dtype=dtype)

    def decoder(
        self,
        batch: int,
        heads: int,
        head_dim: int,
        *,
        max_len: int,
        kv_heads: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ):
        """This implementation's decoder: ``prefill(q, k, v)`` then ``step(q, k, v)`` one token
        at a time; its cache holds ``kv_heads`` key/value heads (default: ``heads``)."""
        from attnbench.attention import decode

        factory = self.info.decoder or decode.default_decoder_class(self.math)
        return factory(
            self,
            batch,
            heads,
            head_dim,
            kv_heads=kv_heads or heads,
            max_len=max_len,
            dtype=dtype,
            device=device,
        )

    @property
    def decoder_name(self) -> str:
        return self.info.decoder_name()

    # --- capabilities ---------------------------------------------------------------------
    def _static_reasons(
        self, device: str, dtype: torch.dtype, head_dim: int, causal: bool
    ) -> tuple[str, ...]:
        """Reasons fixed by the device, dtype, head dim and causality (cached per entry)."""
        key = (device, dtype, head_dim, causal)
        cache = self.info.static_reasons
        if key not in cache:
            cache[key] = self._compute_static_reasons(*key)
        return cache[key]

    def _compute_static_reasons(
        self, device: str, dtype: torch.dtype, head_dim: int, causal: bool
    ) -> tuple[str, ...]:
        caps = self.supports.on(device)
        out = [why for why in map(missing_reason, caps.requires) if why]
        if device not in caps.devices:
            out.append(f"device {device!r} not supported (supported: {', '.join(caps.devices)})")
        if dtype not in caps.dtypes:
            out.append(
                f"dtype {dtype_name(dtype)} not supported on {device} "
                f"(supported: {', '.join(dtype_name(d) for d in caps.dtypes)})"
            )
        if caps.max_head_dim is not None and head_dim > caps.max_head_dim:
            out.append(f"head_dim {head_dim} > {caps.max_head_dim}, the largest supported")
        if caps.head_dim_multiple and head_dim % caps.head_dim_multiple:
            out.append(f"head_dim {head_dim} is not a multiple of {caps.head_dim_multiple}")
        if caps.head_dims is not None and head_dim not in caps.head_dims:
            out.append(
                f"head_dim {head_dim} not supported (supported: "
                f"{', '.join(map(str, caps.head_dims))})"
            )
        if not causal and not (caps.noncausal or self.info.takes_causal):
            out.append("non-causal attention not supported")
        return tuple(out)

    def not_supported_reasons(
        self, case: Case | None = None, *, probe: bool = True, **kwargs: Any
    ) -> list[str]:
        """Why this variant cannot run ``case`` here; an empty list means it runs.

        Pass a :class:`Case` or its fields as keywords (``device="cuda", dtype=torch.bfloat16,
        head_dim=128, pass_="fwd_bwd"``); unspecified fields take ``Case``'s defaults. With
        ``probe=False`` the variant's kernel probes (which run kernels on the device) are left
        out: the launcher asks that way, the measuring worker with the probes.
        """
        if case is None:
            if "dtype" in kwargs:
                kwargs["dtype"] = parse_dtype(kwargs["dtype"])
            case = Case(**kwargs)
        elif kwargs:
            case = replace(case, **kwargs)
        device = torch.device(case.device).type
        caps = self.supports.on(device)
        out = list(self._static_reasons(device, case.dtype, case.head_dim, case.causal))
        if device == "cuda":
            if not torch.cuda.is_available():
                out.append("CUDA is not available on this machine")
            elif caps.min_cuda_capability is not None:
                cap = torch.cuda.get_device_capability(case.device)
                if cap < caps.min_cuda_capability:
                    need = ".".join(map(str, caps.min_cuda_capability))
                    out.append(
                        f"needs CUDA compute capability >= {need}, device has {cap[0]}.{cap[1]}"
                    )
        wanted = case.attention_pass
        if wanted == "fwd_bwd" and not caps.backward:
            out.append(f"backward not supported on {device}")
        if wanted == "decode" and not caps.decode:
            out.append("decoding not supported")
        if caps.max_seq_len is not None and case.seq_len > caps.max_seq_len:
            out.append(
                f"seq_len {case.seq_len} > {caps.max_seq_len}, the largest this implementation "
                "is meant for"
            )
        if not out and self.info.reasons is not None:
            out.extend(self.info.reasons(case, self.params))
        if not out and probe and self.info.probe is not None:
            out.extend(self.info.probe(case, self.params))
        return out


def check_qkv(q, k, v) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a (B, N, H, D) tensor, got {shape}")
    (b, n, h, d), shapes = q.shape, (tuple(q.shape), tuple(k.shape), tuple(v.shape))
    hk = k.shape[2]
    if k.shape != (b, n, hk, d) or v.shape[:3] != (b, n, hk) or hk < 1 or h % hk:
        raise ValueError(
            "q, k, v must share (B, N), q and k the head dim D, and k, v a number of heads that "
            "divides q's (grouped-query attention); got q {}, k {}, v {}".format(*shapes)
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
