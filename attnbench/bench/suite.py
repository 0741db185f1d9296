"""Suites: TOML files that say which cases a run measures (``attnbench/suites/*.toml``, or any
path).

A suite has up to two levels and a timing section::

    name = "quick"
    device = "auto"                  # auto | cpu | cuda | cuda:N

    [op]                             # attention alone, (B, N, H, D)
    variants = ["fused.sdpa", "sliding_window.blocked:window=256"]
    seq_lens = [1024, 4096]
    batch = 1                        # or total_tokens = 16384: batch = total_tokens // N
    heads = 8                        # or model_dim = 2048: heads = model_dim // head_dim
    kv_heads = [8, 2]                # grouped-query attention (default: heads)
    head_dims = [64]
    dtypes = ["float32"]
    passes = ["fwd", "bwd", "fwd_bwd", "decode"]
    causal = [true, false]

    [model]                          # the identical LM at a preset
    preset = "tiny"
    variants = ["fused.sdpa"]
    seq_lens = [256]
    batch = 4
    dtypes = ["float32"]
    passes = ["train_step", "prefill", "decode"]

    [quality]                        # train the identical LM per variant, then evaluate it
    dataset = "pystdlib"             # attnbench.quality.data.CORPORA or file:PATH
    variants = ["fused.sdpa", "linear.elu.chunked"]
    preset = "tiny"; train_len = 256; batch = 16; train_tokens = 2000000   # or train_seconds = 60
    eval_lens = [128, 256, 512]; eval_tokens = 65536; eval_method = "windows"
    dropin = true                    # evaluate the first variant's checkpoint with each variant

    [recall]                         # multi-query associative recall (MQAR)
    variants = ["fused.sdpa"]
    seq_lens = [64, 128, 256]; kv_pairs = [4, 8, 16]; train_steps = 600

    [timing]
    warmup = 1; budget_s = 0.5; min_reps = 5; max_reps = 50; timeout_s = 300
    threads = 0                      # 0: PyTorch's default; recorded in run.json either way
    repeats = 1                      # measure every case this many times (noise)
    gate = true                      # every timed pass checked against the float64 reference
    [timing.env]                     # the timing worker's environment (every variant, the ceiling)
    THP_MEM_ALLOC_ENABLE = "1"

The sections are the dataclasses of ``attnbench.settings``; a value is checked against its
field's type.

Unknown keys and bad values are rejected with the key's name and the valid values before
anything runs. Every field can be overridden from the command line (``--set op.batch=2``).
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from attnbench.registry import get_variant
from attnbench.settings import (
    ModelLevelConfig,
    OpConfig,
    QualityConfig,
    RecallConfig,
    SettingError,
    TimingConfig,
)

# the built-in suites ship inside the package (package data), so `--suite NAME` works installed
SUITES_DIR = Path(__file__).resolve().parents[1] / "suites"


@dataclass(frozen=True)
class Suite:
    name: str = "custom"
    description: str = ""
    device: str = "auto"
    op: OpConfig | None = None
    model: ModelLevelConfig | None = None
    quality: QualityConfig | None = None
    recall: RecallConfig | None = None
    timing: TimingConfig = field(default_factory=TimingConfig)

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


SECTIONS = {
    "op": OpConfig,
    "model": ModelLevelConfig,
    "quality": QualityConfig,
    "recall": RecallConfig,
    "timing": TimingConfig,
}


def _fail(where: str, msg: str) -> None:
    raise ValueError(f"suite {where}: {msg}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _coerce(full: str, value: Any, kind: Any, default: Any, minimum: int = 1) -> Any:
    """Check ``value`` against the field's type ``kind`` (``int``, ``tuple[int, ...]``, ...);
    integer list items must be at least ``minimum`` (the field's metadata; default 1)."""
    origin = typing.get_origin(kind)
    if origin is tuple:
        item = typing.get_args(kind)[0]
        if not isinstance(value, (list, tuple)) or (not value and default):
            _fail(full, f"must be a non-empty list, got {value!r}")
        for x in value:
            if item is int and (not _is_int(x) or x < minimum):
                _fail(
                    full,
                    f"items must be {'positive' if minimum == 1 else 'non-negative'} "
                    f"integers, got {x!r}",
                )
            if item is bool and not isinstance(x, bool):
                _fail(full, f"items must be true or false, got {x!r}")
            if item is str and not isinstance(x, str):
                _fail(full, f"items must be strings, got {x!r}")
            if item is float and (
                not isinstance(x, (int, float)) or isinstance(x, bool) or not x > 0
            ):
                _fail(full, f"items must be positive numbers, got {x!r}")
        return tuple(value)
    if origin is dict:
        if not isinstance(value, dict) or not all(
            isinstance(v, (str, int, float)) for v in value.values()
        ):
            _fail(full, f"must be a table of names to values, got {value!r}")
        if typing.get_args(kind)[1] is Any:  # typed values, checked by their consumer
            return dict(value)
        return {str(k): str(v) for k, v in value.items()}
    if kind is bool:
        if not isinstance(value, bool):
            _fail(full, f"must be true or false, got {value!r}")
        return value
    if kind is int:
        if not _is_int(value) or value < 0:
            _fail(full, f"must be a non-negative integer, got {value!r}")
        return value
    if kind is float:
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or value < 0
            or (value == 0 and default != 0 and minimum != 0)
        ):
            _fail(
                full,
                f"must be a {'non-negative' if minimum == 0 else 'positive'} number, got {value!r}",
            )
        return float(value)
    if not isinstance(value, str):
        _fail(full, f"must be a string, got {value!r}")
    return value


