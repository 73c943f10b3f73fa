"""The sigma grid of a solver file (or of no solver) for a ComfyUI model; shared by GAS Sigmas, GAS KSampler and the
scheduler ``gas``."""

from __future__ import annotations

import logging
from typing import Any

import torch

from . import logic, solver_choice
from ._gas import comfy_bridge

log = logging.getLogger(__name__)


def sampling_sigmas(model_sampling: Any, solvers: Any, name: str, steps: int, denoise: float,
                    identity: dict[str, Any] | None = None) -> torch.Tensor:
    """Float32 SIGMAS on a ComfyUI ``model_sampling``: the grid for ``steps`` (0: the file's smallest NFE) of the
    solver file ``solvers`` (a :class:`gas.SolverSet`, or None for uniform GAS times), cut for ``denoise`` by
    ComfyUI's rule (:mod:`solver_choice`). An incompatible solver raises :class:`logic.GASNodeError`; a fallback or
    a denoise tail is logged."""
    info = comfy_bridge.describe_model_sampling(model_sampling)
    solver = solver_choice.representative(solvers)
    if solver is not None:
        verdict = logic.compatibility(solver, name, info, identity or {})
        if verdict.error is not None:
            raise logic.GASNodeError(verdict.error)
    schedule = logic.effective_schedule(solver, info)
    grid, warnings = solver_choice.grid_sigmas(solvers, schedule, steps, denoise, name)
    for message in warnings:
        log.warning("[GAS] %s", message)
    return grid.to(torch.float32)


def model_sigmas(model: Any, solvers: Any, name: str, steps: int, denoise: float) -> torch.Tensor:
    """:func:`sampling_sigmas` for a ComfyUI MODEL (its family is checked against the solver file too)."""
    return sampling_sigmas(model.get_model_object("model_sampling"), solvers, name, steps, denoise,
                           comfy_bridge.model_identity(model, fingerprint=False))
