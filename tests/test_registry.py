"""The public surface: spec strings, parameters, errors, capabilities, user registration."""

from __future__ import annotations

import pytest
import torch

import attnbench
from attnbench.case import FAMILIES, Case, QualityCase
from helpers import ROOT


def test_every_family_has_its_named_implementations():
    names = set(attnbench.variant_names())
    expected = {
        "naive.softmax",
        "fused.sdpa",
        "fused.sdpa_math",
        "fused.sdpa_flash",
        "fused.sdpa_efficient",
        "fused.sdpa_cudnn",
        "fused.flex",
        "fused.flash_attn",
        "fused.flash_attn3",
        "fused.xformers",
        *(
            f"sliding_window.{i}"
            for i in ("masked", "blocked", "flex", "flash_attn", "xformers", "triton")
        ),
        *(
            f"sparse.{p}.{i}"
            for p in ("strided", "bigbird", "longformer")
            for i in ("masked", "blocked", "flex")
        ),
        *(
            f"linear.{m}.{i}"
            for m in ("elu", "performer", "taylor")
            for i in ("quadratic", "cumsum", "chunked", "recurrent", "fla")
        ),
    }
    assert expected <= names
    assert {m["family"] for m in attnbench.list_variants()} == set(FAMILIES)


def test_metadata_fields():
    meta = {m["name"]: m for m in attnbench.list_variants()}
    sw = meta["sliding_window.blocked"]
    assert sw["family"] == "sliding_window" and sw["math"] == "sliding_window"
    assert sw["params"] == {"window": 256, "block": 64} and sw["exact"] is False
    assert meta["fused.sdpa"]["exact"] is True
    assert meta["linear.performer.chunked"]["params"] == {
        "features": 128,
        "seed": 0,
        "chunk": "auto",
    }
    assert [m["name"] for m in attnbench.list_variants("linear")] == sorted(
        n for n in meta if n.startswith("linear.")
    )


def test_spec_parsing_and_labels():
    v = attnbench.get_variant("sliding_window.blocked:window=128")
    assert v.params == {"window": 128, "block": 64}
    assert v.label == "sliding_window.blocked:window=128,block=64"
    assert v.pattern.window == 128
    # short unambiguous suffix, keyword override, round trip through the label
    assert attnbench.get_variant("elu.chunked:chunk=32").label == "linear.elu.chunked:chunk=32"
    assert attnbench.get_variant("sliding_window.blocked", window=7).params["window"] == 7
    assert attnbench.get_variant(v.label).label == v.label


@pytest.mark.parametrize(
    "spec, needles",
    [
        (
            "sliding_window.blockd",
            ["unknown variant 'sliding_window.blockd'", "sliding_window.blocked"],
        ),
        (
            "sliding_window.blocked:windw=3",
            ["unknown parameter 'windw'", "did you mean window", "valid: window=256"],
        ),
        ("sliding_window.blocked:window=abc", ["window='abc' is not a valid int"]),
        ("sliding_window.blocked:window=0", ["window must be a positive integer, got 0"]),
        ("linear.elu.chunked:chunk=-1", ['chunk must be a positive integer or "auto", got -1']),
        ("chunked", ["ambiguous", "linear.elu.chunked", "linear.performer.chunked"]),
        ("sliding_window.blocked:window", ["bad parameter 'window'", "key=value"]),
        ("", ["non-empty"]),
    ],
)
def test_bad_specs_raise_value_error_naming_the_problem(spec, needles):
    with pytest.raises(ValueError) as info:
        attnbench.get_variant(spec)
    for needle in needles:
        assert needle in str(info.value)


def test_bad_inputs_raise_value_error():
    v = attnbench.get_variant("sliding_window.blocked")
    q = torch.randn(1, 8, 2, 16)
    with pytest.raises(ValueError, match=r"\(B, N, H, D\)"):
        v(q[0], q[0], q[0])
    with pytest.raises(ValueError, match="share"):
        v(q, q[:, :4], q)
    with pytest.raises(ValueError, match="divides"):
        v(torch.randn(1, 8, 3, 16), q, q)  # 2 key/value heads cannot serve 3 query heads
    with pytest.raises(ValueError, match="causal attention only"):
        v(q, q, q, causal=False)
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        v.not_supported_reasons(dtype="float8")
    with pytest.raises(ValueError, match="unknown pass 'bwd_only'"):
        Case(pass_="bwd_only")
    with pytest.raises(ValueError, match="kv_heads=3 must divide heads=8"):
        Case(heads=8, kv_heads=3)


