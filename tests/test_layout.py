"""The house: rooms by dependency, lowest first; a room imports only its own and lower rooms
(lazy imports inside functions included), and no module-level import cycle exists."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# room of each module (by dotted prefix, longest first) and its rank: lower never imports higher
RANKS = {
    "attnbench.case": 0,
    "attnbench.settings": 0,
    "attnbench.attention": 1,
    "attnbench.tune": 1,
    "attnbench.spec": 2,
    "attnbench.variant": 2,
    "attnbench.registry": 2,
    "attnbench.variants": 3,
    "attnbench.model": 4,
    "attnbench.hf": 4,
    "attnbench.quality": 5,
    "attnbench.bench": 6,
    "attnbench.report": 7,
    "attnbench.launch": 8,
    "attnbench.gpucheck": 8,
    "attnbench.cli": 8,
    "attnbench": 8,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "attnbench").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(p for p in parts if p != "__init__")] = path
    for path in sorted((ROOT / "variants").glob("*.py")):
        name = "attnbench.variants" + ("" if path.stem == "__init__" else f".{path.stem}")
        out[name] = path
    return out


def _rank(module: str) -> int:
    best = max((k for k in RANKS if module == k or module.startswith(k + ".")), key=len)
    return RANKS[best]


def _imports(module: str, path: Path, mods: dict) -> list[tuple[str, bool]]:
    """(imported attnbench module, at module level?) for every import statement; ``from P
    import x`` counts P.x where it is a module, else P. The root package (the public surface,
    run by every import of a submodule) is not a room's dependency."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
        for name in names:
            if name.startswith("attnbench.") and name != module:
                out.append((name, id(node) in top))
    return out


def test_rooms_import_only_their_own_and_lower_rooms():
    mods = _modules()
    bad = []
    for module, path in mods.items():
        for name, _ in _imports(module, path, mods):
            target = max(
                (m for m in mods if name == m or name.startswith(m + ".")), key=len, default=None
            )
            if target and _rank(target) > _rank(module):
                bad.append(f"{module} imports {target}")
    assert not bad, bad


def test_no_module_level_import_cycle():
    mods = _modules()
    graph = {m: set() for m in mods}
    for module, path in mods.items():
        for name, top in _imports(module, path, mods):
            target = max(
                (m for m in mods if name == m or name.startswith(m + ".")), key=len, default=None
            )
            if top and target and target != module and target != "attnbench":
                graph[module].add(target)
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for n in graph[m]:
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n) :] + [n] if n in stack else [m, n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles
