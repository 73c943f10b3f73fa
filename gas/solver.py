"""The Generalized Solver's learnable parameters and the timesteps they define.

Parameters (all zero-initialised except the timesteps, so an untrained solver is DPM-Solver++(3M)):

* ``mu_logit [N-1]``: stick-breaking timesteps. ``mu_m = sigmoid(mu_logit[m-1])*(1-2e-5) + 1e-5``,
  ``P_m = prod_{l<=m} mu_l``, interior times ``u_m = t_eps + (1-t_eps)(1-P_m)`` (ascending), and the solver grid is
  ``t_0 = 1 > t_k = u_{N-k} > t_N = t_eps``.
* ``t_couple [N]``: decoupled network time; node ``k`` evaluates the network at ``t_k + t_couple[k]``.
* ``a [N, N]``, ``c [N, N]``: additive corrections; row ``i`` is correction index ``i+1``, column ``j`` is step
  ``k = j+1``. Entry ``(i, j)`` is read only when ``i <= j`` (see :mod:`gas.update_rule`).

The method: ``docs/method.md`` sections 1-2 (arXiv 2510.17699).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .schedules import NoiseSchedule

__all__ = ["MAX_NFE", "MIN_NFE", "MU_EPS", "GeneralizedSolver", "used_correction_mask"]

MIN_NFE = 1
MAX_NFE = 16
#: Bound keeping every stick-breaking fraction inside ``[MU_EPS, 1 - MU_EPS]``.
MU_EPS = 1e-5


def used_correction_mask(nfe: int) -> torch.Tensor:
    """Boolean ``[N, N]`` mask of the correction entries the update rule reads (row ``i`` <= column ``j``)."""
    idx = torch.arange(nfe)
    return idx.reshape(-1, 1) <= idx.reshape(1, -1)


def _uniform_mu_logit(nfe: int) -> torch.Tensor:
    """Logits giving uniform times ``t_k = linspace(1, t_eps, N+1)``: ``mu_m = (N-m)/(N-m+1)``."""
    m = torch.arange(1, nfe, dtype=torch.float64)
    mu = (nfe - m) / (nfe - m + 1)
    p = (mu - MU_EPS) / (1 - 2 * MU_EPS)
    return torch.log(p) - torch.log1p(-p)


class GeneralizedSolver(nn.Module):
    """A GS/GAS solver for ``nfe`` network evaluations.

    ``schedule`` is the noise schedule the solver was trained for (used by :meth:`sigmas` when none is given);
    ``metadata`` holds the solver file's descriptive fields (model, cfg, scores, ...).
    """

    def __init__(
        self,
        nfe: int,
        *,
        t_eps: float = 1e-3,
        schedule: NoiseSchedule | None = None,
        metadata: dict[str, Any] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if not isinstance(nfe, int) or not (MIN_NFE <= nfe <= MAX_NFE):
            raise ValueError(f"nfe must be an integer from {MIN_NFE} to {MAX_NFE}, got {nfe!r}")
        if not (isinstance(t_eps, (int, float)) and math.isfinite(t_eps) and 0 < t_eps < 1):
            raise ValueError(f"t_eps must lie strictly between 0 and 1, got {t_eps!r}")
        self.nfe = nfe
        self.t_eps = float(t_eps)
        self.schedule = schedule
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.mu_logit = nn.Parameter(_uniform_mu_logit(nfe).to(dtype))
        self.t_couple = nn.Parameter(torch.zeros(nfe, dtype=dtype))
        self.a = nn.Parameter(torch.zeros(nfe, nfe, dtype=dtype))
        self.c = nn.Parameter(torch.zeros(nfe, nfe, dtype=dtype))

    # ----- timesteps ------------------------------------------------------------------------------------------------
    def times(self) -> torch.Tensor:
        """Solver times ``[t_0 = 1, ..., t_N = t_eps]`` in float64 (differentiable in ``mu_logit``)."""
        mu = torch.sigmoid(self.mu_logit.double()) * (1 - 2 * MU_EPS) + MU_EPS
        prod = torch.cumprod(mu, dim=0)
        interior_ascending = self.t_eps + (1.0 - self.t_eps) * (1.0 - prod)
        one = torch.ones(1, dtype=torch.float64, device=mu.device)
        eps = torch.full((1,), self.t_eps, dtype=torch.float64, device=mu.device)
        return torch.cat([one, interior_ascending.flip(0), eps])

    def shifted_times(self) -> torch.Tensor:
        """Network times ``t_k + t_couple[k]`` of the ``N`` model evaluations (float64, unclamped)."""
        return self.times()[:-1] + self.t_couple.double()

    def sigmas(self, schedule: NoiseSchedule | None = None) -> torch.Tensor:
        """The learned sigma grid ``[s_0, ..., s_N]`` (float64, no trailing zero) for ``schedule``."""
        sched = schedule or self.schedule
        if sched is None:
            raise ValueError("this solver records no noise schedule; pass the model's schedule")
        return sched.sigma_of_time(self.times())

    # ----- bookkeeping ----------------------------------------------------------------------------------------------
    def used_mask(self) -> torch.Tensor:
        """Boolean mask of the ``a``/``c`` entries the update rule reads."""
        return used_correction_mask(self.nfe).to(self.a.device)

    def is_untrained(self) -> bool:
        """True when every correction and decoupled time is zero (the solver is plain DPM-Solver++(3M))."""
        with torch.no_grad():
            return bool((self.t_couple == 0).all() and (self.a == 0).all() and (self.c == 0).all())

    def extra_repr(self) -> str:
        return f"nfe={self.nfe}, t_eps={self.t_eps:g}"
