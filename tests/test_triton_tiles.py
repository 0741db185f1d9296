"""Tiles of the Triton sliding-window kernel (variants/_triton_sliding_window.py).

- On Hopper the shipped tiles spill no registers: an ahead-of-time compile for
  ``GPUTarget("cuda", 90, 32)`` (``triton.compile`` and the ptxas Triton ships, on the CPU; no
  GPU needed) has no stack frame and no spill stores or loads, in both specializations a launch
  gets; at D = 256 the next larger tile still spills, as the module records.
- Every shipped tile computes the right thing (under the interpreter on a CPU machine).
"""

from __future__ import annotations

import importlib.util
import math
import os

import pytest
import torch

from attnbench.attention import triton_aot
from attnbench.attention.triton_aot import Resources
from attnbench.variants import _triton_sliding_window as sw

LOG = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'sliding_window_fwd' for 'sm_90a'
ptxas info    : Function properties for sliding_window_fwd
    40 bytes stack frame, 36 bytes spill stores, 32 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 40 bytes cumulative stack size
"""


def _no_aot_reason() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if triton_aot.ptxas_path() is None:
        return "Triton's ptxas for sm_90 is missing (no NVIDIA backend, or no ptxas in the wheel)"
    return None


needs_ptxas = pytest.mark.skipif(_no_aot_reason() is not None, reason=str(_no_aot_reason()))


def test_ptxas_log_is_parsed():
    assert triton_aot.parse_ptxas_log(LOG, shared=1024) == Resources(255, 40, 36, 32, 1024)
    assert not triton_aot.parse_ptxas_log(LOG).spill_free
    with pytest.raises(ValueError, match="one kernel"):
        triton_aot.parse_ptxas_log(LOG + LOG)


def test_the_rule_takes_the_largest_pipelined_spill_free_tile():
    free, spill = Resources(200, 0, 0, 0, 1024), Resources(255, 8, 4, 4, 1024)
    big_smem = Resources(200, 0, 0, 0, sw.HOPPER_SHARED + 1)
    figures = {
        (64, 64, 4, 3): [free, free],
        (128, 64, 8, 2): [free, spill],  # spills: ragged N
        (128, 128, 8, 1): [free, free],  # not pipelined
        (128, 128, 8, 3): [big_smem, free],
        (64, 128, 8, 3): [free, free],
        (128, 32, 8, 3): [free, free],
        (64, 64, 8, 3): [free, free],
    }
    assert sw.pick_tile(figures) == (64, 128, 8, 3)  # 8192 > 4096 work per CTA
    del figures[(64, 128, 8, 3)]
    assert sw.pick_tile(figures) == (64, 64, 4, 3)  # 4096 each: fewer warps
    del figures[(64, 64, 4, 3)]
    assert sw.pick_tile(figures) == (128, 32, 8, 3)  # then larger BLOCK_M
    assert sw.pick_tile({(64, 64, 4, 3): [spill, free]}) is None


def test_config_reads_the_table():
    assert sw.config(128, torch.bfloat16) == dict(zip(sw._KEYS, sw.TILES[128]["half"]))
    assert sw.config(128, torch.float16) == sw.config(128, torch.bfloat16)
    assert sw.config(64, torch.float32) == dict(zip(sw._KEYS, sw.TILES[64]["float32"]))


SHIPPED = [
    (d, dtype, spec)
    for d in (64, 128, 256)
    for dtype, spec in (
        (torch.bfloat16, "aligned N"),
        (torch.bfloat16, "ragged N"),
        (torch.float16, "aligned N"),
    )
]  # float16 compiles as bfloat16
STILL_TILE, STILL_FIGURES = sw.STILL_SPILLS[(256, "half")]


@pytest.fixture(scope="module")
def figures():
    """ptxas figures of the shipped tiles and of the recorded D = 256 spiller, from one batch
    (one child process under the interpreter)."""
    requests = [(d, dtype, None, spec) for d, dtype, spec in SHIPPED]
    requests += [(256, torch.bfloat16, STILL_TILE, spec) for spec in STILL_FIGURES]
    return dict(zip(requests, sw.aot_batch(requests)))


@pytest.mark.slow  # about 25 s of CPU for the batch, once per module
@needs_ptxas
@pytest.mark.parametrize(
    "head_dim,dtype,spec",
    SHIPPED,
    ids=[f"D{d}-{str(t)[6:]}-{s.replace(' ', '_')}" for d, t, s in SHIPPED],
)
def test_shipped_tiles_do_not_spill_on_hopper(figures, head_dim, dtype, spec):
    r = figures[(head_dim, dtype, None, spec)]  # None: the shipped tile
    assert r.spill_free, f"D={head_dim} {dtype} {spec} {sw.config(head_dim, dtype)}: {r}"
    assert 0 < r.shared <= sw.HOPPER_SHARED and r.registers <= 255


@pytest.mark.slow
@needs_ptxas
def test_d256_still_spills_past_the_shipped_tile(figures):
    """The table's record: the next larger tile at D = 256 spills (exactly the recorded bytes
    with the Triton the table was made with)."""
    import triton

    shipped = sw.TILES[256]["half"]
    assert STILL_TILE[0] * STILL_TILE[1] > shipped[0] * shipped[1] and STILL_TILE[3] >= 2
    for spec, recorded in STILL_FIGURES.items():
        r = figures[(256, torch.bfloat16, STILL_TILE, spec)]
        assert not r.spill_free, f"{STILL_TILE} {spec} no longer spills ({r}): choose again"
        if triton.__version__ == sw.TILES_FROM:
            assert (r.stack, r.spill_stores, r.spill_loads) == recorded, (spec, r)


def _reference(q, k, v, window):
    """Causal sliding-window attention in float64, (B, N, H, D)."""
    q, k, v = (x.double().transpose(1, 2) for x in (q, k, v))
    n = q.shape[2]
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    seen = (j <= i) & (j > i - window)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return (s.masked_fill(~seen, float("-inf")).softmax(-1) @ v).transpose(1, 2)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
@pytest.mark.parametrize("kind", ["half", "float32"])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
def test_every_shipped_tile_is_correct(head_dim, kind):
    """Each tile of the table; on a CPU on float32 data (the interpreter mishandles bfloat16):
    N spans two query blocks and ragged edges, the window cuts inside a key block."""
    cuda = torch.cuda.is_available()
    if not cuda and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton runs on the CPU only under TRITON_INTERPRET=1")
    tile = sw.TILES[head_dim][kind]
    n, window = tile[0] + 37, 45
    g = torch.Generator().manual_seed(head_dim)
    dtype = torch.bfloat16 if cuda and kind == "half" else torch.float32
    q, k, v = (torch.randn(1, n, 2, head_dim, generator=g).to(dtype) for _ in range(3))
    dev = "cuda" if cuda else "cpu"
    got = sw.sliding_window_forward(q.to(dev), k.to(dev), v.to(dev), window, tile=tile)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(got.cpu().double(), _reference(q, k, v, window), atol=tol, rtol=tol)
