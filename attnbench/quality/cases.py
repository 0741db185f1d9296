"""Cases of the ``[quality]`` and ``[recall]`` suite sections: planning them, and running one.

A quality run plans, in order: the n-gram floor (one ``fit`` case), one ``train`` case per
(variant, seed) (train, save the checkpoint, evaluate at every length), then, with ``dropin``,
one ``dropin`` case per variant (the first variant's first-seed checkpoint evaluated with that
variant swapped in). A recall run plans one case per variant (train on MQAR, then accuracy on
every setting).

Every case returns its main row and a list of ``rows`` (one per evaluation length or recall
setting); the launcher writes them all to ``results.jsonl``. The same functions run inside the
benchmark worker and, under ``torchrun``, in each training process.
"""

from __future__ import annotations

import functools
import math
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnbench.case import Case, QualityCase, RecallCase
from attnbench.model import ModelConfig, model_shape
from attnbench.quality import data as data_mod
from attnbench.quality.precheck import check_in_model, future_leak
from attnbench.quality.recall import accuracy, train_recall
from attnbench.quality.train import (
    LN2,
    checkpoint_name,
    copy_probe,
    evaluate,
    load_checkpoint,
    save_checkpoint,
    train,
)
from attnbench.registry import get_variant
from attnbench.settings import (
    NEAR_CHANCE,
    QualityConfig,
    RecallConfig,
    RecallSettings,
    TrainSettings,
    chance,
)

CHECKPOINT_DIR = "checkpoints"


def _budget(cfg: QualityConfig) -> str:
    return f"{cfg.train_seconds:g}s" if cfg.train_seconds > 0 else f"{cfg.train_tokens}tok"


def _variant_fields(spec: str) -> dict[str, Any]:
    return get_variant(spec).case_fields


def _settings(cls, cfg) -> Any:
    """The ``cls`` part of a suite section (a QualityConfig is a TrainSettings plus more)."""
    return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})


def plan_quality(cfg: QualityConfig, device: str) -> list[QualityCase]:
    model = ModelConfig.from_name(cfg.preset, **cfg.model)
    cuda = device.startswith("cuda")
    common = dict(
        dataset=cfg.dataset,
        preset=cfg.preset,
        train_len=cfg.train_len,
        batch=cfg.batch,
        train_tokens=cfg.train_tokens,
        train_seconds=cfg.train_seconds,
        budget=_budget(cfg),
        heads=model.n_heads,
        kv_heads=model.kv_heads,
        head_dim=model.head_dim,
        autocast=cuda,
        device=device,
        seq_len=cfg.train_len,
        eval_lens=tuple(cfg.eval_lens),
        eval_split=cfg.eval_split,
    )
    seeds = cfg.seed_list()
    cases = []
    if cfg.ngram_order > 0:
        cases.append(
            QualityCase(
                **common,
                variant=f"ngram:order={cfg.ngram_order}",
                family="baseline",
                math="ngram",
                impl="kneser_ney",
                pass_="fit",
                seed=seeds[0],
            )
        )
    # with a grid every case names its rate (0: the section's lr, and ids as without a grid)
    lrs = cfg.lrs or (0.0,)
    if cfg.mode == "train":
        for spec in cfg.variants:
            label = get_variant(spec).label
            cases += [
                QualityCase(
                    **common,
                    **_variant_fields(spec),
                    pass_="train",
                    seed=s,
                    lr=lr,
                    checkpoint=f"{CHECKPOINT_DIR}/{checkpoint_name(label, s, lr)}",
                )
                for s in seeds
                for lr in lrs
            ]
        if cfg.dropin:  # the first variant's checkpoint at the first seed (and grid rate)
            trained = get_variant(cfg.variants[0]).label
            ckpt = f"{CHECKPOINT_DIR}/{checkpoint_name(trained, seeds[0], lrs[0])}"
            cases += [
                QualityCase(
                    **common,
                    **_variant_fields(spec),
                    pass_="dropin",
                    seed=seeds[0],
                    trained_variant=trained,
                    checkpoint=ckpt,
                )
                for spec in cfg.dropin_variants or cfg.variants
            ]
    elif cfg.hf_model:  # a transformers model, trained with its own attention
        heads, kv, d = model_shape(f"hf:{cfg.hf_model}")
        folder = str(Path(cfg.hf_model).resolve())
        hf_common = dict(common, preset=f"hf:{folder}", heads=heads, kv_heads=kv, head_dim=d)
        cases += [
            QualityCase(
                **hf_common,
                **_variant_fields(spec),
                pass_="dropin",
                seed=seeds[0],
                trained_variant="transformers:sdpa",
                checkpoint=folder,
            )
            for spec in cfg.dropin_variants or cfg.variants
        ]
    else:
        trained = _checkpoint_attention(cfg.checkpoint)
        ckpt = str(Path(cfg.checkpoint).resolve())
        cases += [
            QualityCase(
                **common,
                **_variant_fields(spec),
                pass_="dropin",
                seed=seeds[0],
                trained_variant=trained,
                checkpoint=ckpt,
            )
            for spec in cfg.dropin_variants or cfg.variants
        ]
    return cases