def test_cases_have_one_typed_form_from_plan_to_row():
    case = Case(
        variant="fused.sdpa", pass_="bwd", seq_len=512, heads=8, kv_heads=2, dtype=torch.bfloat16
    )
    assert case.case_id == "op|fused.sdpa|bwd|B1-N512-H8-KV2-D64|bfloat16|cpu|r0"
    assert case.attention_pass == "fwd_bwd"
    row = case.row()
    assert row["pass"] == "bwd" and row["dtype"] == "bfloat16" and row["kv_heads"] == 2
    assert Case.from_row(row) == case
    assert Case(heads=4).kv_heads == 4  # default: one key/value head per query head
    q = QualityCase(
        variant="fused.sdpa",
        dataset="pystdlib",
        preset="tiny",
        budget="1000tok",
        autocast=True,
        eval_lens=(32, 64),
    )
    back = Case.from_row(q.row())
    assert back == q and isinstance(back, QualityCase) and q.row()["dtype"] == "bfloat16-autocast"


def test_not_supported_reasons_are_readable():
    fa = attnbench.get_variant("fused.flash_attn")
    reasons = fa.not_supported_reasons(device="cpu")
    assert any("device 'cpu' not supported" in r for r in reasons)
    assert any("float32 not supported" in r for r in reasons)
    assert attnbench.get_variant("fused.sdpa").not_supported_reasons(device="cpu") == []
    flex = attnbench.get_variant("fused.flex")
    assert flex.not_supported_reasons(pass_="fwd") == []
    assert flex.not_supported_reasons(pass_="fwd_bwd") == ["backward not supported on cpu"]
    rec = attnbench.get_variant("linear.elu.recurrent")
    assert "seq_len 100000" in rec.not_supported_reasons(seq_len=100_000)[0]


def test_cuda_reasons_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    reasons = attnbench.get_variant("fused.sdpa").not_supported_reasons(device="cuda")
    assert reasons == ["CUDA is not available on this machine"]


def test_xformers_reasons_come_from_its_dispatcher():
    pytest.importorskip("xformers")
    variant = attnbench.get_variant("fused.xformers")
    assert variant.not_supported_reasons(device="cpu", probe=False) == []  # what the launcher asks
    reasons = variant.not_supported_reasons(device="cpu")  # the worker: the kernel probe runs
    assert reasons and all(r.startswith("xformers: ") for r in reasons)
    assert any("device=cpu" in r for r in reasons), reasons


def test_probes_are_cached_and_a_raising_import_is_a_reason():
    from attnbench.attention import backends

    calls = []

    def run(q, k, v):
        calls.append(1)
        raise ImportError("flash build unusable on this device")

    for _ in range(3):  # a new closure each time, as a variant's probe makes: one run
        reasons = backends.probe(
            ("test", "import-error"), lambda q, k, v: run(q, k, v), "cpu", torch.float32, 16, False
        )
    assert calls == [1] and reasons == ["ImportError: flash build unusable on this device"]


