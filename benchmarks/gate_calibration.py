"""The gate's calibration: how close every honest registered variant comes to the tolerance.

    python benchmarks/gate_calibration.py [--dtypes float32,bfloat16,float16] [--out FILE.md]

For each variant (small test parameters), shape of the tests' awkward set and dtype, the forward
output and the gradients are compared with the float64 reference exactly as the benchmark's gate
does (``attnbench.attention.reference.reference_error``), and the worst row's error over its bound
and the mean error over its bound are printed (``margin``: below 1 passes). The tolerance is only
worth what it rejects: the planted defects of ``tests/bench/test_gate.py`` must sit above 1 and
every honest variant below; this table shows the honest side and how much room it has. FlexAttention
variants are left out (each shape compiles a kernel; the tests cover them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import attnbench  # noqa: E402
from attnbench.attention.reference import margin  # noqa: E402
from attnbench.case import Case, parse_dtype  # noqa: E402
from helpers import SHAPES, random_qkv, small_variant  # noqa: E402


def rows_for(variant, shape, dtype):
    b, n, h, d, kv = shape
    case = Case(
        batch=b,
        seq_len=n,
        heads=h,
        kv_heads=kv,
        head_dim=d,
        dtype=dtype,
        device="cpu",
        pass_="fwd_bwd",
    )
    if variant.not_supported_reasons(case.replace(pass_="fwd")):
        return None
    q, k, v = random_qkv(shape, dtype, requires_grad=True)
    out = variant(q, k, v)
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = variant.reference(*ref_in)
    plain_in = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    plain = variant.reference(*plain_in, dtype=dtype).to(dtype)
    fwd = margin(out.detach(), plain.detach(), ref.detach(), dtype)
    grads = (None, None)
    if not variant.not_supported_reasons(case):
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        got = torch.autograd.grad(out, (q, k, v), g.to(dtype))
        r = torch.autograd.grad(ref, ref_in, g)
        p = torch.autograd.grad(plain, plain_in, g.to(dtype))
        scale = max(float(x.abs().max()) for x in r)
        ms = [margin(a, b_, c, dtype, gradient=True, scale=scale) for a, b_, c in zip(got, p, r)]
        grads = (max(m[0] for m in ms), max(m[1] for m in ms))
    return fwd, grads


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtypes", default="float32,bfloat16,float16")
    p.add_argument("--out", help="also write the table (Markdown) to this file")
    args = p.parse_args(argv)
    table = []
    for name in attnbench.variant_names():
        variant = small_variant(name)
        if variant.impl == "flex":
            continue
        for dt in args.dtypes.split(","):
            dtype = parse_dtype(dt)
            worst = [0.0, 0.0, 0.0, 0.0]
            ran = False
            for shape in SHAPES:
                res = rows_for(variant, shape, dtype)
                if res is None:
                    continue
                ran = True
                (fr, fm), (gr, gm) = res
                worst = [
                    max(worst[0], fr),
                    max(worst[1], fm),
                    max(worst[2], gr or 0),
                    max(worst[3], gm or 0),
                ]
            if ran:
                table.append([variant.label, dt] + [f"{w:.2f}" for w in worst])
    headers = ["variant", "dtype", "fwd worst row", "fwd mean", "grad worst row", "grad mean"]
    text = tabulate(table, headers, tablefmt="github")
    print(text)
    bad = [r for r in table if max(float(x) for x in r[2:]) >= 1]
    print(f"\n{len(table)} (variant, dtype) pairs; {len(bad)} at or above their bound")
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
