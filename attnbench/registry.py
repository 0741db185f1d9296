"""The variant registry: every attention implementation, its math, parameters and capabilities.

An implementation is a function ``fn(q, k, v, *, param=default, ...)`` over (B, N, H, D) tensors,
registered with :func:`register_variant`. A *spec string* names it with parameters::

    family.math.impl:key=value,key=value      e.g.  sliding_window.blocked:window=256
                                                     linear.elu.chunked:chunk=64

The name may be shortened to any unambiguous dot-suffix (``elu.chunked`` for
``linear.elu.chunked``). :func:`get_variant` returns a :class:`Variant`: the function bound to its
parameters, callable as ``attn(q, k, v, causal=True)``, with its math (pattern or feature map),
its float64 reference, its capabilities and :meth:`Variant.not_supported_reasons`.

Capabilities are data (:class:`attnbench.case.Capabilities`); a missing optional package is a
*reason*, never an ImportError, and nothing here touches a GPU at import time. Reasons that can
only be learnt by running a kernel (a package's own dispatcher) come from a variant's ``probe``,
which the harness calls in its measuring worker, never in the launcher.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from attnbench.attention.backends import missing_reason
from attnbench.attention.reference import MATHS, LinearMath, Math, SoftmaxMath, expand_heads
from attnbench.case import FAMILIES, Capabilities, Case, dtype_name, parse_dtype

_FAMILY_MATH = {
    "naive": "causal_softmax",
    "fused": "causal_softmax",
    "sliding_window": "sliding_window",
}


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


_REGISTRY: dict[str, VariantInfo] = {}
_LOADED = False


def register_variant(
    name: str,
    *,
    family: str,
    math: str | None = None,
    supports: Capabilities | None = None,
    exact: bool | None = None,
    reasons: ReasonsFn | None = None,
    probe: ReasonsFn | None = None,
    decoder: Callable[..., Any] | None = None,
    validate: Callable[[dict], None] | None = None,
    prepare: Callable[[Variant, Case], None] | None = None,
    kernel: Callable[..., str | None] | None = None,
    description: str | None = None,
    replace_existing: bool = False,
):
    """Decorator that registers ``fn(q, k, v, *, param=default, ...)`` as variant ``name``.

    Args:
        name: dotted name, conventionally ``family.impl`` or ``family.math.impl``.
        family: one of ``FAMILIES``.
        math: the math it computes (a key of ``attnbench.attention.reference.MATHS``). Default: from
            the family (naive and fused: ``causal_softmax``; sliding_window: ``sliding_window``) or
            from the name's middle part (``sparse.bigbird.flex`` -> ``bigbird``).
        supports: capabilities; default: every device and float dtype, backward and decode.
        exact: whether it equals full softmax attention; default: from the math.
        reasons: ``f(case, params) -> list[str]``: cheap reasons only known per case.
        probe: ``f(case, params) -> list[str]``: reasons learnt by running a kernel (an
            optional package's dispatcher); the harness calls it in its worker process only.
        decoder: a ``attnbench.attention.decode.Decoder`` class (or a factory with its
            signature ``f(variant, batch, heads, head_dim, *, kv_heads, max_len, dtype,
            device)``) that decodes with this implementation's own kernel; default: from the
            math (SDPA over a KV cache, over the pattern's key blocks, a ring buffer or a
            recurrent state).
        validate: ``f(params)`` raising ``ValueError`` for bad implementation parameters.
        prepare: ``f(variant, case)`` that builds what the implementation caches per shape
            (masks, block plans), so the harness can time it apart from the kernel.
        kernel: ``f(q, k, v, *, causal) -> str`` naming the kernel that a dispatcher picks for
            these inputs (SDPA's default dispatch: math, flash, efficient or cuDNN); each row
            records it as ``kernel``, so a dispatching variant is never timed unlabelled.
        description: one line; default: the first line of the function's docstring.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; valid: {', '.join(FAMILIES)}")
    parts = name.split(".")
    if len(parts) < 2 or not all(parts):
        raise ValueError(f"variant name {name!r} must be dotted, like '{family}.my_impl'")
    if math is None:
        math = _FAMILY_MATH.get(family) or (parts[1] if parts[1] in MATHS else None)
        if math is None:
            raise ValueError(
                f"variant {name!r}: cannot infer its math; pass math= one of {', '.join(MATHS)}"
            )
    if math not in MATHS:
        raise ValueError(f"variant {name!r}: unknown math {math!r}; valid: {', '.join(MATHS)}")

    def decorate(fn):
        sig = inspect.signature(fn)
        params = list(sig.parameters.values())
        if len(params) < 3 or any(p.kind == p.KEYWORD_ONLY for p in params[:3]):
            raise ValueError(f"variant {name!r}: function must take (q, k, v, *, ...)")
        defaults = {}
        takes_causal = False
        for p in params[3:]:
            if p.name == "causal":
                takes_causal = True
                continue
            if p.default is inspect.Parameter.empty:
                raise ValueError(f"variant {name!r}: parameter {p.name!r} needs a default value")
            defaults[p.name] = p.default
        missing = [p for p in MATHS[math].param_names() if p not in defaults]
        if missing:
            raise ValueError(
                f"variant {name!r} (math {math}) must take keyword parameter(s) "
                f"{', '.join(missing)}"
            )
        if name in _REGISTRY and not replace_existing:
            raise ValueError(f"variant {name!r} is already registered")
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = VariantInfo(
            name=name,
            family=family,
            math=math,
            impl=parts[-1],
            fn=fn,
            defaults=defaults,
            supports=supports or Capabilities(),
            exact=MATHS[math].exact if exact is None else exact,
            description=description or (doc[0] if doc else ""),
            reasons=reasons,
            probe=probe,
            decoder=decoder,
            validate=validate,
            prepare=prepare,
            kernel=kernel,
            takes_causal=takes_causal,
        )
        return fn

    return decorate


def unregister_variant(name: str) -> None:
    """Remove a registered variant (for tests and interactive use)."""
    _REGISTRY.pop(name, None)


def _ensure_loaded() -> None:
    """Import the built-in variants and those of installed plugins (entry points), once."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    _import_builtin_variants()
    from importlib.metadata import entry_points

    for ep in entry_points(group="attnbench.variants"):
        if ep.value != BUILTIN_VARIANTS:
            ep.load()


BUILTIN_VARIANTS = "attnbench.variants"


def _import_builtin_variants() -> None:
    """``attnbench.variants``: installed from the top-level ``variants/`` folder (setuptools'
    package-dir mapping). In a source checkout that is not installed, the folder beside the
    package is loaded under the same name, never as a top-level ``variants`` module."""
    try:
        importlib.import_module(BUILTIN_VARIANTS)
        return
    except ModuleNotFoundError as e:
        if e.name != BUILTIN_VARIANTS:
            raise
    init = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "variants", "__init__.py"
    )
    if not os.path.isfile(init):
        raise ImportError(
            f"the built-in variants ({BUILTIN_VARIANTS}) are not installed and "
            f"there is no source folder at {os.path.dirname(init)}"
        )
    spec = importlib.util.spec_from_file_location(
        BUILTIN_VARIANTS, init, submodule_search_locations=[os.path.dirname(init)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[BUILTIN_VARIANTS] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[BUILTIN_VARIANTS]
        raise
    sys.modules["attnbench"].variants = module  # as an import of the subpackage would


_PLUGINS: set[str] = set()


def load_plugin(path: str) -> None:
    """Import a user's Python file that registers variants (the CLI's ``--plugins``); a file
    already loaded in this process is not imported twice."""
    _ensure_loaded()
    if not os.path.isfile(path):
        raise ValueError(f"plugin file {path!r} does not exist")
    key = os.path.realpath(path)
    if key in _PLUGINS:
        return
    spec = importlib.util.spec_from_file_location(
        f"attnbench_plugin_{os.path.splitext(os.path.basename(path))[0]}", path
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _PLUGINS.add(key)  # only once it ran: a retry after a failure imports it again


def variant_names() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def list_variants(family: str | None = None) -> list[dict[str, Any]]:
    """Metadata of every registered variant (optionally of one family), sorted by name."""
    _ensure_loaded()
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; valid: {', '.join(FAMILIES)}")
    return [
        info.metadata()
        for name, info in sorted(_REGISTRY.items())
        if family is None or info.family == family
    ]


def resolve_name(name: str) -> str:
    """Full registered name for ``name`` or an unambiguous dot-suffix of one."""
    _ensure_loaded()
    if name in _REGISTRY:
        return name
    matches = [n for n in _REGISTRY if n.endswith("." + name)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ValueError(
            f"variant name {name!r} is ambiguous: it matches {', '.join(sorted(matches))}"
        )
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else ""
    raise ValueError(f"unknown variant {name!r}{hint}. Valid names: {', '.join(sorted(_REGISTRY))}")


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Split ``name:key=value,...`` into the name and the raw parameter strings."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"variant spec must be a non-empty string, got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    raw: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"bad parameter {item!r} in spec {spec!r}; expected key=value")
        if key.strip() in raw:
            raise ValueError(f"parameter {key.strip()!r} given twice in spec {spec!r}")
        raw[key.strip()] = value.strip()
    return name.strip(), raw


def _convert(name: str, key: str, value: Any, default: Any) -> Any:
    kind = type(default)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    text = str(value)
    try:
        if kind is bool:
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return lowered in ("true", "1", "yes")
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if default is None:
            return text
        return kind(text)
    except (TypeError, ValueError):
        raise ValueError(
            f"variant {name}: parameter {key}={text!r} is not a valid {kind.__name__}"
        ) from None


def get_variant(spec: str, **params: Any) -> Variant:
    """Bind a registered implementation to parameters:
    ``get_variant("sliding_window.blocked:window=256")``.

    Parameters may also be given as keywords (they override the spec string's).
    """
    name, raw = parse_spec(spec)
    info = _REGISTRY[resolve_name(name)]
    given = {**raw, **params}
    unknown = [k for k in given if k not in info.defaults]
    if unknown:
        valid = ", ".join(f"{k}={v!r}" for k, v in info.defaults.items()) or "(none)"
        close = difflib.get_close_matches(unknown[0], list(info.defaults), n=2, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(
            f"variant {info.name}: unknown parameter {unknown[0]!r}{hint}; valid: {valid}"
        )
    values = {
        k: _convert(info.name, k, given[k], d) if k in given else d
        for k, d in info.defaults.items()
    }
    try:
        math = MATHS[info.math].build(values)
        if info.validate is not None:
            info.validate(values)
    except ValueError as e:
        raise ValueError(f"variant {info.name}: {e}") from None
    return Variant(info, values, math)


def positive(*names: str) -> Callable[[dict], None]:
    """A ``validate`` hook: the named integer parameters must be >= 1."""

    def check(params: dict) -> None:
        for n in names:
            v = params[n]
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{n} must be a positive integer, got {v!r}")

    return check


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

    def __repr__(self) -> str:
        return f"Variant({self.label!r})"

    # --- running --------------------------------------------------------------------------
    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True):
        """q: (B, N, H, D); k, v: (B, N, H_kv, D) with H_kv dividing H -> (B, N, H, D).

        Grouped-query attention (H_kv < H) goes to the implementation as it is where it declares
        ``Capabilities(gqa=True)``; otherwise each key/value head is repeated for its group of
        query heads first (that copy is part of what a benchmark times)."""
        _check_qkv(q, k, v)
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
    @functools.lru_cache(maxsize=256)
    def _static_reasons(
        self, device: str, dtype: torch.dtype, head_dim: int, causal: bool
    ) -> tuple:
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


def _check_qkv(q, k, v) -> None:
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
