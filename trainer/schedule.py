"""Recipe levers that are pure functions of the settings: the solver's learning rate at an iteration and its initial
timesteps.

* :func:`learning_rate`: ``lr_warmup`` iterations of linear warm-up ``lr * n / warmup``, then ``lr_schedule``
  "constant" (``lr``, the paper's recipe) or "cosine" (``lr * (1 + cos(pi * p)) / 2`` with ``p`` the fraction of the
  iterations after the warm-up that are done, reaching 0 at the last iteration). A function of the iteration only,
  so ``resume`` continues exactly without any scheduler state.
* :func:`initial_times`: the solver's starting grid, "uniform" in GAS time (the paper's start, ``docs/method.md``
  section 2) or "logsnr" (uniform in the half log-SNR ``lambda`` between the first and the last sigma, the grid the
  default teacher uses), written into the stick-breaking logits of :class:`gas.GeneralizedSolver`.
"""

from __future__ import annotations

import math

import torch

from gas import GeneralizedSolver, NoiseSchedule
from gas.solver import MU_EPS

from .config import LR_SCHEDULES, TIME_INITS, DistillConfig
from .gits import logsnr_grid

__all__ = ["LR_SCHEDULES", "TIME_INITS", "initial_times", "learning_rate", "set_initial_times"]



def learning_rate(config: DistillConfig, step: int) -> float:
    """The solver's Adam learning rate for iteration ``step`` (1-based); exactly ``config.lr`` for the paper's recipe
    (constant, no warm-up)."""
    if config.lr_warmup > 0 and step <= config.lr_warmup:
        return config.lr * step / config.lr_warmup
    if config.lr_schedule == "constant":
        return config.lr
    span = max(config.iters - config.lr_warmup, 1)
    done = min(max(step - config.lr_warmup, 0) / span, 1.0)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * done))


def initial_times(nfe: int, t_eps: float, schedule: NoiseSchedule, kind: str, blend: float | None = None
                  ) -> torch.Tensor:
    """The ``nfe + 1`` starting solver times ``[1, ..., t_eps]`` (float64) of grid ``kind`` (see the module);
    ``blend`` ``w`` in [0, 1] instead gives ``(1 - w)`` uniform + ``w`` log-SNR grid, time by time (monotone)."""
    uniform = torch.linspace(1.0, t_eps, nfe + 1, dtype=torch.float64)
    if blend is None and kind == "uniform":
        return uniform
    ends = schedule.sigma_of_time(torch.tensor([1.0, t_eps], dtype=torch.float64))
    sig = logsnr_grid(schedule, float(ends[0]), float(ends[1]), nfe)
    times = schedule.time_of_sigma(sig).to(torch.float64)
    times[0], times[-1] = 1.0, t_eps
    if blend is not None:
        times = (1.0 - blend) * uniform + blend * times
    return times


@torch.no_grad()
def set_initial_times(solver: GeneralizedSolver, schedule: NoiseSchedule, kind: str,
                      blend: float | None = None) -> None:
    """Start ``solver`` on the grid :func:`initial_times` (``kind`` "uniform" without ``blend`` leaves the
    constructor's logits, bit for bit). Inverts the stick-breaking map: ``P_m = (1 - u_m) / (1 - t_eps)`` for the
    ascending interior times ``u_m``, ``mu_1 = P_1``, ``mu_m = P_m / P_{m-1}``."""
    if (kind == "uniform" and blend is None) or solver.nfe < 2:
        return
    times = initial_times(solver.nfe, solver.t_eps, schedule, kind, blend)
    interior_ascending = times[1:-1].flip(0)
    prod = (1.0 - interior_ascending) / (1.0 - solver.t_eps)
    mu = prod / torch.cat([prod.new_ones(1), prod[:-1]])
    p = ((mu - MU_EPS) / (1 - 2 * MU_EPS)).clamp(1e-12, 1 - 1e-12)
    solver.mu_logit.copy_((torch.log(p) - torch.log1p(-p)).to(solver.mu_logit.dtype))
