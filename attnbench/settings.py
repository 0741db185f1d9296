"""Settings: the frozen dataclasses of a suite's sections, one per component.

    [op] -> OpConfig        [model] -> ModelLevelConfig     [timing] -> TimingConfig
    [quality] -> QualityConfig (a TrainSettings)
    [recall] -> RecallConfig (a RecallSettings)

They are plain data: ``attnbench.bench.suite`` reads them from TOML and validates them, the
training code (``attnbench.quality``) and the harness (``attnbench.bench``) read them. One comment
per field says what it is. Nothing here imports the rest of the package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

EVAL_METHODS = ("windows", "sliding")
QUALITY_MODES = ("train", "dropin")


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
    dtypes: tuple[str, ...] = ("float32",)
    passes: tuple[str, ...] = ("fwd", "fwd_bwd", "decode")  # fwd | bwd | fwd_bwd | decode
    causal: tuple[bool, ...] = (True,)

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
    dtypes: tuple[str, ...] = ("float32",)
    passes: tuple[str, ...] = ("train_step", "prefill", "decode")


@dataclass(frozen=True)
class TrainSettings:
    """How the identical model is trained: the same for every variant."""

    preset: str = "tiny"
    train_len: int = 256  # training sequence length
    batch: int = 16  # global batch (sequences per optimizer step)
    train_tokens: int = 1_000_000  # token budget (ignored when train_seconds > 0)
    train_seconds: float = 0.0  # > 0: a wall-clock budget instead
    lr: float = 3e-3  # peak learning rate
    min_lr_frac: float = 0.1  # cosine decays to lr * min_lr_frac
    warmup_frac: float = 0.05  # linear warm-up, fraction of the budget
    weight_decay: float = 0.1  # AdamW, on matrices only
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
    dataset: str = "pystdlib"  # attnbench.quality.data.CORPORA or file:PATH
    data_dir: str = ""  # folder that already holds the corpus files ("" : ATTNBENCH_DATA_DIR)
    val_fraction: float = 0.1  # held-out share of a file:PATH corpus
    mode: str = "train"  # train: train each variant; dropin: evaluate `checkpoint` with each
    checkpoint: str = ""  # dropin mode: a checkpoint file
    hf_model: str = ""  # dropin mode: a transformers model folder (save_pretrained) instead
    # train mode: then evaluate the first variant's checkpoint with each variant
    dropin: bool = True
    dropin_variants: tuple[str, ...] = ()  # swapped in for the drop-in table (default: variants)
    eval_lens: tuple[int, ...] = (128, 256, 512)
    eval_split: str = "val"
    eval_tokens: int = 65536  # bytes of the held-out split scored per length (0: all of it)
    eval_method: str = "windows"  # windows | sliding
    stride: int = 0  # sliding: bytes between windows (0: eval_len // 2)
    position_buckets: int = 8
    ngram_order: int = 4  # the n-gram floor (0: none)
    copy_probe: bool = True  # bits per byte on the second copy of repeated random bytes
    copy_lens: tuple[int, ...] = ()  # lengths of the repeated string (empty: from eval_lens)
    timeout_s: float = 3600.0  # per trained variant

    def seed_list(self) -> tuple[int, ...]:
        return self.seeds or (self.seed,)


@dataclass(frozen=True)
class RecallSettings:
    """Multi-query associative recall: the task and how the identical model learns it. The
    defaults are a recipe that learns at CPU scale: the ``recall`` preset (2 layers with a width-3
    short convolution before attention), N = 64, 4, 8 and 16 pairs trained together (without 4 in
    the mix even softmax attention stays on its plateau), a key vocabulary of 64, 800 steps of 32
    sequences: softmax attention then recalls every pair."""

    preset: str = "recall"
    seq_lens: tuple[int, ...] = (64,)
    kv_pairs: tuple[int, ...] = (4, 8, 16)
    key_vocab: int = 64  # distinct keys (and values) to draw from; >= the largest kv; <= 127
    train_steps: int = 800
    batch: int = 32
    lr: float = 3e-3
    min_lr_frac: float = 0.1
    warmup_frac: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    eval_sequences: int = 256

    def grid(self) -> list[tuple[int, int]]:
        """The (seq_len, kv_pairs) settings that fit: the pairs and their queries need 4 * kv."""
        return [(n, kv) for n in self.seq_lens for kv in self.kv_pairs if fits(n, kv)]


def fits(seq_len: int, kv_pairs: int) -> bool:
    return seq_len >= 4 * kv_pairs


def chance(kv_pairs: int) -> float:
    """Recall accuracy of guessing among the values in the sequence: 1 / kv."""
    return 1.0 / kv_pairs


NEAR_CHANCE = 1.5  # an accuracy below this multiple of chance is reported as chance, not a finding


@dataclass(frozen=True)
class RecallConfig(RecallSettings):
    """Recall runs; the fields are ``RecallSettings``'s."""

    variants: tuple[str, ...] = ()
    timeout_s: float = 1800.0  # per trained variant


@dataclass(frozen=True)
class TimingConfig:
    """How op and model cases are measured."""

    warmup: int = 1  # untimed calls of the same pass after the first (compiling) one; >= 1
    budget_s: float = 0.3  # time spent repeating each case
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
    # CUDA: zero a buffer larger than L2 before each repetition; replay the pass as a CUDA
    # graph; seconds of idle GPU between variants
    l2_flush: bool = True
    cuda_graphs: bool = False
    cooldown_s: float = 0.0
