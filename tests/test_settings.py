"""A setting is one field: a new field of a settings dataclass is a suite key (validated by its
type, minimum and choices, and by its section's own rules) and a command-line flag, with no edit
anywhere else."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from attnbench import cli
from attnbench.bench import suite as suite_mod
from attnbench.settings import TimingConfig


@dataclass(frozen=True)
class TimingWithKnobs(TimingConfig):
    probe_rounds: int = 3  # a new setting, defined here only
    probe_mode: str = field(default="fast", metadata={"choices": ("fast", "slow"), "noun": "mode"})


@pytest.fixture
def knobs(monkeypatch):
    monkeypatch.setitem(suite_mod.SECTIONS, "timing", TimingWithKnobs)


def _op_suite(**timing):
    return suite_mod.from_dict(
        {"name": "t", "op": {"variants": ["fused.sdpa"]}, "timing": {"budget_s": 0.1, **timing}}
    )


def test_a_new_field_is_a_suite_key_validated_by_its_type_and_choices(knobs):
    s = _op_suite(probe_rounds=5, probe_mode="slow")
    assert s.timing.probe_rounds == 5 and s.timing.probe_mode == "slow"
    with pytest.raises(ValueError, match="timing.probe_rounds: must be a non-negative integer"):
        _op_suite(probe_rounds=-1)
    with pytest.raises(ValueError, match="timing.probe_mode: unknown mode 'medium'; valid: fast"):
        _op_suite(probe_mode="medium")


def test_a_new_field_is_a_flag_of_the_commands_that_read_its_section(knobs):
    parser = cli.build_parser()
    args = parser.parse_args(["op", "--variants", "fused.sdpa", "--probe-rounds", "7"])
    overrides = cli._overrides(args, "op")
    assert overrides["timing.probe_rounds"] == 7
    s = suite_mod.with_overrides(suite_mod.Suite(name="op"), overrides)
    assert s.timing.probe_rounds == 7
    with pytest.raises(SystemExit):  # argparse: not an integer
        parser.parse_args(["op", "--variants", "fused.sdpa", "--probe-rounds", "many"])
    # the hand-written flags keep their names and win over a derived one
    args = parser.parse_args(["run", "--budget", "0.2", "--ceiling-every-s", "0"])
    assert cli._overrides(args, None) == {"timing.budget_s": 0.2, "timing.ceiling_every_s": 0.0}


def test_each_section_checks_its_own_rules_and_names_the_key():
    with pytest.raises(ValueError, match="timing.min_reps: needs warmup >= 1"):
        _op_suite(min_reps=2)
    with pytest.raises(ValueError, match="op.kv_heads: 3 does not divide heads=8"):
        suite_mod.from_dict({"op": {"variants": ["fused.sdpa"], "kv_heads": [3]}})
    with pytest.raises(ValueError, match="recall.key_vocab: 8 is smaller than the largest"):
        suite_mod.from_dict({"recall": {"variants": ["fused.sdpa"], "key_vocab": 8}})
    with pytest.raises(ValueError, match="quality.eval_split: unknown split 'dev'"):
        suite_mod.from_dict({"quality": {"variants": ["fused.sdpa"], "eval_split": "dev"}})


def test_a_suite_sets_the_models_shape_on_top_of_its_preset():
    from attnbench.quality.cases import plan_quality, plan_recall
    from attnbench.quality.train import build_model

    s = suite_mod.from_dict(
        {
            "quality": {
                "variants": ["fused.sdpa"],
                "preset": "tiny",
                "model": {"dim": 96, "n_layers": 1, "n_heads": 3, "mlp_ratio": 2},
            },
            "recall": {"variants": ["fused.sdpa"], "model": {"conv_width": 0, "n_heads": 2}},
        }
    )
    train = [c for c in plan_quality(s.quality, "cpu") if c.pass_ == "train"][0]
    assert (train.heads, train.head_dim) == (3, 32)
    model = build_model(s.quality.preset, "fused.sdpa", 0, "cpu", s.quality.model)
    assert (model.cfg.dim, model.cfg.n_layers, model.cfg.mlp_ratio) == (96, 1, 2)
    assert len(model.blocks) == 1
    (recall,) = plan_recall(s.recall, "cpu")
    assert recall.heads == 2


@pytest.mark.parametrize(
    "shape, needle",
    [
        ({"width": 128}, "quality.model.width: unknown model field; valid: vocab_size, dim"),
        ({"dim": "wide"}, "quality.model.dim: must be an int, got 'wide'"),
        ({"dim": 100, "n_heads": 3}, "quality.model: dim=100 is not divisible by n_heads=3"),
        ({"n_layers": 0}, "quality.model: ModelConfig.n_layers must be >= 1, got 0"),
    ],
)
def test_a_bad_model_shape_is_rejected_naming_the_key(shape, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        suite_mod.from_dict({"quality": {"variants": ["fused.sdpa"], "model": shape}})
