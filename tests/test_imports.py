"""The import graph, read from the source with `ast` (imports under TYPE_CHECKING and inside functions count):
no cycle among the training modules, and the layers below training never import it."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import lagvae

SRC = Path(lagvae.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _imports(module: str) -> set[str]:
    """The lagvae modules `module` imports anywhere in its source, TYPE_CHECKING blocks and function bodies
    included. `from package import name` counts as importing package.name when that is a module."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from ..y import z
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in found if name in MODULES and name != module}


def _cycle(edges: dict[str, list[str]]) -> list[str] | None:
    """One cycle of the directed graph `edges` (module -> the modules it imports), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in edges.get(m, []):
            if state.get(n) == 1:
                return [*path[path.index(n) :], n]
            if n not in state and (found := visit(n)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_parser_sees_type_checking_and_function_level_imports():
    assert "lagvae.training.loop" in _imports("lagvae.training.run")  # a plain import, for reference
    assert "lagvae.data" in _imports("lagvae.training.world")  # only under TYPE_CHECKING
    assert "lagvae.training.run" in _imports("lagvae.cli")  # only inside a function
    assert _cycle({"a": ["b"], "b": ["c"], "c": []}) is None
    assert _cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]


def test_the_training_modules_import_each_other_without_a_cycle():
    training = {m for m in MODULES if m.startswith("lagvae.training.")}
    assert len(training) > 10
    cycle = _cycle({m: sorted(_imports(m) & training) for m in training})
    assert cycle is None, " -> ".join(cycle or [])


def test_metrics_and_the_layers_below_training_do_not_import_it():
    """metrics.py is below training (docs/DESIGN.md): not even a type annotation may reach up into it."""
    below = ["lagvae.metrics", "lagvae.distributed", "lagvae.errors", "lagvae.draws", "lagvae.inference"]
    below += ["lagvae.objectives", "lagvae.posterior", "lagvae.config", "lagvae.atomic"]
    below += [m for m in MODULES if m.startswith(("lagvae.models", "lagvae.data"))]
    for module in below:
        upward = sorted(m for m in _imports(module) if m == "lagvae.training" or m.startswith("lagvae.training."))
        assert not upward, f"{module} imports {upward}"


def test_importing_lagvae_plots_keeps_the_matplotlib_backend():
    """A notebook's backend survives `import lagvae.plots` (and the training loop, which imports it)."""
    code = (
        "import matplotlib; before = matplotlib.get_backend(); import lagvae.plots, lagvae.training.loop; "
        "print(before, matplotlib.get_backend())"
    )
    env = {**os.environ, "MPLBACKEND": "svg"}
    # a hang fails it; a loaded machine (a grid beside the suite) can take a minute to import torch and matplotlib
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, timeout=240
    ).stdout
    assert out.split() == ["svg", "svg"]
