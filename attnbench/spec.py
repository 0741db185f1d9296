"""Spec strings: ``family.math.impl:key=value,...`` split into a name and parameters, and each
raw value converted to its default's type (the registry's parsing, kept apart from it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


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


def convert_param(name: str, key: str, value: Any, default: Any) -> Any:
    if default == "auto":  # a size chosen per machine (attnbench.tune), or an integer given
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        try:
            return int(str(value))
        except ValueError:
            raise ValueError(
                f'variant {name}: parameter {key}={value!r} is not an integer or "auto"'
            ) from None
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


def positive(*names: str, auto: bool = False) -> Callable[[dict], None]:
    """A ``validate`` hook: the named integer parameters must be >= 1 (or, with ``auto``, the
    string ``"auto"``: chosen per machine and shape by ``attnbench.tune``)."""

    def check(params: dict) -> None:
        for n in names:
            v = params[n]
            if auto and v == "auto":
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                also = ' or "auto"' if auto else ""
                raise ValueError(f"{n} must be a positive integer{also}, got {v!r}")

    return check
