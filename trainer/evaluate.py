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

Under torch.distributed every rank samples its contiguous share of the held-out set and the end states are gathered
(:func:`evaluate_solver`, :func:`heldout_l1`), so every rank returns the same scores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gas import GeneralizedSolver

from .baselines import BASELINES
from .config import DistillConfig
from .distributed import Dist
from .losses import l1_latents, lpips_images
from .outputs import finite_or_none
from .problem import DistillProblem
from .runtime import Autocast, run_student, start_state
from .teacher import end_sigmas
from .teacher_data import TeacherData

__all__ = ["SWD_PROJECTIONS", "evaluate_solver", "heldout_l1", "sample_baselines", "sample_solver", "score",
           "sliced_wasserstein"]

log = logging.getLogger("trainer")

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


def heldout_l1(problem: DistillProblem, config: DistillConfig, solver: GeneralizedSolver, data: TeacherData, *,
               autocast: Autocast, dist: Dist | None = None) -> float:
    """Mean held-out L1 of ``solver`` to the teacher (the loop's periodic check; each rank samples its share)."""
    dist = dist or Dist()
    s0, _ = end_sigmas(problem, config.t_eps)
    solver = solver.to(problem.device)
    lo, hi = dist.local_range(len(data.val_idx))
    total = 0.0
    if hi > lo:
        out = sample_solver(problem, solver, data.val_idx[lo:hi], data.val_noise[lo:hi], s0, autocast=autocast,
                            batch=config.eval_batch)
        total = float(l1_latents(out, data.val_lat[lo:hi]).double().sum())
    return dist.all_reduce_sum([total])[0] / max(1, len(data.val_idx))


def _sharded(dist: Dist, n: int, run: Callable[[int, int], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``run(start, stop)`` on this rank's share of ``n`` held-out samples, gathered in order on every rank."""
    lo, hi = dist.local_range(n)
    local = run(lo, hi)
    return {name: dist.all_gather_rows(lat) for name, lat in local.items()}


def evaluate_solver(problem: DistillProblem, config: DistillConfig, solver: GeneralizedSolver, data: TeacherData,
                    label: str, *, autocast: Autocast, lpips_model: nn.Module | None = None,
                    dist: Dist | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Held-out scores of ``solver`` (as ``label``) and of the same-NFE baselines; returns (scores, end states).

    Under torch.distributed every rank samples its share of the held-out set, the end states are gathered on every
    rank, rank 0 computes the scores (LPIPS decodes there) and broadcasts them: every rank returns the same."""
    dist = dist or Dist()
    s0, _ = end_sigmas(problem, config.t_eps)
    if dist.is_main:
        log.info("evaluating on %d held-out samples", len(data.val_idx))
    solver = solver.to(problem.device)

    def run(lo: int, hi: int) -> dict[str, torch.Tensor]:
        idx, noise = data.val_idx[lo:hi], data.val_noise[lo:hi]
        out = {label: sample_solver(problem, solver, idx, noise, s0, autocast=autocast, batch=config.eval_batch)}
        out.update(sample_baselines(problem, config.nfe, config.t_eps, idx, noise, s0, autocast=autocast,
                                    batch=config.eval_batch))
        return out

    outputs = _sharded(dist, len(data.val_idx), run)
    scores = dist.main_decides(lambda: finite_or_none(score(problem, data.val_lat, outputs, lpips_model=lpips_model,
                                                            batch=config.eval_batch, indices=data.val_idx)))
    return scores, outputs
