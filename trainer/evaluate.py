"""Held-out evaluation: the trained solver and same-NFE baselines against the teacher.

Every method starts from the same held-out noises (the teacher's) and is compared with the teacher's end states:

* ``l1``: mean absolute difference on latents (the distillation target), averaged over samples;
* ``lpips``: LPIPS-VGG between decoded images (when the problem can decode and the LPIPS weights are available);
* ``swd``: a distribution distance between the method's set of end states and the teacher's set, ignoring which
  noise produced which sample: the sliced Wasserstein-1 distance over 256 fixed random unit directions of the
  flattened latents, ``mean_k mean_i |sort(X u_k)_i - sort(Y u_k)_i|``. Zero iff the projected distributions agree
  (global shape and mode occupancy of the sample set).
* ``nll`` (problems with a known data distribution, i.e. the demo): how much less likely the method's samples are
  than the teacher's under that distribution, ``mean_i [NLL(x_i) - NLL(x_teacher_i)]`` in nats per dimension
  (0 = as realistic as the teacher; off-manifold, blurred or in-between samples raise it).

Baselines run on the untrained solver's grid (uniform in GAS time, the grid GS/GAS training starts from):
DPM-Solver++(3M) (the untrained solver itself), DPM-Solver++(2M) and iPNDM (order 4).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gas import GeneralizedSolver

from .baselines import BASELINES
from .losses import l1_latents, lpips_images
from .problem import DistillProblem
from .runtime import Autocast, run_student, start_state

__all__ = ["SWD_PROJECTIONS", "sample_baselines", "sample_solver", "score", "sliced_wasserstein"]

SWD_PROJECTIONS = 256


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, projections: int = SWD_PROJECTIONS, seed: int = 0) -> float:
    """Sliced Wasserstein-1 distance between two equally sized sample sets (see the module docstring)."""
    a, b = x.flatten(1).double().cpu(), y.flatten(1).double().cpu()
    if a.shape != b.shape:
        raise ValueError("sliced_wasserstein needs two sets of the same size and dimension")
    dirs = torch.randn(a.shape[1], projections, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    pa, _ = torch.sort(a @ dirs, dim=0)
    pb, _ = torch.sort(b @ dirs, dim=0)
    return float((pa - pb).abs().mean())


@torch.no_grad()
def sample_solver(problem: DistillProblem, solver: GeneralizedSolver, indices: list[int], noise: torch.Tensor,
                  s0: float, *, autocast: Autocast, batch: int = 16) -> torch.Tensor:
    """End states of a (trained) solver for held-out samples, float32 on CPU."""
    outs = []
    for start in range(0, len(indices), batch):
        chunk = indices[start:start + batch]
        x = start_state(problem, noise[start:start + batch], s0)
        outs.append(run_student(problem, solver, x, problem.conditions(chunk), autocast=autocast,
                                differentiable=False).cpu())
    return torch.cat(outs) if outs else _no_samples(problem)


@torch.no_grad()
def sample_baselines(problem: DistillProblem, nfe: int, t_eps: float, indices: list[int], noise: torch.Tensor,
                     s0: float, *, autocast: Autocast, batch: int = 16) -> dict[str, torch.Tensor]:
    """End states of every baseline in :data:`~trainer.baselines.BASELINES` on the untrained ``nfe``-step grid."""
    sigmas = GeneralizedSolver(nfe, t_eps=t_eps, schedule=problem.schedule).sigmas().detach()
    out: dict[str, torch.Tensor] = {}
    for name, (fn, kwargs) in BASELINES.items():
        parts = []
        for start in range(0, len(indices), batch):
            chunk = indices[start:start + batch]
            x = start_state(problem, noise[start:start + batch], s0)
            with autocast():
                y = fn(problem.denoiser, x, sigmas, problem.conditions(chunk), schedule=problem.schedule, **kwargs)
            parts.append(y.float().cpu())
        out[name] = torch.cat(parts) if parts else _no_samples(problem)
    return out


def _no_samples(problem: DistillProblem) -> torch.Tensor:
    """The end states of zero samples (a process whose share of the held-out set is empty)."""
    return torch.empty((0, *problem.latent_shape), dtype=torch.float32)


@torch.no_grad()
def score(problem: DistillProblem, teacher: torch.Tensor, outputs: dict[str, torch.Tensor], *,
          lpips_model: nn.Module | Callable[..., torch.Tensor] | None = None, batch: int = 16,
          indices: list[int] | None = None) -> dict[str, Any]:
    """Metrics of every method in ``outputs`` against ``teacher`` (all ``[n, ...]`` CPU tensors of ``indices``).

    LPIPS decodes one batch at a time (the teacher's batch once, then each method's), so memory stays bounded.
    """
    methods: dict[str, dict[str, float]] = {
        name: {"l1": float(l1_latents(lat, teacher).mean()), "swd": sliced_wasserstein(lat, teacher)}
        for name, lat in outputs.items()}
    if problem.sample_nll is not None and indices is not None:
        ref = problem.sample_nll(teacher, indices).double()
        for name, lat in outputs.items():
            methods[name]["nll"] = float((problem.sample_nll(lat, indices).double() - ref).mean())
    if lpips_model is not None and problem.decode is not None:
        sums = dict.fromkeys(outputs, 0.0)
        for i in range(0, teacher.shape[0], batch):
            ref = problem.decode(teacher[i:i + batch].to(problem.device)).float()
            for name, lat in outputs.items():
                img = problem.decode(lat[i:i + batch].to(problem.device)).float()
                sums[name] += float(lpips_images(lpips_model, img, ref).sum())
        for name in outputs:
            methods[name]["lpips"] = sums[name] / teacher.shape[0]
    return {"n": int(teacher.shape[0]), "methods": methods}
