"""Command line of attnbench (``python run_bench.py COMMAND`` or ``attnbench COMMAND``).

Commands:
    list      every registered variant: family, math, parameters, exact?, and whether it runs
              here (forward / backward / decode), or why not.
    run       measure a suite (``--suite quick`` or a TOML path) into runs/<run_id>/;
              ``--resume runs/<run_id>`` measures only what an interrupted run lacks.
    op        attention alone: ``--variants a,b --seq-lens 1024,4096 --passes fwd,fwd_bwd,decode``.
    model     the identical LM: ``--variants a,b --seq-lens 256,1024 --preset tiny``.
    quality   train the identical LM per variant on a corpus and evaluate bits per byte at several
              context lengths: ``--dataset enwik8 --variants a,b --train-tokens 20M
              --eval-lens 256,512,1024``; ``--mode dropin --checkpoint FILE`` evaluates one trained
              checkpoint with each variant swapped in. Under ``torchrun`` it trains data-parallel.
    recall    multi-query associative recall: ``--variants a,b --seq-lens 64,128 --kv-pairs 4,8``.
    report    (re)write ``report.md``, ``report.html`` and ``plots/*.png`` of a run folder.
    compare   ``compare results/A results/B``: ratios B/A per case; exit 1 on a regression.
    gpu-check every CUDA path in one short run (``attnbench.gpucheck``; ``make gpu-check``).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import typing
from pathlib import Path

import torch

from attnbench import registry
from attnbench.case import DTYPES, FAMILIES, Case, parse_dtype


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


LIST_PASSES = ("fwd", "fwd_bwd", "decode")  # what a variant can do (bwd needs what fwd_bwd does)


def cmd_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    for path in args.plugins:
        registry.load_plugin(path)
    dtype = parse_dtype(args.dtype)
    rows = []
    for meta in registry.list_variants(args.family):
        variant = registry.get_variant(meta["name"])
        case = Case(device=args.device, dtype=dtype, head_dim=args.head_dim)
        passes = {p: variant.not_supported_reasons(case, pass_=p) for p in LIST_PASSES}
        rows.append(
            {
                **meta,
                "label": variant.label,
                "runs": {p: not r for p, r in passes.items()},
                "reasons": passes["fwd"] or sorted({x for r in passes.values() for x in r}),
            }
        )
    if args.json:
        json.dump(rows, sys.stdout, indent=1, default=str)
        print()
        return 0
    print(
        f"{len(rows)} variants; availability for device={args.device}, dtype={args.dtype}, "
        f"head_dim={args.head_dim}\n"
    )
    table = []
    for family in FAMILIES:
        for r in (r for r in rows if r["family"] == family):
            table.append(
                [
                    r["label"],
                    r["family"],
                    r["math"],
                    "yes" if r["exact"] else "no",
                    *("yes" if r["runs"][p] else "no" for p in LIST_PASSES),
                    r["gqa"],
                    r["decoder"],
                ]
            )
            if not all(r["runs"].values()):
                for reason in r["reasons"]:
                    for line in textwrap.wrap(
                        reason, 100, initial_indent="  why not: ", subsequent_indent="           "
                    ):
                        table.append([line] + [""] * 8)
    print(
        tabulate(
            table,
            headers=[
                "variant",
                "family",
                "math",
                "exact",
                "fwd",
                "bwd",
                "decode",
                "kv heads",
                "decoder",
            ],
            disable_numparse=True,
        )
    )
    counts = {f: sum(r["family"] == f for r in rows) for f in FAMILIES}
    usable = sum(r["runs"]["fwd"] for r in rows)
    print(
        f"\n{usable} of {len(rows)} run here; per family: "
        + ", ".join(f"{f} {n}" for f, n in counts.items())
    )
    return 0


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError
    return text.lower() == "true"


def _add_plugins(p: argparse.ArgumentParser, help: str) -> None:
    """``--plugins FILE.py``, repeatable (one file each, so a positional argument after it is
    never taken for a plugin)."""
    p.add_argument(
        "--plugins",
        action="append",
        default=[],
        metavar="FILE.py",
        help=help + " (repeat the flag for several files)",
    )


SETTING_DEST = "setting__"  # argparse dest prefix of a derived settings flag


def _flag_type(kind):
    """The argparse type of a settings field's type hint (None: no flag, e.g. a table)."""
    origin = typing.get_origin(kind)
    if origin is tuple:
        item = typing.get_args(kind)[0]
        return _csv(_bool if item is bool else item)
    if kind is bool:
        return _bool
    return kind if kind in (int, float, str) else None


