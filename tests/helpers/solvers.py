"""Trained-looking test solvers: valid, random, nonzero learned parameters, from one seeded generator.

``perturbed_solver`` takes the ``gas`` module to build with, because in-process ComfyUI tests import the pack under
its own package name (``<pack>.gas``), whose classes are not those of the top-level ``gas``.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import torch

import gas as top_level_gas

#: The recorded model of a solver made for the tiny SD1.5 checkpoint.
SD15_MODEL = {"family": "SD15", "prediction": "eps"}


def perturbed_solver(nfe: int = 4, seed: int = 0, *, schedule: Any = None, metadata: dict[str, Any] | None = None,
                     time_scale: float = 0.3, couple_scale: float = 0.02, coef_scale: float = 0.05,
                     masked: bool = True, dtype: torch.dtype = torch.float32,
                     gas: ModuleType = top_level_gas) -> Any:
    """A ``gas.GeneralizedSolver`` with ``mu_logit += time_scale * N(0, 1)``, ``t_couple = couple_scale * N(0, 1)``
    and ``a, c = coef_scale * N(0, 1)`` (on the entries the update rule reads when ``masked``); SD1.5's schedule and
    a GAS-mode SD1.5 record at cfg 7.5 unless told otherwise."""
    gen = torch.Generator().manual_seed(seed)
    meta = {"mode": "gas", "cfg": 7.5, "model": dict(SD15_MODEL)}
    meta.update(metadata or {})
    solver = gas.GeneralizedSolver(nfe, schedule=schedule or gas.DiscreteVPSchedule.sd_linear(), metadata=meta,
                                   dtype=dtype)
    mask = solver.used_mask().to(dtype) if masked else torch.ones(nfe, nfe, dtype=dtype)
    with torch.no_grad():
        solver.mu_logit.add_(time_scale * torch.randn(nfe - 1, generator=gen, dtype=dtype))
        solver.t_couple.copy_(couple_scale * torch.randn(nfe, generator=gen, dtype=dtype))
        solver.a.copy_(coef_scale * torch.randn(nfe, nfe, generator=gen, dtype=dtype) * mask)
        solver.c.copy_(coef_scale * torch.randn(nfe, nfe, generator=gen, dtype=dtype) * mask)
    return solver


def write_solver(path: Path, nfe: int, seed: int, *, schedule: Any = None, model: dict[str, Any] | None = None,
                 cfg: float = 7.5) -> Path:
    """A trained-looking solver file at ``path`` (overwritten), with held-out scores as the trainer records them."""
    meta = {"cfg": cfg, "model": model or dict(SD15_MODEL), "iterations": 0,
            "scores": {"held_out": {"lpips_vs_teacher": 0.21, "lpips_dpmpp3m": 0.34}}}
    return top_level_gas.save_solver(perturbed_solver(nfe, seed, schedule=schedule, metadata=meta), path,
                                     overwrite=True)
