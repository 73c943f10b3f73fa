"""The pack's trainer as seen from the node modules (the GAS Train Solver node runs the trainer's own code).

The trainer imports the core as the top-level package ``gas``. In the ComfyUI-free tests the repository root is on
``sys.path``, so ``gas`` and ``trainer`` are top-level packages already. Inside ComfyUI the pack is a package named
after its folder (``custom_nodes.ComfyUI-GAS``) and nothing of it is top-level: the core the nodes use,
``<pack>.gas``, is then registered as ``gas`` (with its submodules), so that the trainer, imported as
``<pack>.trainer``, shares that one core (one ``GeneralizedSolver`` class, one solver-file reader). A different
package already importable as ``gas`` is refused with one sentence rather than mixed in.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from types import ModuleType

from ._gas import core


class TrainerImportError(ImportError):
    """The trainer cannot be imported next to another package called ``gas``."""


def _alias_core() -> None:
    """Make ``import gas`` / ``import gas.<sub>`` resolve to this pack's core package."""
    present = sys.modules.get("gas")
    if present is core:
        return
    if present is not None:
        raise TrainerImportError(f"another package named 'gas' is already imported ({getattr(present, '__file__', '')}"
                                 "), so the GAS trainer cannot run inside this ComfyUI")
    for info in pkgutil.iter_modules(core.__path__):
        importlib.import_module(f"{core.__name__}.{info.name}")
    sys.modules["gas"] = core
    prefix = core.__name__ + "."
    for name, module in list(sys.modules.items()):
        if name.startswith(prefix) and module is not None:
            sys.modules["gas." + name[len(prefix):]] = module


def load() -> dict[str, ModuleType]:
    """The trainer modules the node uses, by their names in ``trainer/``."""
    if "." in (__package__ or ""):
        _alias_core()
        base = __package__.rsplit(".", 1)[0] + ".trainer"
    else:  # imported as top-level ``nodes`` (tests without ComfyUI)
        base = "trainer"
    names = ("distill", "multi_nfe", "config", "distributed", "errors", "prompts", "comfy_adapter", "graph_problem",
             "report")
    return {name: importlib.import_module(f"{base}.{name}") for name in names}