def _setting_flags(p: argparse.ArgumentParser, *sections: str) -> None:
    """A flag for every field of these suite sections that has none yet: ``--field-name``,
    checked like the suite file's key, so a new setting is one field in ``attnbench.settings``
    (hand-written flags above, such as ``--budget`` for ``timing.budget_s``, keep their
    names)."""
    import dataclasses

    from attnbench.bench.suite import SECTIONS

    for section in sections:
        cls = SECTIONS[section]
        hints = typing.get_type_hints(cls)
        g = p.add_argument_group(f"[{section}] settings (any of them also --set {section}.KEY=V)")
        for f in dataclasses.fields(cls):
            opt = "--" + f.name.replace("_", "-")
            kind = _flag_type(hints[f.name])
            if opt in p._option_string_actions or kind is None:
                continue
            default = f.default if f.default is not dataclasses.MISSING else "[]"
            g.add_argument(
                opt,
                dest=f"{SETTING_DEST}{section}__{f.name}",
                type=kind,
                metavar=f.name.upper(),
                help=f"{section}.{f.name} (default {default})",
            )


def _csv(kind):
    def parse(text: str):
        items = [x.strip() for x in text.split(",") if x.strip()]
        try:
            return [kind(x) for x in items]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {kind.__name__}, got {text!r}"
            ) from None

    return parse


def _overrides(args: argparse.Namespace, section: str | None) -> dict:
    """Command-line flags -> suite overrides (``section.key``)."""
    from attnbench.bench.suite import parse_override

    out = {}
    flags = {
        "variants": "variants",
        "seq_lens": "seq_lens",
        "passes": "passes",
        "dtype": "dtypes",
        "batch": "batch",
        "heads": "heads",
        "kv_heads": "kv_heads",
        "head_dims": "head_dims",
        "total_tokens": "total_tokens",
        "model_dim": "model_dim",
        "causal": "causal",
        "preset": "preset",
    }
    if getattr(args, "hf_config", None):
        args.preset = f"hf:{args.hf_config}"
    for attr, key in flags.items():
        value = getattr(args, attr, None)
        if value is not None:
            if section is None:
                raise ValueError(
                    f"--{attr.replace('_', '-')} needs a level: use the `op` or "
                    "`model` command, or --set op.KEY=VALUE with `run`"
                )
            out[f"{section}.{key}"] = value
    for attr, key in (
        ("budget", "budget_s"),
        ("timeout", "timeout_s"),
        ("threads", "threads"),
        ("repeats", "repeats"),
    ):
        if getattr(args, attr, None) is not None:
            out[f"timing.{key}"] = getattr(args, attr)
    if getattr(args, "no_gate", False):
        out["timing.gate"] = False
    if getattr(args, "device", None):
        out["device"] = args.device
    for attr, value in vars(args).items():
        if attr.startswith(SETTING_DEST) and value is not None:
            section, _, key = attr[len(SETTING_DEST) :].partition("__")
            out[f"{section}.{key}"] = value
    for text in args.set or []:
        key, value = parse_override(text)
        out[key] = value
    return out


def _launcher(args: argparse.Namespace):
    """The launcher the flags ask for (``attnbench.launch.Launcher`` validates them)."""
    from attnbench.launch import Launcher

    kind = getattr(args, "launcher", "local")
    submitit = {}
    if kind == "submitit":
        submitit = dict(
            local=args.submitit_local,
            max_jobs=args.max_jobs,
            partition=args.slurm_partition,
            gpus_per_job=args.gpus_per_job,
            cpus_per_job=args.cpus_per_job,
            timeout_min=args.job_timeout_min,
        )
    return Launcher(
        kind,
        workers=getattr(args, "workers", 1),
        time_limit_s=getattr(args, "time_limit_s", None),
        submitit=submitit,
    )


