"""The shared vocabulary of attnbench: families, passes, dtypes, a variant's capabilities and the
``Case`` every part of the harness speaks.

A case is one measurement: a variant x a shape (B, N, H, kv_heads, D) x dtype x causal x pass x
device, at one level (``op``: attention alone; ``model``: the identical LM; ``quality`` and
``recall``: a trained model). It is one typed, frozen object from the plan to the stored row::

    case = Case(level="op", variant="fused.sdpa", pass_="fwd_bwd", seq_len=4096)
    case.case_id                      # 'op|fused.sdpa|fwd_bwd|B1-N4096-H8-D64|float32|cpu|r0'
    # JSON-ready dict ("pass", dtype names), what results.jsonl holds
    row = case.row()
    Case.from_row(row) == case

Nothing here imports the rest of the package; every room may import it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

FAMILIES = ("naive", "fused", "sparse", "linear", "sliding_window")
LEVELS = ("op", "model", "quality", "recall")
# attention alone: forward, backward alone (given the forward's saved state), both, one decode step
OP_PASSES = ("fwd", "bwd", "fwd_bwd", "decode")
# the identical LM: forward + backward + AdamW, a parallel forward over a prompt, one new token
MODEL_PASSES = ("train_step", "prefill", "decode")
# trained models: train a variant (then evaluate it), fit the n-gram floor, swap a variant into a
# trained checkpoint, and the per-length / per-setting evaluation rows they write
TRAINING_PASSES = ("train", "fit", "dropin", "eval", "copy")
PASSES = {
    "op": OP_PASSES,
    "model": MODEL_PASSES,
    "quality": TRAINING_PASSES,
    "recall": TRAINING_PASSES,
}
# what each pass asks of the attention variant (None: no attention at all)
ATTENTION_PASS = {
    "fwd": "fwd",
    "bwd": "fwd_bwd",
    "fwd_bwd": "fwd_bwd",
    "decode": "decode",
    "train_step": "fwd_bwd",
    "prefill": "fwd",
    "train": "fwd_bwd",
    "eval": "fwd",
    "dropin": "fwd",
    "copy": "fwd",
    "fit": None,
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Status:
    """A row's status: its name in results.jsonl, its text in a table cell, whether it counts
    as a failure (the report lists it under problems), and its mark on a plot (None: the row is
    not drawn)."""

    name: str
    text: str
    failed: bool
    mark: str | None
    meaning: str


# every status a row can have, defined once (tables, plots, summaries and results derive theirs)
STATUSES: dict[str, Status] = {
    s.name: s
    for s in (
        Status("ok", "ok", False, None, "measured and gated"),
        Status("unsupported", "unsupported", False, None, "the variant cannot run the case here"),
        Status("incorrect", "INCORRECT", True, "incorrect", "failed the reference gate"),
        Status("implausible", "IMPLAUSIBLE", True, "implausible", "faster than the machine can go"),
        Status("oom", "OOM", True, "OOM", "out of memory"),
        Status("error", "error", True, "error", "raised an exception"),
        Status("timeout", "timeout", True, "timeout", "killed after the case's time limit"),
        Status("crash", "crash", True, "crash", "its worker process died"),
        Status("skipped_after_oom", "OOM (skipped)", False, "OOM", "larger N after an OOM"),
        Status("diverged", "diverged", True, "diverged", "training diverged (non-finite loss)"),
    )
}
# what must be equal for two rows to be compared (crossover, fastest and leanest, targets)
SETTING = ("pass", "dtype", "head_dim", "heads", "kv_heads", "batch", "causal")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; valid: {', '.join(DTYPES)}")
    return DTYPES[name]


def device_key(device: str | torch.device) -> str:
    """One spelling per device, for caches keyed by device: ``cuda`` and ``cuda:0`` are the same
    GPU when 0 is the current one, and must hit the same cache entry."""
    d = torch.device(device)
    if d.type == "cuda" and d.index is None:
        return f"cuda:{torch.cuda.current_device() if torch.cuda.is_available() else 0}"
    return str(d)


@dataclass(frozen=True)
class Capabilities:
    """What an implementation supports, as data the harness, CLI and tests all read."""

    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)
    max_head_dim: int | None = None
    head_dim_multiple: int | None = None
    # only these head dims (e.g. a kernel's power-of-2 tiles)
    head_dims: tuple[int, ...] | None = None
    backward: bool = True
    decode: bool = True
    noncausal: bool = False
    # grouped-query attention (kv_heads < heads) computed natively; otherwise the registry repeats
    # each key/value head for its group of query heads before the call (and the row says so)
    gqa: bool = False
    requires: tuple[str, ...] = ()  # importable module names (optional packages)
    min_cuda_capability: tuple[int, int] | None = None
    max_seq_len: int | None = None  # e.g. token-by-token loops that are only meant for small N
    # the same declarations for a CPU device, where they differ (e.g. no backward)
    cpu: dict = field(default_factory=dict, hash=False, compare=False)

    def on(self, device: str) -> Capabilities:
        return replace(self, **self.cpu, cpu={}) if device == "cpu" and self.cpu else self


@dataclass(frozen=True)
class Case:
    """One measurement's identity. ``variant`` is the variant's label (its spec with every
    parameter spelled out); ``family``, ``math``, ``impl`` and ``exact`` are copied from the
    registry when the case is planned, so stored rows carry what reports need."""

    level: str = "op"  # one of LEVELS
    variant: str = ""
    family: str = ""
    math: str = ""
    impl: str = ""
    exact: bool = False  # the variant computes full softmax attention
    pass_: str = "fwd"  # one of PASSES[level]
    batch: int = 1  # B
    seq_len: int = 1024  # N
    heads: int = 8  # H, query heads
    kv_heads: int = 0  # key/value heads (grouped-query attention); 0: the same as heads
    head_dim: int = 64  # D
    dtype: torch.dtype = torch.float32
    autocast: bool = False  # training levels on CUDA: bfloat16 autocast around a float32 model
    device: str = "cpu"
    causal: bool = True
    repeat: int = 0  # the same case measured again (noise), 0-based
    preset: str = ""  # model presets (model, quality, recall levels)

    def __post_init__(self):
        if self.level not in LEVELS:
            raise ValueError(f"unknown level {self.level!r}; valid: {', '.join(LEVELS)}")
        if self.pass_ not in PASSES[self.level]:
            raise ValueError(
                f"unknown pass {self.pass_!r} at level {self.level}; valid: "
                f"{', '.join(PASSES[self.level])}"
            )
        if self.kv_heads == 0:
            object.__setattr__(self, "kv_heads", self.heads)
        if self.kv_heads < 1 or self.heads % self.kv_heads:
            raise ValueError(
                f"kv_heads={self.kv_heads} must divide heads={self.heads} "
                "(grouped-query attention: each key/value head serves heads/kv_heads "
                "query heads)"
            )
        if isinstance(self.dtype, str):
            object.__setattr__(self, "dtype", parse_dtype(self.dtype))

    @property
    def attention_pass(self) -> str | None:
        """What the pass asks of the attention variant: fwd, fwd_bwd, decode (None: nothing)."""
        return ATTENTION_PASS[self.pass_]

    @property
    def dtype_label(self) -> str:
        return "bfloat16-autocast" if self.autocast else dtype_name(self.dtype)

    @property
    def shape_id(self) -> str:
        kv = f"-KV{self.kv_heads}" if self.kv_heads != self.heads else ""
        return f"B{self.batch}-N{self.seq_len}-H{self.heads}{kv}-D{self.head_dim}"

    def _id_parts(self) -> list[str]:
        parts = [self.level, self.variant, self.pass_, self.shape_id, self.dtype_label, self.device]
        if self.preset and self.level == "model":
            parts.append(self.preset)
        if not self.causal:
            parts.append("noncausal")
        return parts

    @property
    def case_id(self) -> str:
        """A stable id: resuming, merging and comparing runs match cases on it."""
        return "|".join(self._id_parts() + [f"r{self.repeat}"])

    def row(self) -> dict[str, Any]:
        """The case as the JSON fields of its results.jsonl row."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.dtype):
                value = self.dtype_label
            elif isinstance(value, tuple):
                value = list(value)
            out["pass" if f.name == "pass_" else f.name] = value
        out["case_id"] = self.case_id
        return out

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Case:
        """The case a stored row describes (inverse of :meth:`row`)."""
        kind = CASE_TYPES.get(row.get("level", "op"), Case)
        names = {f.name for f in fields(kind)}
        values = {}
        for key, value in row.items():
            name = "pass_" if key == "pass" else key
            if name in names:
                values[name] = tuple(value) if isinstance(value, list) else value
        if values.get("dtype") == "bfloat16-autocast":
            values.update(dtype=torch.float32, autocast=True)
        return kind(**values)

    def replace(self, **changes: Any) -> Case:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class QualityCase(Case):
    """Train the identical model with a variant on a corpus, fit the n-gram floor, or evaluate a
    trained checkpoint with a variant swapped in (``dropin``)."""

    level: str = "quality"
    pass_: str = "train"
    dataset: str = "pystdlib"
    train_len: int = 256
    budget: str = ""  # "2000000tok" or "60s": the training budget, as the id shows it
    train_tokens: int = 0
    train_seconds: float = 0.0
    seed: int = 0
    eval_lens: tuple[int, ...] = ()
    eval_split: str = "val"
    checkpoint: str = ""  # where the trained weights are (relative to the run folder) or come from
    trained_variant: str = ""  # dropin: the variant the checkpoint was trained with
    lr: float = 0.0  # a point of the suite's learning-rate grid (0: the section's lr, no grid)

    def _id_parts(self) -> list[str]:
        parts = [
            self.level,
            self.variant,
            self.pass_,
            self.dataset,
            self.preset,
            f"L{self.train_len}",
            self.budget,
            f"s{self.seed}",
            self.device,
        ]
        if self.lr:
            parts.append(f"lr{self.lr:g}")
        if self.pass_ == "dropin":
            parts.append(f"from={self.trained_variant}")
        return parts

    @property
    def case_id(self) -> str:
        return "|".join(self._id_parts())


@dataclass(frozen=True)
class RecallCase(Case):
    """Train the identical model on multi-query associative recall, then score every setting."""

    level: str = "recall"
    pass_: str = "train"
    train_steps: int = 0
    seed: int = 0
    seq_lens: tuple[int, ...] = ()
    kv_pairs_list: tuple[int, ...] = ()
    key_vocab: int = 64
    lr: float = 0.0  # a point of the suite's learning-rate grid (0: the section's lr, no grid)

    def _id_parts(self) -> list[str]:
        parts = [
            self.level,
            self.variant,
            self.preset,
            f"steps{self.train_steps}",
            f"s{self.seed}",
            self.device,
        ]
        return parts + ([f"lr{self.lr:g}"] if self.lr else [])

    @property
    def case_id(self) -> str:
        return "|".join(self._id_parts())


CASE_TYPES = {"op": Case, "model": Case, "quality": QualityCase, "recall": RecallCase}