def _build(cls, where: str, data: dict[str, Any]):
    """The section ``cls`` from a TOML table: each key's type, ``minimum`` and ``choices``
    (field metadata), then the section's own ``validate()``; every error names the key."""
    hints = typing.get_type_hints(cls)
    meta = {f.name: f.metadata for f in fields(cls)}
    defaults = cls()
    out = {}
    for key, value in data.items():
        if key not in meta:
            _fail(where + key, f"unknown key; valid keys: {', '.join(meta)}")
        out[key] = _coerce(
            where + key, value, hints[key], getattr(defaults, key), meta[key].get("minimum", 1)
        )
        choices = meta[key].get("choices")
        if choices:
            for x in out[key] if isinstance(out[key], tuple) else (out[key],):
                if x not in choices:
                    _fail(
                        where + key,
                        f"unknown {meta[key].get('noun', 'value')} {x!r}; "
                        f"valid: {', '.join(map(str, choices))}",
                    )
    section = cls(**out)
    if hasattr(section, "validate"):
        try:
            section.validate()
        except SettingError as e:
            _fail(where + e.key, str(e))
    return section


def _check_variants(where: str, specs) -> None:
    for spec in specs:
        try:
            get_variant(spec)
        except ValueError as e:
            _fail(where, str(e))


def _check_values(suite: Suite) -> None:
    for sec in ("op", "model"):
        cfg = getattr(suite, sec)
        if cfg is None:
            continue
        if not cfg.variants:
            _fail(f"{sec}.variants", "must name at least one variant")
        _check_variants(f"{sec}.variants", cfg.variants)
    from attnbench.model import PRESETS

    for sec in ("model", "quality", "recall"):
        cfg = getattr(suite, sec)
        if cfg is None:
            continue
        if sec == "model" and cfg.preset.startswith("hf:"):  # a transformers model
            try:
                from attnbench import hf

                hf.config(cfg.preset[3:])
            except (ValueError, ImportError, OSError) as e:
                _fail("model.preset", str(e))
        elif cfg.preset not in PRESETS:
            _fail(
                f"{sec}.preset",
                f"unknown preset {cfg.preset!r}; valid: {', '.join(PRESETS)}"
                + (", or hf:NAME / hf:FOLDER (a transformers model)" if sec == "model" else ""),
            )
    for sec in ("quality", "recall"):
        cfg = getattr(suite, sec)
        if cfg is not None:
            if not cfg.variants:
                _fail(f"{sec}.variants", "must name at least one variant")
            _check_variants(f"{sec}.variants", cfg.variants + getattr(cfg, "dropin_variants", ()))
    if suite.quality is not None:
        _check_quality(suite.quality)
    for sec in ("quality", "recall"):
        cfg = getattr(suite, sec)
        if cfg is not None and cfg.model:
            _check_model_shape(f"{sec}.model", cfg.preset, cfg.model)
    if all(getattr(suite, sec) is None for sec in ("op", "model", "quality", "recall")):
        _fail("", "needs an [op], [model], [quality] or [recall] section")
    dev = suite.device
    if dev not in ("auto", "cpu", "cuda") and not dev.startswith("cuda:"):
        _fail("device", f"unknown device {dev!r}; valid: auto, cpu, cuda, cuda:N")


