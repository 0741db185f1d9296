"""The gate before training: a variant is trained, evaluated or scored for recall only once it
passes, inside the identical model at the shape it will run at, two checks:

- **future leak**: the tokens after position t are changed; the logits at positions <= t must not
  move (beyond float rounding). A variant that sees the next tokens (a non-causal kernel
  registered as causal) would otherwise win by a bit per byte and recall perfectly.
- **the model-level reference**: the same model with the variant's reference attention (float64,
  and plain PyTorch in float32 for the tolerance) gives the same logits at every position.

A failing variant gets an ``incorrect`` row with the reason and no quality or recall number.
"""

from __future__ import annotations

import copy

import torch

from attnbench.attention.reference import ReferenceAttention, reference_error

LEAK_TOL = 1e-5  # of the logits' largest magnitude: what float rounding can move


def _tokens(vocab_size: int, seq_len: int, device, seed: int, batch: int):
    """Random tokens (B, N) and the generator that drew them (it draws the changed tail)."""
    g = torch.Generator().manual_seed(seed + 11)
    return torch.randint(0, vocab_size, (batch, seq_len), generator=g).to(device), g


def _leak(
    logits_of, x: torch.Tensor, vocab_size: int, g: torch.Generator
) -> tuple[str | None, torch.Tensor]:
    """(why the logits at positions <= t moved when the tokens after the middle position t of
    ``x`` changed, or None; the logits of ``x``)."""
    b, n = x.shape
    t = n // 2
    changed = x.clone()
    changed[:, t + 1 :] = torch.randint(0, vocab_size, (b, n - t - 1), generator=g).to(x.device)
    with torch.no_grad():
        a, other = logits_of(x), logits_of(changed)
    moved = float((a[:, : t + 1] - other[:, : t + 1]).abs().max())
    if moved > LEAK_TOL * float(a.abs().max()):
        return (
            f"sees the future: changing the tokens after position {t} moved the logits "
            f"at positions <= {t} by up to {moved:.3g} (the logits reach "
            f"{float(a.abs().max()):.3g})"
        ), a
    return None, a


def future_leak(
    logits_of, vocab_size: int, seq_len: int, device="cpu", seed: int = 0, batch: int = 2
) -> str | None:
    """None when ``logits_of(ids) -> (B, N, V)`` is causal: changing the tokens after the middle
    position t leaves the logits at positions <= t where they were (within ``LEAK_TOL`` of their
    largest magnitude); else why. Any causal language model: ours with a variant, or a
    transformers model with its own attention implementation or with a variant."""
    x, g = _tokens(vocab_size, seq_len, device, seed, batch)
    return _leak(logits_of, x, vocab_size, g)[0]


def check_in_model(
    preset: str,
    variant: str,
    seq_len: int,
    device="cpu",
    seed: int = 0,
    batch: int = 2,
    shape: dict | None = None,
) -> str | None:
    """None when ``variant`` inside the model of ``preset`` at ``seq_len`` tokens is causal and
    matches its reference; else why."""
    from attnbench.quality.train import build_model

    model = build_model(preset, variant, seed, device, shape).eval()
    x, g = _tokens(model.cfg.vocab_size, seq_len, device, seed, batch)
    why, a = _leak(model, x, model.cfg.vocab_size, g)
    if why:
        return why
    with torch.no_grad():
        outs = []
        for dtype in (torch.float32, torch.float64):
            ref_model = copy.deepcopy(model).to(dtype)
            ref_model.set_attention(ReferenceAttention(model.variant, dtype))
            outs.append(ref_model(x))
    why = reference_error(a, outs[0], outs[1], torch.float32)
    return None if why is None else f"inside the model, the logits differ from the reference: {why}"