def _run_suite(args: argparse.Namespace, suite, command: list[str]) -> int:
    """Launch (``attnbench.launch``: folder, plan, launcher, report), then print the summary."""
    from attnbench.launch import launch
    from attnbench.report.tables import summary

    done = launch(
        suite,
        out=args.out,
        resume=args.resume,
        force=args.force,
        plugins=args.plugins,
        command=command,
        progress=not args.quiet,
        launcher=_launcher(args),
    )
    if done.run_dir is None:  # a torchrun process other than 0
        return 0
    print(summary(done.rows))
    if done.report:
        written = done.report
        print(
            f"\nreport: {written['markdown']} and {written['html'].name}, "
            f"{sum(k.startswith('plot:') for k in written)} plots in {done.run_dir / 'plots'}"
        )
    bad = {}
    for r in done.rows:
        bad[r["status"]] = bad.get(r["status"], 0) + 1
    print(
        f"\n{len(done.rows)} cases ({', '.join(f'{k} {v}' for k, v in sorted(bad.items()))}) in "
        f"{done.seconds:.0f} s"
    )
    print(f"run folder: {done.run_dir}")
    if done.report_error:
        print(f"attnbench: {done.report_error}", file=sys.stderr)
        return 1
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from attnbench.bench.results import read_run_json
    from attnbench.bench.suite import from_dict, load_suite, with_overrides

    for path in args.plugins:
        registry.load_plugin(path)
    section = args.level
    if args.resume and not args.suite:
        suite = from_dict(read_run_json(args.resume)["suite"])
    elif args.variants and not args.suite:  # `run --variants my.idea ...`: an op sweep of those
        args.level = section = section or "op"
        return cmd_level(args)
    else:
        suite = load_suite(args.suite or "quick")
    overrides = _overrides(args, section)
    if overrides:
        suite = with_overrides(suite, overrides)
    return _run_suite(args, suite, sys.argv)


def cmd_level(args: argparse.Namespace) -> int:
    """`op` and `model`: a one-section suite built from flags."""
    from attnbench.bench.suite import Suite, with_overrides

    for path in args.plugins:
        registry.load_plugin(path)
    if not args.variants:
        raise ValueError(f"`{args.level}` needs --variants")
    base = Suite(name=args.level, description=f"`{args.level}` command")
    suite = with_overrides(base, _overrides(args, args.level))
    return _run_suite(args, suite, sys.argv)


