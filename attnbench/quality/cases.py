"""Cases of the ``[quality]`` and ``[recall]`` suite sections: planning them, and running one.

A quality run plans, in order: the n-gram floor (one case), one ``train`` case per variant
(train, save the checkpoint, evaluate at every length), then, with ``dropin``, one ``dropin``
case per variant (the first variant's checkpoint evaluated with that variant swapped in). A
recall run plans one case per variant (train on MQAR, then accuracy on every setting).

Every case returns its main row and a list of ``rows`` (one per evaluation length or recall
setting); the runner writes them all to ``results.jsonl``. The same functions run inside the
benchmark worker and, under ``torchrun``, in each training process.
"""

from __future__ import annotations

import functools
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnbench.quality import data as data_mod
from attnbench.model import ModelConfig
from attnbench.quality.train import (LN2, TrainSettings, checkpoint_name, evaluate, load_checkpoint,
                      save_checkpoint, train)
from attnbench.quality.recall import RecallSettings, accuracy, train_recall
from attnbench.registry import get_variant

CHECKPOINT_DIR = "checkpoints"


def _budget(q) -> str:
    return f"{q.train_seconds:g}s" if q.train_seconds > 0 else f"{q.train_tokens}tok"


def quality_case_id(c: dict[str, Any]) -> str:
    base = (f"quality|{c['variant']}|{c['pass']}|{c['dataset']}|{c['preset']}|L{c['train_len']}"
            f"|{c['budget']}|s{c['seed']}|{c['device']}")
    return base + (f"|from={c['trained_variant']}" if c["pass"] == "dropin" else "")


def recall_case_id(c: dict[str, Any]) -> str:
    return f"recall|{c['variant']}|{c['preset']}|steps{c['train_steps']}|s{c['seed']}|{c['device']}"


def _variant_fields(spec: str) -> dict[str, Any]:
    v = get_variant(spec)
    return dict(variant=v.label, family=v.family, math=v.info.math, impl=v.impl)


def _settings(cls, cfg) -> Any:
    return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})


def plan_quality(q, device: str) -> list[dict[str, Any]]:
    cfg = ModelConfig.from_name(q.preset)
    common = dict(level="quality", dataset=q.dataset, preset=q.preset, train_len=q.train_len,
                  batch=q.batch, train_tokens=q.train_tokens, train_seconds=q.train_seconds,
                  budget=_budget(q), seed=q.seed, heads=cfg.n_heads, head_dim=cfg.head_dim,
                  dtype="bfloat16-autocast" if device.startswith("cuda") else "float32",
                  device=device, causal=True, repeat=0, seq_len=q.train_len,
                  eval_lens=list(q.eval_lens), eval_split=q.eval_split)
    cases = []
    if q.ngram_order > 0:
        cases.append(dict(common, variant=f"ngram:order={q.ngram_order}", family="baseline",
                          math="ngram", impl="kneser_ney", pass_="fit"))
    if q.mode == "train":
        for spec in q.variants:
            cases.append(dict(common, **_variant_fields(spec), pass_="train",
                              checkpoint=f"{CHECKPOINT_DIR}/{checkpoint_name(get_variant(spec).label)}"))
        if q.dropin:
            trained = get_variant(q.variants[0]).label
            ckpt = f"{CHECKPOINT_DIR}/{checkpoint_name(trained)}"
            cases += [dict(common, **_variant_fields(spec), pass_="dropin", trained_variant=trained,
                           checkpoint=ckpt) for spec in q.dropin_variants or q.variants]
    else:
        trained = _checkpoint_attention(q.checkpoint)
        ckpt = str(Path(q.checkpoint).resolve())
        cases += [dict(common, **_variant_fields(spec), pass_="dropin", trained_variant=trained,
                       checkpoint=ckpt) for spec in q.dropin_variants or q.variants]
    for c in cases:
        c["pass"] = c.pop("pass_")
        c["case_id"] = quality_case_id(c)
    return cases


def _checkpoint_attention(path: str) -> str:
    if not Path(path).is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    return torch.load(path, map_location="cpu", weights_only=True)["attention"]


def plan_recall(r, device: str) -> list[dict[str, Any]]:
    cfg = ModelConfig.from_name(r.preset)
    cases = []
    for spec in r.variants:
        c = dict(level="recall", **_variant_fields(spec), pass_="train", preset=r.preset,
                 batch=r.batch, seq_len=max(n for n, _ in r.grid()), heads=cfg.n_heads,
                 head_dim=cfg.head_dim, dtype="bfloat16-autocast" if device.startswith("cuda") else "float32",
                 device=device, causal=True, repeat=0, train_steps=r.train_steps, seed=r.seed,
                 seq_lens=list(r.seq_lens), kv_pairs_list=list(r.kv_pairs), key_vocab=r.key_vocab)
        c["pass"] = c.pop("pass_")
        c["case_id"] = recall_case_id(c)
        cases.append(c)
    return cases


@functools.lru_cache(maxsize=2)
def _corpus(name: str, data_dir: str, val_fraction: float) -> data_mod.Corpus:
    return data_mod.load_corpus(name, data_dir=data_dir or None, val_fraction=val_fraction)


def corpus_for(q) -> data_mod.Corpus:
    return _corpus(q.dataset, q.data_dir, q.val_fraction)


