"""The layering rule of ``gas`` (its module docstring, and the README's folder table): the core imports the standard
library, torch, safetensors and numpy (tqdm if installed), and ComfyUI only lazily, inside the functions of
``gas/comfy_bridge.py``."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers.paths import REPO_ROOT

GAS_DIR = REPO_ROOT / "gas"
COMFY_MODULES = ("comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "latent_preview", "nodes",
                 "server", "execution")
ALLOWED_THIRD_PARTY = {"torch", "safetensors", "numpy"}
LAZY_ONLY = {"tqdm"}  # the progress bar, inside a function, when installed

# Imports gas and every submodule in a fresh interpreter in which ComfyUI cannot be imported (a finder refuses and
# records every attempt); prints what was attempted and which ComfyUI modules ended up in sys.modules.
PROBE = textwrap.dedent("""
    import importlib, importlib.abc, json, pkgutil, sys
    blocked = set(sys.argv[1].split(","))
    attempts = []

    class NoComfyUI(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in blocked:
                attempts.append(name)
                raise ImportError(f"{name} is not available (ComfyUI absent)")
            return None

    sys.meta_path.insert(0, NoComfyUI())
    import gas
    names = sorted(m.name for m in pkgutil.iter_modules(gas.__path__, "gas."))
    for name in names:
        importlib.import_module(name)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in blocked)
    print(json.dumps({"modules": names, "attempts": attempts, "loaded": loaded}))
""")


def probe(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PROBE, ",".join(COMFY_MODULES)], cwd=root, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin",
                                                       "OMP_NUM_THREADS": "1"})


def test_gas_and_every_submodule_import_without_comfyui() -> None:
    done = probe(REPO_ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    expected = {f"gas.{p.stem}" for p in GAS_DIR.glob("*.py") if p.stem != "__init__"}
    assert set(result["modules"]) == expected
    assert result["attempts"] == [], "gas tried to import ComfyUI at import time"
    assert result["loaded"] == []


GUARDED = "try:\n    import folder_paths\nexcept ImportError:\n    folder_paths = None\n"


@pytest.mark.parametrize("line", ["import comfy.samplers\n", GUARDED], ids=["plain", "guarded"])
def test_the_probe_catches_a_comfyui_import_at_import_time(tmp_path: Path, line: str) -> None:
    """The guard can fail: a copy of gas with one top-level ComfyUI import (even a guarded one) is caught."""
    (tmp_path / "gas").mkdir()
    for path in GAS_DIR.glob("*.py"):
        (tmp_path / "gas" / path.name).write_text(path.read_text())
    solver = tmp_path / "gas" / "solver.py"
    solver.write_text(line + solver.read_text().replace("from __future__ import annotations\n", ""))
    done = probe(tmp_path)
    if line == GUARDED:
        assert done.returncode == 0, done.stderr[-4000:]
        assert json.loads(done.stdout.strip().splitlines()[-1])["attempts"] == ["folder_paths"]
    else:
        assert done.returncode != 0 and "comfy is not available (ComfyUI absent)" in done.stderr


def _imports(tree: ast.AST) -> list[tuple[str, bool]]:
    """(top-level module name, inside a function) for every absolute import in a module."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((alias.name.split(".")[0], in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module.split(".")[0], in_function))
            visit(child, inner)

    visit(tree, False)
    return found


def test_gas_imports_only_what_the_rule_allows() -> None:
    stdlib = set(sys.stdlib_module_names)
    for path in sorted(GAS_DIR.glob("*.py")):
        for module, in_function in _imports(ast.parse(path.read_text(), str(path))):
            where = f"{path.name}: {module}"
            if module in stdlib or module == "__future__" or module in ALLOWED_THIRD_PARTY:
                continue
            if module in LAZY_ONLY:
                assert in_function, f"{where} must be imported inside a function"
                continue
            assert module in COMFY_MODULES, f"{where} is not allowed in gas/"
            assert path.name == "comfy_bridge.py" and in_function, f"{where}: ComfyUI only lazily, in comfy_bridge.py"
