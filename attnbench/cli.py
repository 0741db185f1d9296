"""Command line of attnbench (``python run_bench.py COMMAND`` or ``attnbench COMMAND``).

Commands:
    list      every registered variant: family, math, parameters, exact?, and whether it runs
              here (forward / backward / decode), or why not.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

import torch

from . import registry


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def cmd_list(args: argparse.Namespace) -> int:
    for path in args.plugins:
        registry.load_plugin(path)
    dtype = registry.parse_dtype(args.dtype)
    rows = []
    for meta in registry.list_variants(args.family):
        variant = registry.get_variant(meta["name"])
        case = registry.Case(device=args.device, dtype=dtype, head_dim=args.head_dim)
        passes = {p: variant.not_supported_reasons(case, pass_=p) for p in registry.PASSES}
        rows.append({**meta, "label": variant.label,
                     "runs": {p: not r for p, r in passes.items()},
                     "reasons": passes["fwd"] or sorted({x for r in passes.values() for x in r})})
    if args.json:
        json.dump(rows, sys.stdout, indent=1, default=str)
        print()
        return 0
    print(f"{len(rows)} variants; availability for device={args.device}, dtype={args.dtype}, "
          f"head_dim={args.head_dim} (fwd / fwd_bwd / decode)\n")
    width = max(len(r["label"]) for r in rows)
    header = f"{'variant':<{width}}  {'family':<14} {'math':<14} exact  fwd bwd dec"
    print(header)
    print("-" * len(header))
    for family in registry.FAMILIES:
        for r in (r for r in rows if r["family"] == family):
            marks = " ".join(f"{'yes' if r['runs'][p] else 'no':<3}" for p in registry.PASSES)
            print(f"{r['label']:<{width}}  {r['family']:<14} {r['math']:<14} "
                  f"{'yes' if r['exact'] else 'no':<5}  {marks}")
            for reason in r["reasons"] if not all(r["runs"].values()) else []:
                for line in textwrap.wrap(reason, 100, initial_indent="      why not: ",
                                          subsequent_indent="               "):
                    print(line)
    counts = {f: sum(r["family"] == f for r in rows) for f in registry.FAMILIES}
    usable = sum(r["runs"]["fwd"] for r in rows)
    print(f"\n{usable} of {len(rows)} run here; per family: "
          + ", ".join(f"{f} {n}" for f, n in counts.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnbench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="list the registered variants and where they run")
    p.add_argument("--family", choices=registry.FAMILIES)
    p.add_argument("--device", default=_default_device())
    p.add_argument("--dtype", default="float32", choices=list(registry.DTYPES))
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--plugins", nargs="*", default=[], metavar="FILE.py",
                   help="Python files that register more variants")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
