"""attnbench: a harness for benchmarking efficient attention.

Public surface::

    import attnbench
    attnbench.list_variants()                                   # metadata of every variant
    attn = attnbench.get_variant("sliding_window.blocked:window=256")
    out = attn(q, k, v)            # (B, N, H, D) in and out; causal by default
    attn.not_supported_reasons(device="cuda", dtype=torch.bfloat16)   # [] where it runs

    @attnbench.register_variant("my.idea", family="sliding_window")
    def my_idea(q, k, v, *, window: int = 128): ...
"""

from attnbench.case import FAMILIES, Capabilities, Case
from attnbench.registry import (
    Variant,
    get_variant,
    list_variants,
    load_plugin,
    positive,
    register_math,
    register_variant,
    unregister_variant,
    variant_names,
)

__all__ = [
    "FAMILIES",
    "Capabilities",
    "Case",
    "Variant",
    "get_variant",
    "list_variants",
    "load_plugin",
    "positive",
    "register_math",
    "register_variant",
    "unregister_variant",
    "variant_names",
]
__version__ = "0.1.0"  # the one place it is written: pyproject.toml reads it statically
