"""Settings: the frozen dataclasses of a suite's sections, one per component.

    [op] -> OpConfig        [model] -> ModelLevelConfig     [timing] -> TimingConfig
    [quality] -> QualityConfig (a TrainSettings)
    [recall] -> RecallConfig (a RecallSettings)

Each field is a setting: ``attnbench.bench.suite`` reads it from TOML (a key of its section),
checks its type, its ``minimum`` and ``choices`` (field metadata) and the section's own
``validate()`` (rules across fields), and the CLI derives a flag from it (``--field-name``), so a
new setting is one field here. The training code (``attnbench.quality``) and the harness
(``attnbench.bench``) read them. One comment per field says what it is. Nothing here imports the
rest of the package but its vocabulary (``attnbench.case``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from attnbench.case import DTYPES, MODEL_PASSES, OP_PASSES

EVAL_METHODS = ("windows", "sliding")
QUALITY_MODES = ("train", "dropin")
EVAL_SPLITS = ("val", "test", "train")


class SettingError(ValueError):
    """A bad value of one setting: ``key`` names it within its section."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def choice(default, choices: tuple, noun: str, **metadata):
    """A field whose value (or each item of a list) must be one of ``choices``; a bad one is
    "unknown {noun} {value!r}; valid: ..."."""
    return field(default=default, metadata={"choices": tuple(choices), "noun": noun, **metadata})