def _eval_rows(model, held_out: np.ndarray, q, c: dict, order0: float, extra: dict) -> list[dict]:
    rows = []
    for n in q.eval_lens:
        e = evaluate(model, held_out, n, method=q.eval_method, stride=q.stride,
                     max_targets=q.eval_tokens, buckets=q.position_buckets)
        status = "ok" if e["finite"] else "diverged"
        rows.append({**c, **extra, "pass": "eval" if c["pass"] == "train" else c["pass"],
                     "case_id": f"{c['case_id']}|eval{n}", "seq_len": n, "eval_len": n,
                     "status": status, "reason": "" if e["finite"] else "non-finite loss",
                     "bits_per_byte": e["bits_per_byte"], "ppl": e["ppl"], "nll": e["nll"],
                     "eval_method": e["eval_method"], "eval_targets": e["eval_targets"],
                     "position_edges": e["position_edges"], "position_bpb": e["position_bpb"],
                     "order0_bpb": order0})
    return rows


def run_quality_case(c: dict[str, Any], q, run_dir: str | Path, *, rank: int = 0,
                     world: int = 1) -> dict[str, Any]:
    """One quality case -> {status, ..., "rows": [per evaluation length]}."""
    corpus = corpus_for(q)
    train_split, held_out = corpus.split("train"), corpus.split(q.eval_split)
    order0 = data_mod.unigram_entropy_bits(train_split, held_out)
    device = torch.device(c["device"])
    if c["family"] == "baseline":
        from attnbench.quality.ngram import ByteNGram

        ngram = ByteNGram(q.ngram_order).fit(train_split)
        rows = []
        for n in q.eval_lens:
            limit = q.eval_tokens if q.eval_tokens > 0 else len(held_out) - 1
            windows = min(len(held_out) - 1, limit) // n
            nll = ngram.nll(held_out[: windows * n + 1], window=n)
            mean = float(nll.mean())
            rows.append({**c, "pass": "eval", "case_id": f"{c['case_id']}|eval{n}", "seq_len": n,
                         "eval_len": n,
                         "status": "ok", "reason": "", "bits_per_byte": mean / LN2,
                         "ppl": math.exp(mean), "nll": mean, "eval_targets": int(nll.size),
                         "eval_method": "windows", "order0_bpb": order0})
        return {"status": "ok", "reason": "", "order0_bpb": order0, "dataset_sha256": corpus.sha256,
                "rows": rows}
    if c["pass"] == "train":
        settings = _settings(TrainSettings, q)
        result = train(train_split, c["variant"], settings, device, rank=rank, world=world)
        main = {"status": result.status, "reason": result.reason, "train_steps": result.steps,
                "tokens_trained": result.tokens, "train_s": round(result.seconds, 3),
                "tokens_per_s": result.tokens_per_s, "final_train_loss": result.final_loss,
                "final_train_bpb": result.final_loss / LN2, "loss_curve": result.curve,
                "curve_fields": ["step", "tokens", "seconds", "loss", "lr"],
                "order0_bpb": order0, "dataset_sha256": corpus.sha256,
                "model_params": result.model.cfg.num_params()}
        if rank != 0:  # data-parallel training: process 0 saves and evaluates
            return {**main, "rows": []}
        save_checkpoint(Path(run_dir) / c["checkpoint"], result.model,
                        {"dataset": q.dataset, "dataset_sha256": corpus.sha256,
                         "settings": {f.name: getattr(settings, f.name) for f in fields(settings)},
                         "status": result.status, "steps": result.steps})
        if result.status != "ok":
            rows = [{**c, "pass": "eval", "case_id": f"{c['case_id']}|eval{n}", "seq_len": n,
                     "eval_len": n, "status": result.status, "reason": result.reason}
                    for n in q.eval_lens]
        else:
            rows = _eval_rows(result.model, held_out, q, c, order0, {})
        return {**main, "rows": rows}
    # drop-in: the trained checkpoint, evaluated with its own attention and with this variant
    path = Path(c["checkpoint"])
    if not path.is_absolute():
        path = Path(run_dir) / path
    model, payload = load_checkpoint(path, device)
    own = {n: evaluate(model, held_out, n, method=q.eval_method, stride=q.stride,
                       max_targets=q.eval_tokens, buckets=q.position_buckets)["bits_per_byte"]
           for n in q.eval_lens}
    model.set_attention(c["variant"])
    rows = _eval_rows(model, held_out, q, c, order0, {})
    for row in rows:
        ref = own[row["eval_len"]]
        row["trained_bpb"] = ref
        if row.get("bits_per_byte") is not None:
            row["rel_diff"] = abs(row["bits_per_byte"] - ref) / ref
    return {"status": "ok", "reason": "", "order0_bpb": order0, "dataset_sha256": corpus.sha256,
            "checkpoint_dataset_sha256": payload["meta"].get("dataset_sha256"), "rows": rows}


def run_recall_case(c: dict[str, Any], r) -> dict[str, Any]:
    settings = _settings(RecallSettings, r)
    result = train_recall(c["variant"], settings, c["device"])
    main = {"status": result.status, "reason": result.reason, "train_steps": result.steps,
            "train_s": round(result.seconds, 3), "final_train_loss": result.final_loss}
    rows = []
    for n, kv in settings.grid():
        row = {**c, "pass": "eval", "case_id": f"{c['case_id']}|N{n}-kv{kv}", "seq_len": n,
               "kv_pairs": kv}
        if result.status == "ok":
            row.update(status="ok", reason="", accuracy=accuracy(
                result.model, n, kv, sequences=r.eval_sequences, key_vocab=r.key_vocab, seed=r.seed + 1))
        else:
            row.update(status=result.status, reason=result.reason)
        rows.append(row)
    return {**main, "rows": rows}
