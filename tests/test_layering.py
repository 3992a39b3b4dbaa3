"""The package's imports point down only (ARCHITECTURE.md, "Layers").

    data, models  <  core  <  cl  <  problems/<name>  <  experiment, main

``data`` and ``models`` are shared building blocks and import neither each other's upper
layers nor anything above; ``core`` knows no problem and no method; ``cl`` (problem-agnostic
methods) knows only the core; a problem may use everything below it but no other problem.
Every ``import``/``from ... import`` statement of every module is read with ``ast`` (function
bodies included), so a lazy import inside a function counts too. The files are parsed in a
fresh interpreter: CPython 3.11's ``ast.parse`` can fail with "AST constructor recursion depth
mismatch" while other threads run in the same process (orbax's, left by earlier tests in a
pytest worker).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jax_cavs")

# layer -> the layers it may import (itself included).
ALLOWED = {
    "data": {"data"},
    "models": {"models"},
    "core": {"core"},
    "cl": {"core", "cl"},
    "problems": {"core", "cl", "data", "models", "problems"},
    "top": {"core", "cl", "data", "models", "problems", "top"},
}


def layer_of(module: str) -> tuple[str, str | None]:
    """(layer, problem name or None) of a dotted ``jax_cavs...`` module name."""
    parts = module.split(".")[1:]
    if not parts or parts[0] not in ALLOWED or parts[0] == "top":
        return "top", None
    if parts[0] == "problems":
        return "problems", parts[1] if len(parts) > 1 else None
    return parts[0], None


def imports_of(path: str, module: str) -> list[tuple[int, str]]:
    """(line, imported jax_cavs module) for every import statement in ``path``."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            found += [(node.lineno, f"{base}.{a.name}" if base == "jax_cavs" else base)
                      for a in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "jax_cavs"]


def all_modules(package: str):
    for root, _, files in os.walk(package):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                rel = os.path.relpath(path, os.path.dirname(package))[:-3].replace(os.sep, ".")
                yield path, rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def upward_imports(package: str) -> list[str]:
    bad = []
    for path, module in all_modules(package):
        layer, problem = layer_of(module)
        for line, target in imports_of(path, module):
            target_layer, target_problem = layer_of(target)
            if target_layer not in ALLOWED[layer]:
                bad.append(f"{module}:{line} ({layer}) imports {target} ({target_layer})")
            elif (layer == "problems" and target_layer == "problems" and problem
                  and target_problem and target_problem != problem):
                bad.append(f"{module}:{line} (problem {problem}) imports another problem's "
                           f"{target}")
    return bad


def upward_imports_in_a_fresh_interpreter(package: str) -> list[str]:
    code = (f"import json, sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); "
            f"import test_layering as t; print(json.dumps(t.upward_imports({package!r})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    return json.loads(result.stdout)


def test_imports_point_down_only():
    bad = upward_imports_in_a_fresh_interpreter(PACKAGE)
    assert not bad, "imports that point up the layering:\n  " + "\n  ".join(bad)


def test_the_walker_sees_an_upward_import(tmp_path):
    """The check itself can fail: a core module importing a problem is reported."""
    core = tmp_path / "jax_cavs" / "core"
    core.mkdir(parents=True)
    (tmp_path / "jax_cavs" / "__init__.py").write_text("")
    (core / "__init__.py").write_text("")
    (core / "bad.py").write_text("def f():\n    from jax_cavs.problems.cavs import model\n")
    (core / "good.py").write_text("from jax_cavs.core import bad\nfrom . import bad as b\n")
    assert upward_imports_in_a_fresh_interpreter(str(tmp_path / "jax_cavs")) == [
        "jax_cavs.core.bad:2 (core) imports jax_cavs.problems.cavs (problems)"]


@pytest.mark.parametrize("module,layer", [("jax_cavs.core.loop", "core"),
                                          ("jax_cavs.problems.cavs.model", "problems"),
                                          ("jax_cavs.main", "top"),
                                          ("jax_cavs.experiment", "top")])
def test_layer_names(module, layer):
    assert layer_of(module)[0] == layer
