"""GITS sigma grids for the paper's SD teacher ("iPNDM on GITS sigmas at NFE n+1", docs/method.md section 9).

Two sources:

* :func:`comfyui_gits_sigmas`: the published GITS tables for SD1.x that ComfyUI ships
  (``comfy_extras/nodes_gits.py``, ``NOISE_LEVELS[coeff][steps-2]``), read as data from a ComfyUI folder with
  :func:`ast.literal_eval` (nothing is imported or copied). Only valid for SD1.x's discrete schedule.
* :func:`search_gits_sigmas`: the GITS idea applied to any model: integrate a few warm-up samples accurately on a fine
  log-SNR grid, take the one-step Euler error from each fine point ``i`` to each later point ``j`` as the cost
  ``c(i, j) = mean |x_i + (s_j - s_i) (x_i - D(x_i, s_i)) / s_i - x_j|``, and pick the ``steps``-step path from the
  first to the last fine point with the smallest total cost (dynamic programming). It is "GITS-style", not the
  published tables (no coefficient sweep).
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gas import NoiseSchedule, sample_gas

__all__ = ["comfyui_gits_sigmas", "logsnr_grid", "search_gits_sigmas"]


def logsnr_grid(schedule: NoiseSchedule, s0: float, s_end: float, steps: int) -> torch.Tensor:
    """``steps + 1`` sigmas from ``s0`` to ``s_end``, uniform in the half log-SNR ``lambda`` (float64)."""
    lo = schedule.lam(torch.tensor([s0, s_end], dtype=torch.float64))
    lam = torch.linspace(float(lo[0]), float(lo[1]), steps + 1, dtype=torch.float64)
    s = torch.sigmoid(-lam) if schedule.space == "flow" else torch.exp(-lam)
    s[0], s[-1] = s0, s_end
    return s


def comfyui_gits_sigmas(comfy_root: str | Path, steps: int, coeff: float = 1.20) -> list[float] | None:
    """GITS sigmas (``steps + 1`` values, last one the schedule's sigma_min, no trailing 0) from ComfyUI's table.

    Returns None when the ComfyUI folder has no readable table, or ``steps`` is outside 2..20.
    """
    path = Path(comfy_root) / "comfy_extras" / "nodes_gits.py"
    if not (2 <= steps <= 20) or not path.is_file():
        return None
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "NOISE_LEVELS"
                                                for t in node.targets):
            try:
                table: dict[Any, Any] = ast.literal_eval(node.value)
            except ValueError:
                return None
            rows = table.get(round(coeff, 2))
            if not rows or len(rows) < steps - 1:
                return None
            row = [float(v) for v in rows[steps - 2]]
            return row if len(row) == steps + 1 else None
    return None


def _fine_trajectory(denoiser: Callable[..., torch.Tensor], schedule: NoiseSchedule, x_init: torch.Tensor,
                     cond: dict[str, Any], grid: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """States ``x_i`` and data predictions ``D(x_i, s_i)`` along DPM-Solver++(3M) on ``grid``."""
    states: list[torch.Tensor] = []
    preds: list[torch.Tensor] = []

    def grab(info: dict[str, Any]) -> None:
        states.append(info["x"].detach().float())
        preds.append(info["denoised"].detach().float())

    final = sample_gas(denoiser, x_init, grid, extra_args=cond, callback=grab, disable=True, schedule=schedule)
    states.append(final.detach().float())
    return states, preds


def search_gits_sigmas(denoiser: Callable[..., torch.Tensor], schedule: NoiseSchedule, x_init: torch.Tensor,
                cond: dict[str, Any], s0: float, s_end: float, steps: int, *, fine: int = 100) -> list[float]:
    """A GITS-style grid of ``steps`` steps from ``s0`` to ``s_end`` (see the module docstring).

    ``x_init`` is the warm-up batch's start state at ``s0`` and ``cond`` its conditioning.
    """
    if steps < 1:
        raise ValueError("steps must be positive")
    fine = max(fine, steps)
    grid = logsnr_grid(schedule, s0, s_end, fine)
    with torch.no_grad():
        xs, ds = _fine_trajectory(denoiser, schedule, x_init, cond, grid)
        s = grid.tolist()
        n = len(s)
        cost = torch.full((n, n), float("inf"), dtype=torch.float64)
        for i in range(n - 1):
            slope = (xs[i] - ds[i]) / s[i]
            for j in range(i + 1, n):
                cost[i, j] = float((xs[i] + (s[j] - s[i]) * slope - xs[j]).abs().mean())
    # best[k, j]: cheapest k-step path from point 0 to point j
    best = torch.full((steps + 1, n), float("inf"), dtype=torch.float64)
    back = torch.zeros((steps + 1, n), dtype=torch.long)
    best[0, 0] = 0.0
    for k in range(1, steps + 1):
        total = best[k - 1].reshape(-1, 1) + cost  # [from, to]
        best[k], back[k] = total.min(dim=0)
    path = [n - 1]
    for k in range(steps, 0, -1):
        path.append(int(back[k, path[-1]]))
    path.reverse()
    return [s[i] for i in path]