def _checkpoint_attention(path: str) -> str:
    if not Path(path).is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    return torch.load(path, map_location="cpu", weights_only=True)["attention"]


def plan_recall(cfg: RecallConfig, device: str) -> list[RecallCase]:
    model = ModelConfig.from_name(cfg.preset, **cfg.model)
    return [
        RecallCase(
            **_variant_fields(spec),
            preset=cfg.preset,
            batch=cfg.batch,
            seq_len=max(n for n, _ in cfg.grid()),
            heads=model.n_heads,
            kv_heads=model.kv_heads,
            head_dim=model.head_dim,
            autocast=device.startswith("cuda"),
            device=device,
            train_steps=cfg.train_steps,
            seed=cfg.seed,
            seq_lens=tuple(cfg.seq_lens),
            kv_pairs_list=tuple(cfg.kv_pairs),
            key_vocab=cfg.key_vocab,
            lr=lr,
        )
        for spec in cfg.variants
        for lr in cfg.lrs or (0.0,)
    ]


@functools.lru_cache(maxsize=2)
def _corpus(name: str, data_dir: str, val_fraction: float) -> data_mod.Corpus:
    return data_mod.load_corpus(name, data_dir=data_dir or None, val_fraction=val_fraction)


def corpus_for(cfg: QualityConfig) -> data_mod.Corpus:
    return _corpus(cfg.dataset, cfg.data_dir, cfg.val_fraction)


def _part(case, suffix: str, **fields_) -> dict[str, Any]:
    """A row of one part of ``case`` (an evaluation length, a recall setting)."""
    return {**case.row(), "case_id": f"{case.case_id}|{suffix}", **fields_}


def _eval_rows(
    model, held_out: np.ndarray, cfg: QualityConfig, case: QualityCase, order0: float
) -> list[dict]:
    rows = []
    pass_ = "eval" if case.pass_ == "train" else case.pass_
    for n in cfg.eval_lens:
        e = evaluate(
            model,
            held_out,
            n,
            method=cfg.eval_method,
            stride=cfg.stride,
            max_targets=cfg.eval_tokens,
            buckets=cfg.position_buckets,
        )
        rows.append(
            _part(
                case,
                f"eval{n}",
                **{"pass": pass_},
                seq_len=n,
                eval_len=n,
                status="ok" if e["finite"] else "diverged",
                reason="" if e["finite"] else "non-finite loss",
                bits_per_byte=e["bits_per_byte"],
                ppl=e["ppl"],
                nll=e["nll"],
                eval_method=e["eval_method"],
                eval_targets=e["eval_targets"],
                position_edges=e["position_edges"],
                position_bpb=e["position_bpb"],
                order0_bpb=order0,
            )
        )
    return rows