def _count(text: str) -> int:
    """``20M``, ``500K``, ``1.5G`` or a plain integer."""
    scale = {"K": 10**3, "M": 10**6, "G": 10**9}
    t = text.strip().upper().replace("_", "")
    try:
        if t and t[-1] in scale:
            return int(float(t[:-1]) * scale[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a count such as 20M, 500K or 100000, got {text!r}"
        ) from None


# the flags of `quality` and `recall` beyond those `_overrides` knows (variants, seq_lens, batch,
# preset, device, --set)
_QUALITY_FLAGS = (
    "dataset",
    "data_dir",
    "train_tokens",
    "train_seconds",
    "train_len",
    "lr",
    "seed",
    "eval_lens",
    "eval_tokens",
    "eval_method",
    "stride",
    "eval_split",
    "mode",
    "checkpoint",
    "hf_model",
    "ngram_order",
    "val_fraction",
    "seeds",
)
_RECALL_FLAGS = ("kv_pairs", "train_steps", "lr", "seed", "key_vocab", "eval_sequences")


def cmd_training(args: argparse.Namespace) -> int:
    """`quality` and `recall`: a one-section suite built from flags (or a suite's section)."""
    from attnbench.bench.suite import Suite, load_suite, with_overrides

    for path in args.plugins:
        registry.load_plugin(path)
    section = args.command
    names = _QUALITY_FLAGS if section == "quality" else _RECALL_FLAGS
    overrides = {
        f"{section}.{k}": getattr(args, k) for k in names if getattr(args, k, None) is not None
    }
    if getattr(args, "hf_model", None) and not args.mode:
        overrides["quality.mode"] = "dropin"
    if section == "quality" and args.mode == "dropin" and args.checkpoint and not args.dataset:
        meta = _checkpoint_meta(args.checkpoint)  # evaluate on the corpus it was trained on
        overrides["quality.dataset"] = meta.get("dataset", "pystdlib")
    if args.no_dropin:
        overrides["quality.dropin"] = False
    overrides.update(_overrides(args, section))  # the common flags, then --set, which wins
    if args.resume:
        from attnbench.bench.results import read_run_json
        from attnbench.bench.suite import from_dict

        base = from_dict(read_run_json(args.resume)["suite"])
    elif args.suite:  # a suite's section, flags on top
        base = load_suite(args.suite)
        base = Suite(
            name=base.name,
            description=base.description,
            device=base.device,
            timing=base.timing,
            **{section: getattr(base, section)},
        )
    else:
        if not args.variants:
            raise ValueError(
                f"`{section}` needs --variants (or --suite NAME for a suite's [{section}])"
            )
        base = Suite(name=section, description=f"`{section}` command")
    suite = with_overrides(base, overrides)
    from attnbench.bench import torchrun

    if torchrun.launched_by_torchrun() and section != "quality":
        raise ValueError("only `quality` trains data-parallel under torchrun")
    return _run_suite(args, suite, sys.argv)


def _checkpoint_meta(path: str) -> dict:
    if not Path(path).is_file():
        raise ValueError(f"--checkpoint {path}: no such file")
    return torch.load(path, map_location="cpu", weights_only=True).get("meta", {})


def cmd_report(args: argparse.Namespace) -> int:
    from attnbench.report.document import write_report

    for path in args.plugins:
        registry.load_plugin(path)
    written = write_report(args.run_dir)
    for key, path in written.items():
        print(f"{key:<16} {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from attnbench.report.compare import compare

    floors = {
        k: v
        for k, v in (
            ("time_ms", args.floor_ms),
            ("bits_per_byte", args.floor_bpb),
            ("accuracy", args.floor_accuracy),
        )
        if v is not None
    }
    if args.floor_mib is not None:
        floors["peak_mem_bytes"] = args.floor_mib * 2**20
    code, text = compare(
        args.run_a,
        args.run_b,
        threshold=args.threshold,
        floors=floors,
        allow_device_mismatch=args.allow_device_mismatch,
        show_all=args.all,
    )
    print(text)
    return code


def _run_folder_args(p: argparse.ArgumentParser) -> None:
    """What every measuring command takes: where the run goes, resuming, plugins, the device,
    overrides, progress, the time limit and the launcher."""
    p.add_argument(
        "--out",
        default="runs",
        help="parent folder of new run folders (curated references go to results/)",
    )
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run folder")
    p.add_argument(
        "--force",
        action="store_true",
        help="with --resume: accept another suite or commit (recorded in run.json)",
    )
    _add_plugins(p, "Python files that register more variants")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override any suite field, e.g. --set op.batch=2",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--time-limit-s",
        type=float,
        metavar="SECONDS",
        help="local launcher: start no case after this many seconds; the cases left "
        "are listed in run.json and measured by a later --resume",
    )
    _launcher_args(p)


def _common_run_args(p: argparse.ArgumentParser) -> None:
    _run_folder_args(p)
    p.add_argument("--budget", type=float, help="seconds of repetitions per case")
    p.add_argument("--timeout", type=float, help="seconds before a case is killed")
    p.add_argument("--threads", type=int, help="torch threads in the worker")
    p.add_argument("--repeats", type=int, help="measure each case this many times")
    p.add_argument(
        "--no-gate",
        action="store_true",
        help="skip the correctness gate (every row and the report say so)",
    )


def _launcher_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("launcher (see README: scale-out)")
    g.add_argument(
        "--launcher",
        choices=["local", "submitit"],
        default="local",
        help="local (default): worker processes here; submitit: Slurm jobs",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=1,
        help="local: worker processes sharing the cases, each pinned to one GPU or a "
        "share of the CPU threads",
    )
    g.add_argument(
        "--submitit-local",
        action="store_true",
        help="submitit's local executor: real job processes on this machine, no Slurm",
    )
    g.add_argument(
        "--max-jobs", type=int, default=32, help="submitit: jobs to split the cases into"
    )
    g.add_argument("--slurm-partition", help="submitit: Slurm partition")
    g.add_argument("--gpus-per-job", type=int, default=0, help="submitit: GPUs per job")
    g.add_argument("--cpus-per-job", type=int, help="submitit: CPUs per job")
    g.add_argument(
        "--job-timeout-min", type=int, default=240, help="submitit: job time limit (minutes)"
    )


def _level_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variants", type=_csv(str), help="comma-separated variant specs")
    p.add_argument("--seq-lens", dest="seq_lens", type=_csv(int))
    p.add_argument("--passes", type=_csv(str))
    p.add_argument("--dtype", type=_csv(str), help="float32, bfloat16, float16 (comma-separated)")
    p.add_argument("--batch", type=int)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnbench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="list the registered variants and where they run")
    p.add_argument("--family", choices=FAMILIES)
    p.add_argument("--device", default=_default_device())
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--head-dim", type=int, default=64)
    _add_plugins(p, "Python files that register more variants")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("run", help="measure a suite")
    p.add_argument("--suite", help="suite name (suites/NAME.toml) or path; default quick")
    _common_run_args(p)
    p.add_argument("--level", choices=["op", "model"], help="section that --variants etc. override")
    _level_args(p)
    _setting_flags(p, "timing")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("op", help="measure attention alone over sequence lengths")
    _common_run_args(p)
    _level_args(p)
    p.add_argument("--heads", type=int, help="query heads")
    p.add_argument(
        "--kv-heads",
        dest="kv_heads",
        type=_csv(int),
        help="key/value heads (grouped-query attention; each divides --heads)",
    )
    p.add_argument("--head-dims", dest="head_dims", type=_csv(int))
    p.add_argument(
        "--total-tokens",
        dest="total_tokens",
        type=int,
        help="batch = total tokens // N at each N (flash-attention's sweep)",
    )
    p.add_argument(
        "--model-dim",
        dest="model_dim",
        type=int,
        help="heads = model dim // head dim (flash-attention: 2048)",
    )
    p.add_argument("--causal", type=_csv(_bool), help="true, false or both: true,false")
    _setting_flags(p, "op", "timing")
    p.set_defaults(func=cmd_level, level="op")

    p = sub.add_parser("model", help="measure a language model: train step, prefill, decode")
    _common_run_args(p)
    _level_args(p)
    p.add_argument("--preset", help="the identical LM's preset: tiny, small, gpt2")
    p.add_argument(
        "--hf-config",
        dest="hf_config",
        metavar="NAME_OR_DIR",
        help="a transformers model instead: a preset of attnbench.hf (llama-tiny, "
        "mistral-tiny, qwen2-tiny, llama-small) or a save_pretrained folder",
    )
    _setting_flags(p, "model", "timing")
    p.set_defaults(func=cmd_level, level="model")

    p = sub.add_parser(
        "quality", help="train per variant on a corpus; bits per byte by context length"
    )
    _training_args(p)
    p.add_argument(
        "--dataset",
        help="pystdlib (default), tinyshakespeare, enwik8, text8, "
        "wikitext103, wikitext2, enwiki-excerpt, or file:PATH",
    )
    p.add_argument(
        "--data-dir",
        dest="data_dir",
        help="folder already holding the corpus files (default: $ATTNBENCH_DATA_DIR)",
    )
    p.add_argument(
        "--val-fraction", dest="val_fraction", type=float, help="held-out share of file:PATH"
    )
    p.add_argument(
        "--train-tokens", dest="train_tokens", type=_count, help="token budget, e.g. 20M"
    )
    p.add_argument(
        "--train-seconds",
        dest="train_seconds",
        type=float,
        help="wall-clock budget per variant instead of a token budget",
    )
    p.add_argument("--train-len", dest="train_len", type=int, help="training sequence length")
    p.add_argument(
        "--eval-lens", dest="eval_lens", type=_csv(int), help="evaluation context lengths"
    )
    p.add_argument(
        "--eval-tokens",
        dest="eval_tokens",
        type=_count,
        help="held-out bytes scored per length (0: the whole split)",
    )
    p.add_argument("--eval-split", dest="eval_split", choices=["val", "test"])
    p.add_argument("--eval-method", dest="eval_method", choices=["windows", "sliding"])
    p.add_argument("--stride", type=int, help="sliding evaluation: bytes between windows")
    p.add_argument(
        "--ngram-order", dest="ngram_order", type=int, help="n-gram floor order (0: none)"
    )
    p.add_argument("--mode", choices=["train", "dropin"])
    p.add_argument("--checkpoint", help="dropin mode: a checkpoint saved by a quality run")
    p.add_argument(
        "--hf-model",
        dest="hf_model",
        metavar="DIR",
        help="dropin mode: a transformers model folder (save_pretrained), evaluated "
        "with each variant swapped in (per token with its own tokenizer)",
    )
    p.add_argument("--seeds", type=_csv(int), help="train each variant with each seed (spread)")
    p.add_argument(
        "--no-dropin",
        action="store_true",
        help="train mode: skip the drop-in evaluation of the first variant's checkpoint",
    )
    _setting_flags(p, "quality")

    p = sub.add_parser("recall", help="multi-query associative recall (MQAR) per variant")
    _training_args(p)
    p.add_argument("--seq-lens", dest="seq_lens", type=_csv(int))
    p.add_argument("--kv-pairs", dest="kv_pairs", type=_csv(int))
    p.add_argument("--train-steps", dest="train_steps", type=int)
    p.add_argument("--key-vocab", dest="key_vocab", type=int)
    p.add_argument("--eval-sequences", dest="eval_sequences", type=int)
    _setting_flags(p, "recall")
    p.set_defaults(no_dropin=False)

    p = sub.add_parser("report", help="(re)write report.md, report.html and plots of a run folder")
    p.add_argument("run_dir")
    _add_plugins(p, "files that registered the run's own variants (for the pattern plot)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="compare run B against run A; exit 1 on a regression")
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.10,
        help="relative change that counts (default 0.10 = 10%%)",
    )
    p.add_argument(
        "--floor-ms", dest="floor_ms", type=float, help="absolute time floor (default 0.05 ms)"
    )
    p.add_argument(
        "--floor-mib", dest="floor_mib", type=float, help="absolute memory floor (default 1 MiB)"
    )
    p.add_argument(
        "--floor-bpb", dest="floor_bpb", type=float, help="bits per byte floor (default 0.01)"
    )
    p.add_argument(
        "--floor-accuracy",
        dest="floor_accuracy",
        type=float,
        help="recall accuracy floor (default 0.02)",
    )
    p.add_argument(
        "--allow-device-mismatch",
        action="store_true",
        help="compare runs from different devices anyway",
    )
    p.add_argument(
        "--all", action="store_true", help="print every compared metric, not only flagged ones"
    )
    p.set_defaults(func=cmd_compare)
    return parser


def _training_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", help="take the suite's section as the base (flags override it)")
    p.add_argument("--variants", type=_csv(str), help="comma-separated variant specs")
    p.add_argument("--preset", help="model preset: tiny, small, gpt2")
    p.add_argument("--batch", type=int, help="sequences per optimizer step")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--seed", type=int)
    _run_folder_args(p)
    p.set_defaults(func=cmd_training)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["gpu-check"]:  # its own parser (attnbench.gpucheck)
        from attnbench import gpucheck

        return gpucheck.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
