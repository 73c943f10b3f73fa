"""The sigma grid of a solver (or of no solver) for a ComfyUI model; shared by GAS Sigmas and GAS KSampler."""

from __future__ import annotations

from typing import Any

import torch

from . import logic
from ._gas import comfy_bridge, core


def model_sigmas(model: Any, solver: core.GeneralizedSolver | None, name: str, steps: int,
                 denoise: float) -> torch.Tensor:
    """Float32 SIGMAS for ``model`` (a ComfyUI MODEL): the solver's learned grid (or the uniform-time grid without
    a solver), cut to the tail ``denoise`` asks for (the sampler says how it runs a tail). An incompatible solver
    raises :class:`logic.GASNodeError`."""
    info = comfy_bridge.describe_model_sampling(model.get_model_object("model_sampling"))
    if solver is not None:
        verdict = logic.compatibility(solver, name, info, comfy_bridge.model_identity(model, fingerprint=False))
        if verdict.error is not None:
            raise logic.GASNodeError(verdict.error)
    n = logic.resolve_steps(solver, steps, name)
    schedule = logic.effective_schedule(solver, info)
    grid = logic.solver_grid(solver, schedule, n)
    return logic.grid_tail(grid, denoise).to(torch.float32)