@dataclass(frozen=True)
class OpConfig:
    """Attention alone, (B, N, H, D)."""

    variants: tuple[str, ...] = ()  # variant specs
    seq_lens: tuple[int, ...] = (1024,)  # N
    batch: int = 1  # B (ignored when total_tokens > 0)
    total_tokens: int = 0  # > 0: B = max(1, total_tokens // N), flash-attention's benchmark shape
    heads: int = 8  # H, query heads (ignored when model_dim > 0)
    model_dim: int = 0  # > 0: H = model_dim // D for each head dim (flash-attention: 2048)
    kv_heads: tuple[int, ...] = ()  # key/value heads to sweep (grouped-query); empty: H
    head_dims: tuple[int, ...] = (64,)  # D
    dtypes: tuple[str, ...] = choice(("float32",), tuple(DTYPES), "dtype")
    passes: tuple[str, ...] = choice(("fwd", "fwd_bwd", "decode"), OP_PASSES, "pass")
    causal: tuple[bool, ...] = (True,)

    def validate(self) -> None:
        for d in self.head_dims:
            h = self.heads_for(d)
            bad = [kv for kv in self.kv_heads if h % kv]
            if bad:
                divisors = ", ".join(str(x) for x in range(1, h + 1) if h % x == 0)
                raise SettingError(
                    "kv_heads",
                    f"{bad[0]} does not divide heads={h} (head dim {d}); valid: "
                    f"divisors of {h}: {divisors}",
                )

    def batch_for(self, n: int) -> int:
        return max(1, self.total_tokens // n) if self.total_tokens > 0 else self.batch

    def heads_for(self, head_dim: int) -> int:
        return max(1, self.model_dim // head_dim) if self.model_dim > 0 else self.heads


@dataclass(frozen=True)
class ModelLevelConfig:
    """The identical LM at a preset: train step, prefill, decode."""

    variants: tuple[str, ...] = ()
    preset: str = "tiny"  # attnbench.model.PRESETS
    seq_lens: tuple[int, ...] = (256,)
    batch: int = 4
    dtypes: tuple[str, ...] = choice(("float32",), tuple(DTYPES), "dtype")
    passes: tuple[str, ...] = choice(("train_step", "prefill", "decode"), MODEL_PASSES, "pass")


@dataclass(frozen=True)
class TrainSettings:
    """How the identical model is trained: the same for every variant."""

    preset: str = "tiny"
    # the model's own fields on top of the preset (attnbench.model.ModelConfig: dim, n_layers,
    # n_heads, n_kv_heads, mlp_ratio, conv_width, rope_base, ...), e.g. {dim = 128, n_layers = 4}
    model: dict[str, Any] = field(default_factory=dict, hash=False)
    train_len: int = 256  # training sequence length
    batch: int = 16  # global batch (sequences per optimizer step)
    train_tokens: int = 1_000_000  # token budget (ignored when train_seconds > 0)
    train_seconds: float = 0.0  # > 0: a wall-clock budget instead
    lr: float = 3e-3  # peak learning rate
    min_lr_frac: float = 0.1  # cosine decays to lr * min_lr_frac
    warmup_frac: float = 0.05  # linear warm-up, fraction of the budget
    weight_decay: float = 0.1  # AdamW, on matrices only
    beta2: float = 0.95  # AdamW's second-moment decay (nanoGPT's character recipe: 0.99)
    grad_clip: float = 1.0  # global gradient norm
    seed: int = 0  # initial weights and data order
    log_every: int = 25  # steps between loss-curve points

    @property
    def steps(self) -> int:
        """Optimizer steps of a token budget."""
        return max(1, self.train_tokens // (self.batch * self.train_len))

    def lr_at(self, progress: float) -> float:
        """Learning rate at ``progress`` in [0, 1] of the budget."""
        if progress < self.warmup_frac:
            return self.lr * (progress + 1e-9) / self.warmup_frac
        rest = (progress - self.warmup_frac) / max(1e-9, 1 - self.warmup_frac)
        cos = 0.5 * (1 + math.cos(math.pi * min(1.0, rest)))
        return self.lr * (self.min_lr_frac + (1 - self.min_lr_frac) * cos)


@dataclass(frozen=True)
class QualityConfig(TrainSettings):
    """Quality runs; the training fields are ``TrainSettings``'s."""

    variants: tuple[str, ...] = ()
    # train each variant with each seed (their spread); empty: (seed,)
    seeds: tuple[int, ...] = field(default=(), metadata={"minimum": 0})
    # a learning-rate grid: each variant trained at each rate on the same budget, the best by
    # validation bits per byte reported (every rate's rows kept); empty: (lr,)
    lrs: tuple[float, ...] = ()
    dataset: str = "pystdlib"  # attnbench.quality.data.CORPORA or file:PATH
    data_dir: str = ""  # folder that already holds the corpus files ("" : ATTNBENCH_DATA_DIR)
    val_fraction: float = 0.1  # held-out share of a file:PATH corpus
    # train: train each variant; dropin: evaluate `checkpoint` with each
    mode: str = choice("train", QUALITY_MODES, "mode")
    checkpoint: str = ""  # dropin mode: a checkpoint file
    hf_model: str = ""  # dropin mode: a transformers model folder (save_pretrained) instead
    # train mode: then evaluate the first variant's checkpoint with each variant
    dropin: bool = True
    dropin_variants: tuple[str, ...] = ()  # swapped in for the drop-in table (default: variants)
    eval_lens: tuple[int, ...] = (128, 256, 512)
    eval_split: str = choice("val", EVAL_SPLITS, "split")
    eval_tokens: int = 65536  # bytes of the held-out split scored per length (0: all of it)
    eval_method: str = choice("windows", EVAL_METHODS, "method")
    stride: int = 0  # sliding: bytes between windows (0: eval_len // 2)
    position_buckets: int = 8
    ngram_order: int = 4  # the n-gram floor (0: none)
    copy_probe: bool = True  # bits per byte on the second copy of repeated random bytes
    copy_lens: tuple[int, ...] = ()  # lengths of the repeated string (empty: from eval_lens)
    timeout_s: float = 3600.0  # per trained variant

    def seed_list(self) -> tuple[int, ...]:
        return self.seeds or (self.seed,)

    def lr_list(self) -> tuple[float, ...]:
        return self.lrs or (self.lr,)

    def validate(self) -> None:
        if self.mode == "dropin" and not (self.checkpoint or self.hf_model):
            raise SettingError(
                "checkpoint",
                "dropin mode needs a checkpoint file (or hf_model: a transformers model folder)",
            )
        if self.hf_model and self.mode != "dropin":
            raise SettingError("hf_model", "a transformers model is evaluated in dropin mode only")
        if self.train_len < 2 or self.batch < 1:
            raise SettingError(
                "train_len",
                f"needs train_len >= 2 and batch >= 1 (got {self.train_len}, {self.batch})",
            )
        if not 0 <= self.warmup_frac < 1 or not 0 <= self.min_lr_frac <= 1:
            raise SettingError(
                "warmup_frac", "needs 0 <= warmup_frac < 1 and 0 <= min_lr_frac <= 1"
            )


@dataclass(frozen=True)
class RecallSettings:
    """Multi-query associative recall: the task and how the identical model learns it. The
    defaults are a recipe that learns at CPU scale: the ``recall`` preset (2 layers with a width-3
    short convolution before attention), N = 64, 4, 8 and 16 pairs trained together (without 4 in
    the mix even softmax attention stays on its plateau), a key vocabulary of 64, 800 steps of 32
    sequences: softmax attention then recalls every pair."""

    preset: str = "recall"
    model: dict[str, Any] = field(default_factory=dict, hash=False)  # as TrainSettings.model
    seq_lens: tuple[int, ...] = (64,)
    kv_pairs: tuple[int, ...] = (4, 8, 16)
    key_vocab: int = 64  # distinct keys (and values) to draw from; >= the largest kv; <= 127
    train_steps: int = 800
    batch: int = 32
    lr: float = 3e-3
    min_lr_frac: float = 0.1
    warmup_frac: float = 0.1
    weight_decay: float = 0.0
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 0
    eval_sequences: int = 256

    def grid(self) -> list[tuple[int, int]]:
        """The (seq_len, kv_pairs) settings that fit: the pairs and their queries need 4 * kv."""
        return [(n, kv) for n in self.seq_lens for kv in self.kv_pairs if fits(n, kv)]

    def validate(self) -> None:
        if not self.key_vocab >= max(self.kv_pairs):
            raise SettingError(
                "key_vocab",
                f"{self.key_vocab} is smaller than the largest kv_pairs "
                f"({max(self.kv_pairs)}): the keys of a sequence must be distinct",
            )
        if not self.grid():
            raise SettingError(
                "seq_lens",
                "no (seq_len, kv_pairs) setting fits: "
                f"seq_lens {list(self.seq_lens)}, "
                f"kv_pairs {list(self.kv_pairs)} (needs seq_len >= 4 * kv_pairs)",
            )


def fits(seq_len: int, kv_pairs: int) -> bool:
    return seq_len >= 4 * kv_pairs


def chance(kv_pairs: int) -> float:
    """Recall accuracy of guessing among the values in the sequence: 1 / kv."""
    return 1.0 / kv_pairs


NEAR_CHANCE = 1.5  # an accuracy below this multiple of chance is reported as chance, not a finding


@dataclass(frozen=True)
class RecallConfig(RecallSettings):
    """Recall runs; the fields are ``RecallSettings``'s."""

    # a learning-rate grid (Zoology takes the best of a grid per point): each variant trained at
    # each rate, the best by mean accuracy reported (every rate's rows kept); empty: (lr,)
    lrs: tuple[float, ...] = ()

    def lr_list(self) -> tuple[float, ...]:
        return self.lrs or (self.lr,)

    variants: tuple[str, ...] = ()
    timeout_s: float = 1800.0  # per trained variant


@dataclass(frozen=True)
class TimingConfig:
    """How op and model cases are measured."""

    warmup: int = 1  # untimed calls of the same pass after the first (compiling) one; >= 1
    budget_s: float = 0.5  # time spent repeating each case (a median over 0.3 s moved 5-18 %
    #   between repeats at N = 1024 on a shared 2-core VM; the standard and perf suites take 0.5)
    min_reps: int = 5  # timed repetitions at least (and the budget, whichever is more)
    max_reps: int = 50
    timeout_s: float = 300.0  # a case running longer is killed and recorded as `timeout`
    threads: int = 0  # torch threads of the timing worker (0: one on a CPU, PyTorch's default
    #   on CUDA; training always takes PyTorch's default when 0)
    repeats: int = 1  # measure each case this many times
    gate: bool = True  # check every timed pass against the float64 reference first
    gate_rows: int = 48  # query rows compared per gate (first, last and spread rows)
    memory: bool = True  # measure peak memory (on the CPU in a separate worker process)
    noisy: float = 0.10  # a row whose p20-p80 spread exceeds this share of its median is noisy
    ceiling_s: float = 2.0  # seconds of matmul repetitions per ceiling measurement
    # re-measure the ceilings once they are this old (0: only at the start and the end), so
    # each row's fraction divides by the measurement nearest in time to it
    ceiling_every_s: float = field(default=120.0, metadata={"minimum": 0})
    # environment of the timing worker, the same for every variant and the ceiling, recorded in
    # every row (e.g. THP_MEM_ALLOC_ENABLE = "1": PyTorch's CPU allocator on 2 MiB pages)
    env: dict[str, str] = field(default_factory=dict, hash=False)
    # CPU timing worker's heap: "keep" holds freed memory for the next call (glibc never maps a
    # block apart nor trims the heap: ``measure.KEEP_HEAP_ENV``), as CUDA's caching allocator and
    # the jemalloc/tcmalloc of PyTorch's CPU tuning guide do, so a timed call does not pay the
    # kernel zeroing fresh pages, which varied 10-30 % between repeats of the N x N materialisers;
    # "return": glibc's defaults. The memory worker always returns (peak RSS per case).
    cpu_heap: str = choice("keep", ("keep", "return"), "cpu_heap")
    # CUDA: zero a buffer larger than L2 before each repetition; replay the pass as a CUDA
    # graph; seconds of idle GPU between variants
    l2_flush: bool = True
    cuda_graphs: bool = False
    cooldown_s: float = 0.0

    def validate(self) -> None:
        if (
            self.min_reps < 5
            or self.max_reps < self.min_reps
            or self.repeats < 1
            or self.warmup < 1
        ):
            raise SettingError(
                "min_reps",
                f"needs warmup >= 1 untimed call of the timed pass, 5 <= min_reps <= "
                f"max_reps and repeats >= 1 (got warmup={self.warmup}, min_reps={self.min_reps}, "
                f"max_reps={self.max_reps}, repeats={self.repeats})",
            )
