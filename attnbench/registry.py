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
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

from attnbench.attention.feature_maps import FeatureMap
from attnbench.attention.reference import MATHS, LinearMath, MathSpec
from attnbench.case import FAMILIES, Capabilities, Case
from attnbench.spec import convert_param, parse_spec, positive
from attnbench.variant import ReasonsFn, Variant, VariantInfo

__all__ = [
    "Variant",
    "VariantInfo",
    "get_variant",
    "list_variants",
    "load_plugin",
    "parse_spec",
    "positive",
    "register_math",
    "register_variant",
    "resolve_name",
    "unregister_variant",
    "variant_names",
]

_FAMILY_MATH = {
    "naive": "causal_softmax",
    "fused": "causal_softmax",
    "sliding_window": "sliding_window",
}


_REGISTRY: dict[str, VariantInfo] = {}
_LOADED = False


def register_math(
    name: str,
    factory: Callable[..., Any],
    *,
    exact: bool = False,
    description: str = "",
    replace_existing: bool = False,
) -> MathSpec:
    """Register a new math (a pattern, or a feature map) so that variants can name it with
    ``register_variant(..., math=name)``: a plugin brings its own pattern in its own file.

    ``factory`` takes keyword arguments named after the variants' parameters and returns a
    :class:`~attnbench.attention.patterns.Pattern` subclass instance (softmax over that pattern:
    it defines ``mask_fn`` and ``label``; the float64 reference, FLOPs, decoders and plots derive
    from it) or a ``FeatureMap`` (linear attention). Bad parameter values raise ``ValueError``
    in the factory (``get_variant`` reports them with the variant's name).

    ``exact``: True only if the math is full causal softmax attention.
    """
    if not name.isidentifier():
        raise ValueError(f"math name {name!r} must be an identifier, like 'dilated_window'")
    if name in MATHS and not replace_existing:
        raise ValueError(f"math {name!r} is already registered (valid new names: any other)")
    if not callable(factory):
        raise ValueError(f"math {name!r}: factory must be callable, got {type(factory).__name__}")
    spec = MathSpec(name, factory, exact, description or (factory.__doc__ or "").strip())
    MATHS[name] = spec
    return spec


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
        _BOUND.clear()
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
    _BOUND.clear()


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
    package-dir mapping). In a source checkout, the folder beside this package is loaded under
    the same name (never as a top-level ``variants`` module), even where another checkout is
    installed in editable mode: its finder would otherwise serve that checkout's variants to
    this checkout's harness (a worktree measuring one commit with another's kernels)."""
    init = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "variants", "__init__.py"
    )
    if not os.path.isfile(init):  # installed: the subpackage
        try:
            importlib.import_module(BUILTIN_VARIANTS)
            return
        except ModuleNotFoundError as e:
            if e.name != BUILTIN_VARIANTS:
                raise
            raise ImportError(
                f"the built-in variants ({BUILTIN_VARIANTS}) are not installed and "
                f"there is no source folder at {os.path.dirname(init)}"
            ) from None
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


_BOUND: dict[str, Variant] = {}  # spec string -> its Variant (cleared when the registry changes)


def get_variant(spec: str, **params: Any) -> Variant:
    """Bind a registered implementation to parameters:
    ``get_variant("sliding_window.blocked:window=256")``.

    Parameters may also be given as keywords (they override the spec string's). A spec string
    alone is parsed once per process: the same string returns the same ``Variant`` (its state is
    its parameters; per-shape caches live beside the kernels), until a registration changes.
    """
    if not params and isinstance(spec, str) and spec in _BOUND:
        return _BOUND[spec]
    variant = _bind(spec, **params)
    if not params and isinstance(spec, str):
        _BOUND[spec] = variant
    return variant


def _bind(spec: str, **params: Any) -> Variant:
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
        k: convert_param(info.name, k, given[k], d) if k in given else d
        for k, d in info.defaults.items()
    }
    try:
        math = MATHS[info.math].build(values)
        if isinstance(math, LinearMath) and not isinstance(math.feature_map, FeatureMap):
            raise ValueError(
                f"math {info.math!r} built a {type(math.feature_map).__name__}; a math's factory "
                "must return a Pattern or a FeatureMap"
            )
        if info.validate is not None:
            info.validate(values)
    except ValueError as e:
        raise ValueError(f"variant {info.name}: {e}") from None
    return Variant(info, values, math)
