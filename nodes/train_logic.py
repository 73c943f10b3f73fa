"""What the GAS Train Solver node decides without ComfyUI: NFE lists, output names, user messages, the preview grid.

Importable without ComfyUI (tested directly). Refusals are :class:`logic.GASNodeError` sentences.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from . import logic
from ._gas import core

#: Characters a solver name cannot hold (it becomes a file name).
_BAD_NAME = '/\\:*?"<>|'
#: The trainer's named recipes (``trainer.config.RECIPES``) and the one the node starts from (``DEFAULT_RECIPE``),
#: spelled out here so that the node's schema does not import the trainer at ComfyUI's start (a test keeps them equal).
RECIPE_NAMES = ("paper", "tuned")
DEFAULT_RECIPE = "tuned"
#: The trainer's parameter names that are other input names on this node (its messages name its parameters).
NODE_NAMES = {"iters": "iterations", "lr": "learning_rate", "name": "solver_name", "ckpt_every": "checkpoint_every",
              "gas_train_size": "train_size"}


def node_configs(config_module: Any, recipe: str, nfes: Sequence[int], *, learning_rate: float = 0.0,
                 iterations: int = 0, **fields: Any) -> list[Any]:
    """One ``DistillConfig`` per NFE: recipe ``recipe``'s values, then the node's ``fields``; ``learning_rate`` 0
    keeps the recipe's rate, ``iterations`` 0 its count (the held-out check every ``max(500, iters)`` and a log line
    every ``iters / 10``, at most 100, follow the count). ``config_module`` is ``trainer.config``."""
    if recipe not in config_module.RECIPES:
        raise logic.GASNodeError(f"recipe must be one of {', '.join(config_module.RECIPES)}, got '{recipe}'")
    rate = {"lr": float(learning_rate)} if learning_rate else {}
    iters = int(iterations) or int(config_module.RECIPES[recipe]["iters"])
    schedule = {"iters": iters, "eval_every": max(500, iters), "log_every": max(1, min(100, iters // 10))}
    return [config_module.DistillConfig.from_recipe(recipe, nfe=n, **rate, **schedule, **fields) for n in nfes]


def sample_counts(train_size: int) -> dict[str, int]:
    """The trainer's sample-count fields of the node's ``train_size``: 0 keeps the recipe's (which may train GAS
    mode on more samples than GS), any other count is the count of either mode."""
    return {"train_size": int(train_size), "gas_train_size": 0} if train_size else {}


def parse_nfe(text: str) -> list[int]:
    """``"4"`` or ``"4, 6"`` -> ``[4]`` / ``[4, 6]`` (each from ``gas.MIN_NFE`` to ``gas.MAX_NFE``, no repeats)."""
    parts = [p for p in re.split(r"[,\s]+", str(text).strip()) if p]
    if not parts:
        raise logic.GASNodeError(f"nfe is empty: give one number of steps ({core.MIN_NFE} to {core.MAX_NFE}) or "
                                 "several separated by commas, e.g. 4, 6")
    values: list[int] = []
    for part in parts:
        if not part.isdigit() or not core.MIN_NFE <= int(part) <= core.MAX_NFE:
            raise logic.GASNodeError(f"nfe '{part}' is not a number of steps from {core.MIN_NFE} to {core.MAX_NFE}")
        if int(part) not in values:
            values.append(int(part))
    return values


def check_name(name: str) -> str:
    """The solver base name, stripped; refused when it cannot be part of a file name."""
    name = str(name).strip()
    if name.lower().endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    if not name or any(ch in name for ch in _BAD_NAME) or name.startswith("."):
        raise logic.GASNodeError(f"solver_name '{name}' cannot be a file name (no {_BAD_NAME} and not empty)")
    return name


def default_name(checkpoint: str | None) -> str:
    """The base name when solver_name is empty: the checkpoint's file stem, else ``model``."""
    if not checkpoint:
        return "model"
    stem = re.sub(r"\.[A-Za-z0-9]+$", "", checkpoint.replace("\\", "/").rsplit("/", 1)[-1])
    return re.sub(f"[{re.escape(_BAD_NAME)}]", "_", stem) or "model"


def solver_file(name: str, nfe: int, mode: str) -> str:
    """The file the trainer writes for one NFE: ``<name>-nfe<N>-<mode>.safetensors``."""
    return f"{name}-nfe{nfe}-{mode}.safetensors"


def node_message(error: Exception) -> str:
    """A trainer error as one sentence naming this node's inputs (``TrainerError.naming``; other errors as they are)."""
    naming = getattr(error, "naming", None)
    text = naming(NODE_NAMES) if callable(naming) else str(error)
    text = text.replace("run again with resume to continue", "queue the node again to continue")
    return " ".join(text.split())


def preview_grid(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """ComfyUI IMAGE ``[1, R*H, C*W, 3]`` from rows of images ``[C, H, W, 3]`` in [0, 1] (same shapes)."""
    lines = [torch.cat(list(row.float().clamp(0, 1)), dim=1) for row in rows]
    return torch.cat(lines, dim=0).unsqueeze(0)