def _check_model_shape(where: str, preset: str, shape: dict[str, Any]) -> None:
    """A section's ``model`` table: fields of ``ModelConfig`` with values of their types, that
    build a model on top of ``preset``."""
    from attnbench.model import ModelConfig

    hints = typing.get_type_hints(ModelConfig)
    for key, value in shape.items():
        if key not in hints:
            _fail(f"{where}.{key}", f"unknown model field; valid: {', '.join(hints)}")
        kind = hints[key]
        ok = (
            isinstance(value, (int, float)) and not isinstance(value, bool)
            if kind is float
            else isinstance(value, kind) and not isinstance(value, bool)
        )
        if not ok:
            _fail(
                f"{where}.{key}",
                f"must be a{'n' if kind is int else ''} {kind.__name__}, got {value!r}",
            )
    try:
        ModelConfig.from_name(preset, **shape)
    except ValueError as e:
        _fail(where, str(e))


def _check_quality(q: QualityConfig) -> None:
    """What the section cannot check itself: that its corpus is one we know."""
    from attnbench.quality.data import CorpusError, check_dataset_name

    try:
        check_dataset_name(q.dataset)
    except CorpusError as e:
        _fail("quality.dataset", str(e))


def from_dict(data: dict[str, Any], where: str = "") -> Suite:
    top = {"name", "description", "device", *SECTIONS}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in top:
            _fail(f"{where}{key}", f"unknown key; valid keys: {', '.join(sorted(top))}")
        if key in SECTIONS:
            if not isinstance(value, dict):
                _fail(f"{where}{key}", "must be a table ([section])")
            kwargs[key] = _build(SECTIONS[key], f"{where}{key}.", value)
        else:
            kwargs[key] = _coerce(f"{where}{key}", value, str, "")
    suite = Suite(**kwargs)
    _check_values(suite)
    return suite


def load_suite(name_or_path: str) -> Suite:
    """A suite by name (``suites/<name>.toml``) or by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SUITES_DIR / f"{name_or_path}.toml"
    if not path.exists():
        known = sorted(p.stem for p in SUITES_DIR.glob("*.toml"))
        raise ValueError(
            f"no suite {name_or_path!r}; known suites: {', '.join(known)} (or a path to a .toml)"
        )
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"suite {path}: not valid TOML: {e}") from None
    return from_dict(data, where=f"{path.name}: ")


def parse_override(text: str) -> tuple[str, Any]:
    """``section.key=value`` -> (path, value); the value is TOML (``[1, 2]``, ``true``, ``"x"``)
    or a bare comma-separated list / word."""
    key, eq, raw = text.partition("=")
    if not eq:
        raise ValueError(f"override {text!r} must look like section.key=value")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        items = [s.strip() for s in raw.split(",") if s.strip()]
        value = [_scalar(s) for s in items] if "," in raw else _scalar(raw.strip())
    return key.strip(), value


def _scalar(s: str) -> Any:
    try:
        return tomllib.loads(f"v = {s}")["v"]
    except tomllib.TOMLDecodeError:
        return s


def with_overrides(suite: Suite, overrides: dict[str, Any]) -> Suite:
    """Apply ``{"op.seq_lens": [1024], "timing.budget_s": 0.1, ...}``; validates like a file."""
    data = suite.to_dict()
    data = {k: v for k, v in data.items() if v is not None}
    for path, value in overrides.items():
        section, _, key = path.rpartition(".")
        target = data
        if section:
            if section not in SECTIONS:
                _fail(path, f"unknown section {section!r}; valid: {', '.join(SECTIONS)}")
            target = data.setdefault(section, {})
        hints = typing.get_type_hints(SECTIONS[section]) if section else {}
        if typing.get_origin(hints.get(key)) is tuple and not isinstance(value, (list, tuple)):
            value = [value]
        target[key] = value
    return from_dict(data, where="override ")