def test_triton_needs_the_interpreter_on_cpu(monkeypatch):
    pytest.importorskip("triton")
    v = attnbench.get_variant("sliding_window.triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET=1" in v.not_supported_reasons(device="cpu")[0]
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert v.not_supported_reasons(device="cpu") == []
    assert "bfloat16 not supported" in v.not_supported_reasons(device="cpu", dtype="bfloat16")[0]
    # head dims the kernel would pad (tl.arange needs powers of two) are declared, not padded
    assert "head_dim 80 not supported" in v.not_supported_reasons(device="cpu", head_dim=80)[0]


def test_missing_package_is_a_reason_not_an_import_error():
    @attnbench.register_variant(
        "fused.needs_missing_pkg",
        family="fused",
        supports=attnbench.Capabilities(requires=("surely_not_installed_pkg",)),
    )
    def needs_pkg(q, k, v):
        import surely_not_installed_pkg  # noqa: F401

    try:
        reasons = attnbench.get_variant("fused.needs_missing_pkg").not_supported_reasons()
        assert reasons == [
            "needs the optional package 'surely_not_installed_pkg', which is not installed"
        ]
    finally:
        attnbench.unregister_variant("fused.needs_missing_pkg")


def test_a_broken_install_is_a_reason_with_its_import_error(tmp_path, monkeypatch):
    """A package that is present but does not import (built for another torch, say) is that
    variant's reason, with the error, never an exception in the middle of a sweep."""
    from attnbench.attention import backends

    (tmp_path / "broken_kernels_pkg").mkdir()
    (tmp_path / "broken_kernels_pkg" / "__init__.py").write_text(
        "raise ImportError('undefined symbol: _ZN3c104cuda9SetDeviceEi')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    backends.missing_reason.cache_clear()

    @attnbench.register_variant(
        "fused.needs_broken_pkg",
        family="fused",
        supports=attnbench.Capabilities(requires=("broken_kernels_pkg",)),
    )
    def needs_broken(q, k, v):
        return q

    try:
        (reason,) = attnbench.get_variant("fused.needs_broken_pkg").not_supported_reasons()
        assert "installed but does not import" in reason and "undefined symbol" in reason
    finally:
        attnbench.unregister_variant("fused.needs_broken_pkg")
        backends.missing_reason.cache_clear()


def test_user_registration_example_from_the_readme():
    from attnbench.attention.patterns import SlidingWindow
    from attnbench.attention.reference import softmax_attention

    @attnbench.register_variant("sliding_window.my_idea", family="sliding_window")
    def my_idea(q, k, v, *, window: int = 128):
        """Dense masked attention, written by a user."""
        return softmax_attention(q, k, v, SlidingWindow(window).dense_mask(q.shape[1]))

    try:
        v = attnbench.get_variant("my_idea:window=5")
        assert v.family == "sliding_window" and v.pattern == SlidingWindow(5)
        q, k, vv = torch.randn(3, 2, 20, 2, 8).unbind(0)
        torch.testing.assert_close(v(q, k, vv), v.reference(q, k, vv).float())
        with pytest.raises(ValueError, match="already registered"):
            attnbench.register_variant("sliding_window.my_idea", family="sliding_window")(my_idea)
    finally:
        attnbench.unregister_variant("sliding_window.my_idea")


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"family": "dense"}, "unknown family 'dense'"),
        ({"family": "sparse"}, "cannot infer its math"),
        ({"family": "linear", "math": "relu"}, "unknown math 'relu'"),
    ],
)
def test_bad_registrations(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        attnbench.register_variant("x.y", **kwargs)


def test_registration_checks_the_function_signature():
    with pytest.raises(ValueError, match="must take keyword parameter\\(s\\) window"):
        attnbench.register_variant("sliding_window.no_window", family="sliding_window")(
            lambda q, k, v: q
        )
    with pytest.raises(ValueError, match="needs a default"):

        def f(q, k, v, *, window):
            return q

        attnbench.register_variant("sliding_window.no_default", family="sliding_window")(f)


def test_plugin_file_registers_variants(tmp_path):
    plugin = tmp_path / "my_variants.py"
    plugin.write_text(
        "import attnbench\n"
        "from attnbench.attention.patterns import Full\n"
        "from attnbench.attention.reference import softmax_attention\n"
        "@attnbench.register_variant('naive.plugin_copy', family='naive')\n"
        "def plugin_copy(q, k, v):\n"
        "    n = q.shape[1]\n"
        "    return softmax_attention(q, k, v, Full().dense_mask(n))\n"
    )
    try:
        attnbench.load_plugin(str(plugin))
        assert "naive.plugin_copy" in attnbench.variant_names()
    finally:
        attnbench.unregister_variant("naive.plugin_copy")
    with pytest.raises(ValueError, match="does not exist"):
        attnbench.load_plugin(str(tmp_path / "missing.py"))


def test_static_reasons_are_cached_per_implementation_and_hit():
    info = attnbench.registry._REGISTRY["fused.sdpa"]
    info.static_reasons.clear()
    a, b = attnbench.get_variant("fused.sdpa"), attnbench.get_variant("sdpa")
    assert a is not b and a.info is b.info
    assert attnbench.get_variant("fused.sdpa") is a  # a spec string is parsed once
    a.not_supported_reasons(device="cpu", dtype=torch.float16)
    assert len(info.static_reasons) == 1
    b.not_supported_reasons(device="cpu", dtype=torch.float16)  # a hit: no new entry
    assert len(info.static_reasons) == 1
    b.not_supported_reasons(device="cpu", dtype=torch.float32)
    assert len(info.static_reasons) == 2


PATTERN_PLUGIN = '''
"""A new pattern in a plugin's own file: every other key within a window."""
from dataclasses import dataclass

import attnbench
from attnbench.attention.masked import masked_sdpa
from attnbench.attention.patterns import Pattern


@dataclass(frozen=True)
class Dilated(Pattern):
    window: int
    causal = True

    def __post_init__(self):
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")

    @property
    def label(self):
        return f"dilated(window={self.window})"

    def mask_fn(self, n, device="cpu"):
        w = self.window
        return lambda q, k: (k <= q) & (q - k < w) & ((q - k) % 2 == 0)


attnbench.register_math("dilated", lambda window: Dilated(window), description="every other key")


@attnbench.register_variant("sparse.dilated.masked", family="sparse", math="dilated")
def dilated_masked(q, k, v, *, window: int = 8):
    """Dense-masked SDPA over the dilated pattern."""
    return masked_sdpa(q, k, v, Dilated(window))
'''


def test_a_plugin_brings_its_own_pattern(tmp_path):
    from attnbench.attention.reference import MATHS
    from helpers import assert_close_to_reference, random_qkv

    plugin = tmp_path / "dilated.py"
    plugin.write_text(PATTERN_PLUGIN)
    try:
        attnbench.load_plugin(str(plugin))
        v = attnbench.get_variant("dilated.masked:window=6")
        assert v.pattern.label == "dilated(window=6)" and not v.exact
        assert v.pattern.attended_pairs(12) == sum(
            sum(1 for j in range(i + 1) if i - j < 6 and (i - j) % 2 == 0) for i in range(12)
        )
        q, k, vv = random_qkv((2, 20, 2, 8), torch.float32)
        plain = v.reference(q, k, vv, dtype=torch.float32)
        assert_close_to_reference(v.label, v(q, k, vv), plain, v.reference(q, k, vv), torch.float32)
        with pytest.raises(ValueError, match="window must be >= 1, got 0"):
            attnbench.get_variant("dilated.masked:window=0")
        with pytest.raises(ValueError, match="already registered"):
            attnbench.register_math("dilated", lambda window: None)
    finally:
        attnbench.unregister_variant("sparse.dilated.masked")
        MATHS.pop("dilated", None)


def test_a_math_must_build_a_pattern_or_a_feature_map():
    from attnbench.attention.reference import MATHS

    attnbench.register_math("not_a_pattern", lambda: object())
    try:
        attnbench.register_variant("sparse.not_a_pattern.x", family="sparse")(lambda q, k, v: q)
        with pytest.raises(ValueError, match="must return a Pattern or a FeatureMap"):
            attnbench.get_variant("sparse.not_a_pattern.x")
    finally:
        attnbench.unregister_variant("sparse.not_a_pattern.x")
        MATHS.pop("not_a_pattern", None)
    with pytest.raises(ValueError, match="must be an identifier"):
        attnbench.register_math("two words", lambda: None)


def test_a_bound_variant_is_reused_until_the_registry_changes():
    import attnbench.spec

    calls = []
    real = attnbench.registry.parse_spec
    attnbench.registry.parse_spec = lambda s: calls.append(s) or real(s)
    try:
        first = attnbench.get_variant("sliding_window.blocked:window=24")
        assert attnbench.get_variant("sliding_window.blocked:window=24") is first
        assert calls == ["sliding_window.blocked:window=24"]
        assert attnbench.get_variant("sliding_window.blocked", window=24) is not first  # keywords
        attnbench.register_variant("naive.cache_probe", family="naive")(lambda q, k, v: q)
        assert attnbench.get_variant("sliding_window.blocked:window=24") is not first  # cleared
    finally:
        attnbench.registry.parse_spec = real
        attnbench.unregister_variant("naive.cache_probe")
    assert attnbench.spec.parse_spec is real


def test_plugins_flag_repeats_and_leaves_positionals_alone():
    from attnbench.cli import build_parser

    args = build_parser().parse_args(["report", "--plugins", "a.py", "runs/x"])
    assert args.plugins == ["a.py"] and args.run_dir == "runs/x"
    args = build_parser().parse_args(["list", "--plugins", "a.py", "--plugins", "b.py"])
    assert args.plugins == ["a.py", "b.py"]


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("```python\n# my_variants.py\n") + len("```python\n")
    return text[start : text.index("```", start)]


def test_the_readme_example_verbatim(tmp_path):
    """The README's one-file variant, as printed: it passes ruff, registers, runs close to its
    reference, rejects block=0 by name, and its prepare= builds the plan the call then uses."""
    import subprocess
    import sys

    from attnbench.attention.blocksparse import block_plan
    from helpers import assert_close_to_reference, random_qkv

    plugin = tmp_path / "my_variants.py"
    plugin.write_text(_readme_example())
    lint = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--config",
            str(ROOT / "pyproject.toml"),
            str(plugin),
        ],
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    try:
        attnbench.load_plugin(str(plugin))
        v = attnbench.get_variant("my_idea:window=24,block=8")
        with pytest.raises(ValueError, match="block must be a positive integer, got 0"):
            attnbench.get_variant("my_idea:block=0")
        block_plan.cache_clear()
        v.prepare(Case(seq_len=40, heads=2, head_dim=8))
        q, k, vv = random_qkv((2, 40, 2, 8), torch.float32)
        out = v(q, k, vv)
        assert block_plan.cache_info().hits == 1 and block_plan.cache_info().misses == 1
        plain = v.reference(q, k, vv, dtype=torch.float32)
        assert_close_to_reference(v.label, out, plain, v.reference(q, k, vv), torch.float32)
    finally:
        attnbench.unregister_variant("sliding_window.my_idea")
        attnbench.registry._PLUGINS.discard(str(plugin.resolve()))
