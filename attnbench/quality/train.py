"""Quality: train the identical model per variant on the same budget, then evaluate it.

    settings = TrainSettings(preset="tiny", train_len=256, batch=16, train_tokens=2_000_000)
    result = train(corpus.split("train"), "sliding_window.blocked:window=64", settings)
    evaluate(result.model, corpus.split("val"), eval_len=512)      # bits per byte, by position

Everything but the attention variant is fixed by the settings and the seed: the model config,
the initial weights, the data order (batch ``i`` from ``seed`` and ``i`` alone, whatever the
number of processes), the optimizer and its schedule, and the budget (``train_tokens``, or with
``train_seconds`` the same wall-clock time, the schedule then following elapsed time). Under
``torchrun`` it is the one-process optimisation up to float rounding. ``evaluate`` scores float32
negative log-likelihoods on ``windows`` (non-overlapping) or ``sliding`` windows (every
``stride`` bytes, each byte scored once), overall and by position bucket. The recipe in full:
``docs/quality-and-recall.md``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from attnbench.model import ModelConfig, TransformerLM
from attnbench.settings import EVAL_METHODS, TrainSettings

LN2 = math.log(2.0)
__all__ = ["EVAL_METHODS", "TrainSettings", "train", "evaluate", "build_model", "optimizer_step"]


@dataclass
class TrainResult:
    model: TransformerLM
    status: str  # ok | diverged
    reason: str
    steps: int
    tokens: int
    seconds: float
    final_loss: float  # mean training loss (nats) over the last logged interval
    curve: list = field(default_factory=list)  # [[step, tokens, seconds, loss, lr], ...]
    data_parallel: str = ""  # "ddp, nccl, world 1" when trained under a process group

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else float("nan")


def batch_offsets(n_bytes: int, length: int, batch: int, seed: int, step: int) -> np.ndarray:
    """Start offsets of batch ``step``: a function of (seed, step) only, the same for every
    variant and every number of processes."""
    rng = np.random.default_rng([seed, step])
    return rng.integers(0, n_bytes - length - 1, size=batch)


def get_batch(
    data: np.ndarray, offsets: np.ndarray, length: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    idx = offsets[:, None] + np.arange(length + 1)[None, :]
    chunk = torch.from_numpy(data[idx].astype(np.int64)).to(device)
    return chunk[:, :-1], chunk[:, 1:]


def build_model(
    preset: str, variant: str, seed: int, device, shape: dict | None = None
) -> TransformerLM:
    """The identical model: ``preset`` with the suite's ``shape`` fields on top, the same initial
    weights for every variant (``seed``)."""
    torch.manual_seed(seed)  # identical initial weights for every variant
    return TransformerLM(ModelConfig.from_name(preset, **(shape or {})), attention=variant).to(
        device
    )


def _optimizer(model: torch.nn.Module, s: TrainSettings) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": s.weight_decay}, {"params": other, "weight_decay": 0.0}],
        lr=s.lr,
        betas=(0.9, s.beta2),
    )


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def optimizer_step(
    net,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    lr: float,
    grad_clip: float,
) -> torch.Tensor:
    """One step of the shared recipe at learning rate ``lr``: cross-entropy of ``net(x)`` against
    ``y`` (targets of -100 are ignored), gradients clipped to ``grad_clip`` over ``model``'s
    parameters (``net`` may wrap ``model``, e.g. in DDP), AdamW. Returns the detached loss."""
    for group in opt.param_groups:
        group["lr"] = lr
    with _autocast(x.device):
        logits = net(x)
    loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss.detach()


def train(
    data: np.ndarray,
    variant: str,
    s: TrainSettings,
    device="cpu",
    *,
    rank: int = 0,
    world: int = 1,
    on_log: Callable[[list], None] | None = None,
) -> TrainResult:
    """Train the identical model with attention ``variant`` on ``data`` (uint8 train split)."""
    device = torch.device(device)
    if len(data) < s.train_len + 2:
        raise ValueError(
            f"training split of {len(data)} bytes is shorter than train_len={s.train_len}"
        )
    if s.batch % world:
        raise ValueError(f"batch={s.batch} must be divisible by the number of processes ({world})")
    model = build_model(s.preset, variant, s.seed, device, s.model)
    net = model
    data_parallel = ""
    if distributed():  # DDP whenever a process group is up: with one process it still all-reduces
        import torch.distributed as dist

        net = torch.nn.parallel.DistributedDataParallel(model)
        data_parallel = f"ddp, {dist.get_backend()}, world {dist.get_world_size()}"
    opt = _optimizer(model, s)
    model.train()
    budget_s = s.train_seconds
    total_steps = s.steps
    step, tokens, start = 0, 0, time.perf_counter()
    curve: list = []
    window: list[float] = []
    status, reason = "ok", ""
    while True:
        elapsed = time.perf_counter() - start
        if budget_s > 0:
            if _agree_done(elapsed >= budget_s, world, device):
                break
            progress = elapsed / budget_s
        else:
            if step >= total_steps:
                break
            progress = step / total_steps
        lr = s.lr_at(progress)
        offsets = batch_offsets(len(data), s.train_len, s.batch, s.seed, step)[rank::world]
        x, y = get_batch(data, offsets, s.train_len, device)
        loss = optimizer_step(net, model, opt, x, y, lr, s.grad_clip)
        value = _mean_over_processes(loss, world)
        step += 1
        tokens += s.batch * s.train_len
        if not math.isfinite(value):
            status, reason = "diverged", f"training loss became {value} at step {step}"
            curve.append([step, tokens, round(time.perf_counter() - start, 3), value, lr])
            break
        window.append(value)
        if step % s.log_every == 0 or (budget_s <= 0 and step == total_steps):
            point = [
                step,
                tokens,
                round(time.perf_counter() - start, 3),
                float(np.mean(window)),
                lr,
            ]
            curve.append(point)
            window = []
            if on_log:
                on_log(point)
    if window:
        curve.append(
            [step, tokens, round(time.perf_counter() - start, 3), float(np.mean(window)), lr]
        )
    seconds = time.perf_counter() - start
    model.eval()
    final = curve[-1][3] if curve else float("nan")
    return TrainResult(model, status, reason, step, tokens, seconds, final, curve, data_parallel)


def distributed() -> bool:
    """Whether a process group is initialised (torchrun): then training uses DDP and the
    collectives, whatever the world size."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _mean_over_processes(value: torch.Tensor, world: int) -> float:
    if distributed():
        import torch.distributed as dist

        value = value.clone()
        dist.all_reduce(value)
        value /= world
    return value.item()