def _copy_rows(model, cfg: QualityConfig, case: QualityCase) -> list[dict]:
    """The in-context copy probe of a trained model (see ``train.copy_probe``)."""
    if not cfg.copy_probe:
        return []
    rows = []
    for n in cfg.copy_lens or tuple(sorted({max(8, x // 2) for x in cfg.eval_lens})):
        p = copy_probe(model, n, seed=case.seed)
        rows.append(
            _part(
                case,
                f"copy{n}",
                **{"pass": "copy"},
                seq_len=2 * n,
                copy_len=n,
                status="ok",
                reason="",
                probe="copy",
                **p,
            )
        )
    return rows


def run_quality_case(
    case: QualityCase, cfg: QualityConfig, run_dir: str | Path, *, rank: int = 0, world: int = 1
) -> dict[str, Any]:
    """One quality case -> {status, ..., "rows": [per evaluation length]}."""
    corpus = corpus_for(cfg)
    train_split, held_out = corpus.split("train"), corpus.split(cfg.eval_split)
    order0 = data_mod.unigram_entropy_bits(train_split, held_out)
    device = torch.device(case.device)
    if case.family == "baseline":
        from attnbench.quality.ngram import ByteNGram

        ngram = ByteNGram(cfg.ngram_order).fit(train_split)
        rows = []
        for n in cfg.eval_lens:
            limit = cfg.eval_tokens if cfg.eval_tokens > 0 else len(held_out) - 1
            windows = min(len(held_out) - 1, limit) // n
            nll = ngram.nll(held_out[: windows * n + 1], window=n)
            mean = float(nll.mean())
            rows.append(
                _part(
                    case,
                    f"eval{n}",
                    **{"pass": "eval"},
                    seq_len=n,
                    eval_len=n,
                    status="ok",
                    reason="",
                    bits_per_byte=mean / LN2,
                    ppl=math.exp(mean),
                    nll=mean,
                    eval_targets=int(nll.size),
                    eval_method="windows",
                    order0_bpb=order0,
                )
            )
        return {
            "status": "ok",
            "reason": "",
            "order0_bpb": order0,
            "dataset_sha256": corpus.sha256,
            "rows": rows,
        }
    if not case.preset.startswith("hf:"):  # the gate before any number: causal, and right
        why = check_in_model(
            case.preset or cfg.preset, case.variant, cfg.train_len, device, shape=cfg.model
        )
        if why:
            return _incorrect(case, cfg, why, order0)
    if case.pass_ == "train":
        settings = replace(_settings(TrainSettings, cfg), seed=case.seed, lr=case.lr or cfg.lr)
        result = train(train_split, case.variant, settings, device, rank=rank, world=world)
        main = {
            "status": result.status,
            "reason": result.reason,
            "train_steps": result.steps,
            "tokens_trained": result.tokens,
            "train_s": round(result.seconds, 3),
            "data_parallel": result.data_parallel,
            "tokens_per_s": result.tokens_per_s,
            "final_train_loss": result.final_loss,
            "final_train_bpb": result.final_loss / LN2,
            "loss_curve": result.curve,
            "curve_fields": ["step", "tokens", "seconds", "loss", "lr"],
            "order0_bpb": order0,
            "dataset_sha256": corpus.sha256,
            "model_params": result.model.cfg.num_params(),
        }
        if rank != 0:  # data-parallel training: process 0 saves and evaluates
            return {**main, "rows": []}
        save_checkpoint(
            Path(run_dir) / case.checkpoint,
            result.model,
            {
                "dataset": cfg.dataset,
                "dataset_sha256": corpus.sha256,
                "settings": {f.name: getattr(settings, f.name) for f in fields(settings)},
                "status": result.status,
                "steps": result.steps,
            },
        )
        if result.status != "ok":
            rows = [
                _part(
                    case,
                    f"eval{n}",
                    **{"pass": "eval"},
                    seq_len=n,
                    eval_len=n,
                    status=result.status,
                    reason=result.reason,
                )
                for n in cfg.eval_lens
            ]
        else:
            rows = _eval_rows(result.model, held_out, cfg, case, order0)
            rows += _copy_rows(result.model, cfg, case)
        return {**main, "rows": rows}
    # drop-in: the trained checkpoint, evaluated with its own attention and with this variant
    if case.preset.startswith("hf:"):
        model, data, per_byte, meta = _hf_dropin_model(case, cfg, held_out, device)
        why = _hf_leak(model, cfg, device)
        if why:
            own_attention = model.model.config._attn_implementation
            return _incorrect(
                case, cfg, f"the model's own attention ({own_attention}) {why}", order0
            )
    else:
        path = Path(case.checkpoint)
        if not path.is_absolute():
            path = Path(run_dir) / path
        model, payload = load_checkpoint(path, device)
        data, per_byte = held_out, 1.0
        meta = {"checkpoint_dataset_sha256": payload["meta"].get("dataset_sha256")}
    own = {
        n: evaluate(
            model,
            data,
            n,
            method=cfg.eval_method,
            stride=cfg.stride,
            max_targets=cfg.eval_tokens,
            buckets=cfg.position_buckets,
        )["bits_per_byte"]
        for n in cfg.eval_lens
    }
    model.set_attention(case.variant)
    if case.preset.startswith("hf:"):  # the gate of a transformers model: causal with the
        # variant, and with its own attention (the reference the drop-in is compared with)
        why = _hf_leak(model, cfg, device)
        if why:
            return _incorrect(case, cfg, why, order0)
    rows = _eval_rows(model, data, cfg, case, order0)
    for row in rows:
        ref = own[row["eval_len"]]
        if per_byte != 1.0:  # tokens of the model's own tokenizer: per token, and per byte
            row.update(
                unit="token",
                bits_per_token=row["bits_per_byte"],
                trained_bpt=ref,
                bits_per_byte=row["bits_per_byte"] * per_byte,
            )
            ref *= per_byte
        row["trained_bpb"] = ref
        if row.get("bits_per_byte") is not None:
            # signed: above 0 the swapped-in variant is worse (more bits per byte), below better
            row["rel_diff"] = (row["bits_per_byte"] - ref) / ref
    return {
        "status": "ok",
        "reason": "",
        "order0_bpb": order0,
        "dataset_sha256": corpus.sha256,
        **meta,
        "rows": rows,
    }


class _HFLogits(torch.nn.Module):
    """A transformers causal LM as ``idx -> logits`` with ``set_attention`` (what evaluation and
    the drop-in swap ask of a model)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, idx):
        return self.model(idx, use_cache=False).logits

    def set_attention(self, spec) -> None:
        from attnbench import hf

        hf.use_variant(self.model, spec)


def _incorrect(case: QualityCase, cfg: QualityConfig, why: str, order0) -> dict:
    return {
        "status": "incorrect",
        "reason": why,
        "order0_bpb": order0,
        "rows": [
            _part(
                case,
                f"eval{n}",
                **{"pass": "eval"},
                seq_len=n,
                eval_len=n,
                status="incorrect",
                reason=why,
            )
            for n in cfg.eval_lens
        ],
    }


def _hf_leak(model: _HFLogits, cfg: QualityConfig, device) -> str | None:
    """The future-leak test of a transformers model with the attention it now runs, at the
    longest evaluation length (capped at the model's positions)."""
    conf = model.model.config
    n = min(max(cfg.eval_lens), getattr(conf, "max_position_embeddings", 1 << 30))
    return future_leak(model, conf.vocab_size, n, device)


def _hf_dropin_model(case: QualityCase, cfg: QualityConfig, held_out: np.ndarray, device):
    """The transformers model of a drop-in case and the held-out data it reads: the bytes (a
    byte-level model, vocabulary >= 256, no tokenizer) or the tokens of its own tokenizer, with
    the tokens per byte of that text (bits per token -> bits per byte)."""
    from attnbench import hf

    model = hf.load(case.checkpoint).to(device)
    tok = hf.tokenizer_of(case.checkpoint)
    meta = {"model_kind": "transformers", "tokenizer": bool(tok)}
    if tok is None:
        if model.config.vocab_size < 256:
            raise ValueError(
                f"{case.checkpoint}: no tokenizer and a vocabulary of "
                f"{model.config.vocab_size} < 256: cannot score bytes"
            )
        return _HFLogits(model), held_out, 1.0, meta
    text = (
        held_out[: max(cfg.eval_tokens, 1) * 8 + 1].tobytes()
        if cfg.eval_tokens
        else held_out.tobytes()
    )
    ids = np.asarray(tok(text.decode("utf-8", errors="replace"))["input_ids"], dtype=np.int64)
    meta["tokens_per_byte"] = len(ids) / len(text)
    return _HFLogits(model), ids, len(ids) / len(text), meta


def run_recall_case(case: RecallCase, cfg: RecallConfig) -> dict[str, Any]:
    settings = replace(_settings(RecallSettings, cfg), lr=case.lr or cfg.lr)
    n = max(n for n, _ in settings.grid())
    why = check_in_model(cfg.preset, case.variant, n, case.device, shape=cfg.model)
    if why:  # no recall number for a variant that sees the answer
        return {
            "status": "incorrect",
            "reason": why,
            "rows": [
                _part(
                    case,
                    f"N{n}-kv{kv}",
                    **{"pass": "eval"},
                    seq_len=n,
                    kv_pairs=kv,
                    chance=chance(kv),
                    status="incorrect",
                    reason=why,
                )
                for n, kv in settings.grid()
            ],
        }
    result = train_recall(case.variant, settings, case.device)
    main = {
        "status": result.status,
        "reason": result.reason,
        "train_steps": result.steps,
        "train_s": round(result.seconds, 3),
        "final_train_loss": result.final_loss,
    }
    rows = []
    for n, kv in settings.grid():
        row = _part(
            case,
            f"N{n}-kv{kv}",
            **{"pass": "eval"},
            seq_len=n,
            kv_pairs=kv,
            chance=chance(kv),
            state_bytes=state_bytes(case, n),
        )
        if result.status == "ok":
            acc = accuracy(
                result.model,
                n,
                kv,
                sequences=cfg.eval_sequences,
                key_vocab=cfg.key_vocab,
                seed=cfg.seed + 1,
            )
            row.update(
                status="ok", reason="", accuracy=acc, near_chance=acc < NEAR_CHANCE * chance(kv)
            )
        else:
            row.update(status=result.status, reason=result.reason)
        rows.append(row)
    return {**main, "rows": rows}


def state_bytes(case: Case, n: int) -> int:
    """What one layer of the variant keeps to continue a sequence of ``n`` tokens (batch 1,
    float32): the KV cache of softmax attention, a window's ring buffer, a linear attention's
    F x D state (Zoology's axis: recall against the size of the state)."""
    variant = get_variant(case.variant)
    dec = variant.decoder(1, case.heads, case.head_dim, kv_heads=case.kv_heads, max_len=n)
    kv = torch.zeros(1, n, case.kv_heads, case.head_dim)
    dec.fill(kv, kv)
    return dec.cache_bytes()
