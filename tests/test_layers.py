"""Import directions: the package is a stack of layers, and an import may only point down the stack.

Every ``import``/``from … import`` of a coophash module anywhere in a file counts, inside functions too (an
upward import hidden in a function is still an upward arrow).  docs/architecture.md draws the same stack.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "coophash"

# Layer of each top-level part of the package, lowest first.  A module may import modules of its own part
# and of parts with a lower layer; two different parts on one layer never import each other.
LAYERS: dict[str, int] = {
    "utils": 0,
    "plots": 0,
    "config": 0,
    "codes": 1,
    "codefile": 2,
    "metrics": 2,
    "index": 2,
    "data": 2,
    "fakes": 2,
    "nets": 3,
    "losses": 4,
    "methods": 5,
    "train": 6,
    "pipeline": 7,
    "api": 8,
    "demo": 9,
    "serve": 9,
    "bench": 10,
    "suite": 11,
    "cli": 12,
    "__main__": 13,
    "__init__": 13,
}
LIBRARY_CORE = [p for p, r in LAYERS.items() if r <= LAYERS["serve"]]  # never imports the suite or the CLI


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every coophash module named by an import statement in ``path`` (absolute or relative)."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    return _imports_in(path.read_text(), package)


def _imports_in(source: str, package: str) -> set[str]:
    """Coophash modules imported anywhere in ``source``, a module of ``package``."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "coophash")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] == "coophash":
                out.add(name)
                out.update(f"{name}.{a.name}" for a in node.names)  # `from coophash import cli`
    return out


def _part(module: str) -> str | None:
    """Top-level part of a coophash module name (``coophash.train.trainer`` → ``train``)."""
    parts = module.split(".")
    if parts == ["coophash"]:
        return "__init__"
    part = parts[1]
    return part if (SRC / part).is_dir() or (SRC / f"{part}.py").is_file() else None


def _edges() -> dict[str, set[str]]:
    """part → parts it imports (only arrows between different parts)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for path in SRC.rglob("*.py"):
        src = _part(_module_name(path))
        for name in _imports(path):
            dst = _part(name)
            if src and dst and dst != src:
                edges[src].add(dst)
    return edges


def _arrows() -> list[tuple[str, str, str]]:
    """(file, imported module, its part) for every import between different parts."""
    out = []
    for path in sorted(SRC.rglob("*.py")):
        src = _part(_module_name(path))
        for name in sorted(_imports(path)):
            dst = _part(name)
            if src and dst and dst != src:
                out.append((str(path.relative_to(SRC)), name, dst))
    return out


def test_every_part_has_a_layer():
    parts = {p.stem if p.is_file() else p.name for p in SRC.iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"}
    assert parts - set(LAYERS) == set(), "add the new part to LAYERS here and to docs/architecture.md"


def test_imports_point_down_the_stack():
    bad = []
    for file, name, dst in _arrows():
        src = _part(_module_name(SRC / file))
        if LAYERS[dst] >= LAYERS[src]:
            bad.append(f"{file} imports {name} ({src} is layer {LAYERS[src]}, {dst} is layer {LAYERS[dst]})")
    assert bad == []


@pytest.mark.parametrize("low", ["codes", "metrics", "index", "data"])
def test_foundations_know_no_networks_training_or_cli(low):
    forbidden = {"nets", "losses", "methods", "train", "pipeline", "api", "suite", "bench", "cli"}
    assert _edges()[low] & forbidden == set()


def test_losses_are_formulas():
    assert _edges()["losses"] & {"methods", "train", "pipeline", "api", "suite", "bench", "cli"} == set()


def test_methods_do_not_drive_training():
    assert _edges()["methods"] & {"train", "pipeline", "api", "suite", "bench", "cli"} == set()


def test_library_never_imports_cli_or_suite():
    for part in LIBRARY_CORE:
        assert _edges()[part] & {"cli", "suite", "bench"} == set(), part


def test_no_cycle_between_parts():
    edges = _edges()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_the_checker_sees_relative_and_function_level_imports():
    """The walker itself: relative imports resolve against the package; imports inside functions count."""
    source = "from .base import x\nfrom . import dpsh\ndef f():\n    from coophash.cli import main\n"
    assert _imports_in(source, "coophash.losses") >= {"coophash.losses.base", "coophash.losses.dpsh", "coophash.cli"}
    assert _part("coophash.losses.base") == "losses" and _part("coophash.cli.train") == "cli"