def _agree_done(done: bool, world: int, device: torch.device) -> bool:
    """With a wall-clock budget, every process stops at the same step (rank 0's clock decides).
    The flag lives on the training device: NCCL broadcasts CUDA tensors only."""
    if not distributed():
        return done
    import torch.distributed as dist

    flag = torch.tensor([1 if done else 0], device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def eval_windows(n_bytes: int, eval_len: int, method: str, stride: int, max_targets: int):
    """(start, first scored position) of each evaluation window over a split of ``n_bytes``."""
    if method not in EVAL_METHODS:
        raise ValueError(f"unknown eval method {method!r}; valid: {', '.join(EVAL_METHODS)}")
    if n_bytes < eval_len + 1:
        raise ValueError(
            f"held-out split of {n_bytes} bytes is shorter than eval_len={eval_len} + 1"
        )
    limit = n_bytes - 1 if max_targets <= 0 else min(n_bytes - 1, max_targets)
    out = []
    if method == "windows":
        for start in range(0, limit - eval_len + 1, eval_len):
            out.append((start, 0))
        return out
    if not 0 < stride <= eval_len:
        raise ValueError(f"sliding evaluation needs 0 < stride <= eval_len, got stride={stride}")
    out.append((0, 0))
    scored = eval_len
    start = stride
    while start + eval_len <= n_bytes - 1 and scored + stride <= limit:
        out.append((start, eval_len - stride))
        scored += stride
        start += stride
    return out


@torch.no_grad()
def evaluate(
    model: TransformerLM,
    data: np.ndarray,
    eval_len: int,
    *,
    method: str = "windows",
    stride: int = 0,
    max_targets: int = 0,
    batch: int = 8,
    buckets: int = 8,
) -> dict[str, Any]:
    """Bits per byte of ``model`` on ``data`` at context length ``eval_len``.

    Returns nll (nats per byte), bits_per_byte, ppl (per byte), targets scored, windows, and
    ``position_bpb``: bits per byte in ``buckets`` equal position ranges of the window."""
    device = next(model.parameters()).device
    stride = stride or max(1, eval_len // 2)
    wins = eval_windows(len(data), eval_len, method, stride, max_targets)
    buckets = max(1, min(buckets, eval_len))
    edges = np.linspace(0, eval_len, buckets + 1).astype(int)
    bucket_of = np.searchsorted(edges, np.arange(eval_len), side="right") - 1
    bucket_nll = np.zeros(buckets)
    bucket_n = np.zeros(buckets)
    total, count = 0.0, 0
    model.eval()
    for i in range(0, len(wins), batch):
        group = wins[i : i + batch]
        offsets = np.array([w[0] for w in group])
        x, y = get_batch(data, offsets, eval_len, device)
        with _autocast(device):
            logits = model(x)
        nll = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")
        nll = nll.view(len(group), eval_len).double().cpu().numpy()
        for row, (_, first) in zip(nll, group):
            scored = row[first:]
            total += float(scored.sum())
            count += scored.size
            np.add.at(bucket_nll, bucket_of[first:], scored)
            np.add.at(bucket_n, bucket_of[first:], 1)
    mean = total / count
    with np.errstate(invalid="ignore", divide="ignore"):
        pos = np.where(bucket_n > 0, bucket_nll / np.maximum(bucket_n, 1) / LN2, np.nan)
    return {
        "nll": mean,
        "bits_per_byte": mean / LN2,
        "ppl": math.exp(mean),
        "eval_targets": count,
        "eval_windows": len(wins),
        "eval_method": method if method == "windows" else f"sliding:stride={stride}",
        "position_edges": edges.tolist(),
        "position_bpb": [None if not math.isfinite(v) else v for v in pos],
        "finite": math.isfinite(mean),
    }


# ---------------------------------------------------------------------------------------------
# Checkpoints: plain tensors and plain data, loadable with torch.load(weights_only=True).


def save_checkpoint(path: str | Path, model: TransformerLM, meta: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": "attnbench-lm-1",
        "config": asdict(model.cfg),
        "attention": model.attention,
        "meta": meta,
        "state_dict": model.state_dict(),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(
    path: str | Path, device="cpu", attention: str | None = None
) -> tuple[TransformerLM, dict]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    payload = torch.load(path, map_location=device, weights_only=True)
    if payload.get("format") != "attnbench-lm-1":
        raise ValueError(
            f"{path} is not an attnbench checkpoint (format {payload.get('format')!r})"
        )
    model = TransformerLM(
        ModelConfig(**payload["config"]), attention=attention or payload["attention"]
    )
    model.load_state_dict(payload["state_dict"])
    model.to(device).eval()
    return model, payload


def checkpoint_name(variant_label: str, seed: int = 0, lr: float = 0.0) -> str:
    """A file name for a variant label, seed and (a grid's) learning rate (``:``, ``=`` and
    ``,`` are not portable in file names)."""
    safe = variant_label.replace(":", "__").replace("=", "-").replace(",", "_").replace("/", "_")
    return f"{safe}__s{seed}" + (f"__lr{lr:g}" if lr else "") + ".pt"


@torch.no_grad()
def copy_probe(
    model: TransformerLM, length: int, *, sequences: int = 16, seed: int = 0, batch: int = 8
) -> dict[str, float]:
    """In-context copying on a trained language model: random printable bytes of ``length``,
    then the same bytes again; bits per byte on the second copy (a model that looks back
    ``length`` tokens can copy it: near 0) and on the first (unpredictable: near log2(95)).
    Attention that cannot reach ``length`` tokens back (a narrower window) or that blurs the
    past into a fixed-size state pays the difference."""
    device = next(model.parameters()).device
    rng = np.random.default_rng([seed, 7919, length])
    text = rng.integers(32, 127, size=(sequences, length))
    seqs = torch.from_numpy(np.concatenate([text, text], axis=1)).to(device)  # (S, 2L)
    firsts, seconds = [], []
    model.eval()
    for i in range(0, sequences, batch):
        x = seqs[i : i + batch]
        with _autocast(device):
            logits = model(x[:, :-1])
        nll = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten(), reduction="none")
        nll = nll.view(x.shape[0], -1) / LN2  # target j + 1 for input position j
        firsts.append(nll[:, : length - 1])
        seconds.append(nll[:, length - 1 :])
    return {
        "copy_bpb": float(torch.cat(seconds).mean()),
        "first_copy_bpb": float(torch.cat(firsts).mean()),
    }
