"""Several learned solvers for one model, one per NFE (a multi-NFE solver file), and the grid for any step count.

A :class:`SolverSet` answers "which sigmas, and which solver, for ``steps`` steps":

* ``steps`` is an NFE the set holds: that solver and its learned grid.
* any other step count (the honest fallback): the learned time grid of the nearest NFE (ties go to the larger one)
  resampled to ``steps`` steps by linear interpolation of the learned times ``t_0 = 1 > ... > t_N = t_eps`` over the
  step index (``t(u)`` with ``u = k/N``, evaluated at ``u = j/steps``; the knots of the learned grid are kept exactly
  where ``j/steps = k/N``), run as plain DPM-Solver++(3M) without the learned corrections and decoupled times, which
  belong to one NFE's trajectory.

``denoise < 1`` follows ComfyUI's rule for every scheduler (``BasicScheduler``, ``KSampler``): the grid for
``int(steps / denoise)`` steps, of which the last ``steps`` steps are kept (:func:`denoise_total_steps`). A tail of a
grid runs as DPM-Solver++(3M) on those sigmas (arXiv 2510.17699, section 3: the learned corrections are fitted to the
full trajectory from pure noise).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from .grid_fit import find_run
from .schedules import NoiseSchedule
from .solver import GeneralizedSolver

__all__ = ["MAX_STEPS", "GridSlice", "SolverSet", "StepsChoice", "denoise_total_steps", "resample_times"]

#: Largest step count a grid is built for (ComfyUI's KSampler accepts up to 10000 steps).
MAX_STEPS = 10000


def denoise_total_steps(steps: int, denoise: float) -> int:
    """ComfyUI's scheduler rule: the grid has ``int(steps / denoise)`` steps for ``denoise < 1`` (0 for denoise 0),
    of which the last ``steps`` are run."""
    if not math.isfinite(denoise) or denoise < 0 or denoise > 1:
        raise ValueError(f"denoise must lie between 0 and 1, got {denoise}")
    if denoise == 0:
        return 0
    return steps if denoise >= 1.0 else int(steps / denoise)


def resample_times(times: torch.Tensor, steps: int) -> torch.Tensor:
    """``times [N+1]`` (decreasing) resampled to ``steps + 1`` values by linear interpolation over the step index.

    Entry ``j`` is ``t(j/steps)`` with ``t(k/N) = times[k]``; index arithmetic is exact in integers, so shared knots are
    reproduced bit for bit (in particular both ends, 1 and ``t_eps``)."""
    n = times.numel() - 1
    if steps < 1 or n < 1:
        raise ValueError("a time grid needs at least one step")
    j = torch.arange(steps + 1)
    left = torch.clamp((j * n) // steps, max=n - 1)
    weight = ((j * n) - left * steps).to(times.dtype) / steps
    out = times[left] * (1.0 - weight) + times[left + 1] * weight
    exact = weight == 0
    return torch.where(exact, times[left], out)


@dataclass(frozen=True)
class StepsChoice:
    """What runs for ``steps`` steps: ``solver`` (the learned solver for exactly that NFE, or None for the fallback)
    and ``source`` (the solver whose learned time grid gives the sigmas: the same solver, or the nearest NFE's)."""

    steps: int
    solver: GeneralizedSolver | None
    source: GeneralizedSolver

    @property
    def learned(self) -> bool:
        return self.solver is not None

    def fallback_message(self, name: str, nfes: Iterable[int]) -> str | None:
        """The console warning for the fallback (None when a learned solver runs)."""
        if self.learned:
            return None
        held = ", ".join(str(n) for n in nfes)
        return (f"GAS solver '{name}' holds learned solvers for {held} steps, not {self.steps}: running {self.steps} "
                f"steps on its {self.source.nfe}-step learned time grid resampled to {self.steps} steps, as plain "
                "DPM-Solver++(3M) without the learned corrections; set steps to one of "
                f"{held} for the learned solver")


@dataclass(frozen=True)
class GridSlice:
    """Given sigmas found inside the grid for ``steps`` steps, starting at index ``start`` (``length`` entries)."""

    steps: int
    start: int
    length: int

    @property
    def is_full(self) -> bool:
        return self.start == 0 and self.length == self.steps + 1


class SolverSet:
    """Learned solvers for one model family and noise schedule, keyed by NFE (at most one per NFE).

    ``metadata`` of each solver stays its own (held-out scores, iterations, ...). All solvers must share the noise
    schedule, since one set serves one model.
    """

    def __init__(self, solvers: Iterable[GeneralizedSolver]) -> None:
        items = sorted(solvers, key=lambda s: s.nfe)
        if not items:
            raise ValueError("a solver set needs at least one solver")
        nfes = [s.nfe for s in items]
        if len(set(nfes)) != len(nfes):
            raise ValueError(f"a solver set holds one solver per NFE, got NFEs {nfes}")
        described = [_schedule_key(s) for s in items]
        if any(d != described[0] for d in described[1:]):
            raise ValueError("the solvers of one set must share their noise schedule (one model per file)")
        self._solvers = {s.nfe: s for s in items}

    # ----- contents ----------------------------------------------------------------------------------------------
    @property
    def nfes(self) -> tuple[int, ...]:
        """The NFEs held, ascending."""
        return tuple(self._solvers)

    @property
    def solvers(self) -> tuple[GeneralizedSolver, ...]:
        return tuple(self._solvers.values())

    @property
    def default(self) -> GeneralizedSolver:
        """The solver used when no step count is given (``steps`` 0): the smallest NFE."""
        return self._solvers[self.nfes[0]]

    @property
    def schedule(self) -> NoiseSchedule | None:
        return self.default.schedule

    def get(self, nfe: int) -> GeneralizedSolver | None:
        return self._solvers.get(nfe)

    def __len__(self) -> int:
        return len(self._solvers)

    def __repr__(self) -> str:
        return f"SolverSet(nfes={list(self.nfes)})"

    # ----- choosing ----------------------------------------------------------------------------------------------
    def nearest(self, steps: int) -> GeneralizedSolver:
        """The solver whose NFE is nearest to ``steps`` (ties: the larger NFE, whose grid is finer)."""
        return self._solvers[min(self.nfes, key=lambda n: (abs(n - steps), -n))]

    def choose(self, steps: int) -> StepsChoice:
        """The learned solver for ``steps`` (``steps`` 0: the default NFE), or the resampled fallback."""
        if steps == 0:
            steps = self.default.nfe
        if not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
            raise ValueError(f"steps must be an integer from 1 to {MAX_STEPS}, got {steps!r}")
        solver = self._solvers.get(steps)
        return StepsChoice(steps, solver, solver if solver is not None else self.nearest(steps))

    def times(self, steps: int) -> torch.Tensor:
        """GAS times of the grid for ``steps`` steps (float64, ``[steps+1]``, from 1 to the source's ``t_eps``)."""
        choice = self.choose(steps)
        times = choice.source.times().detach().to(torch.float64)
        return times if choice.learned else resample_times(times, choice.steps)

    def sigmas(self, steps: int, schedule: NoiseSchedule | None = None) -> torch.Tensor:
        """The float64 sigma grid for ``steps`` steps on ``schedule`` (default: the solvers' own)."""
        sched = schedule or self.schedule
        if sched is None:
            raise ValueError("these solvers record no noise schedule; pass the model's schedule")
        choice = self.choose(steps)
        if choice.learned:
            return choice.solver.sigmas(sched).detach().to(torch.float64)
        return sched.sigma_of_time(self.times(steps)).detach()

    def locate(self, sigmas: torch.Tensor, schedule: NoiseSchedule | None = None) -> GridSlice | None:
        """Where ``sigmas`` (at least 2 decreasing positive values) lie as consecutive entries of one of this set's
        grids (any step count up to :data:`MAX_STEPS`), or None. The step count is estimated from the spacing of the
        given times in each learned grid's step index, then confirmed by rebuilding that grid."""
        sched = schedule or self.schedule
        given = sigmas.detach().to("cpu", torch.float64).flatten()
        length = given.numel()
        if sched is None or not sched.has_time or length < 2 or not bool((given > 0).all()):
            return None
        with torch.no_grad():
            t_given = sched.time_of_sigma(given)
        if not bool(torch.isfinite(t_given).all()):
            return None
        candidates: set[int] = {length - 1}
        for solver in self.solvers:
            u = _index_of_time(solver.times().detach().to(torch.float64), t_given)
            spacing = float(u[-1] - u[0]) / (length - 1)
            if spacing > 0:
                estimate = 1.0 / spacing
                candidates.update(range(max(1, math.floor(estimate) - 1), math.ceil(estimate) + 2))
        for steps in sorted(c for c in candidates if length - 1 <= c <= MAX_STEPS):
            grid = self.sigmas(steps, sched)
            found = find_run(given, grid)
            if found is not None:
                return GridSlice(steps, found, length)
        return None


def _schedule_key(solver: GeneralizedSolver) -> Any:
    if solver.schedule is None:
        return None
    try:
        return solver.schedule.to_metadata()
    except Exception:  # a schedule that cannot be described: compare by identity
        return id(solver.schedule)


def _index_of_time(times: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Inverse of the piecewise-linear ``u -> t(u)`` through ``(k/N, times[k])`` (``times`` decreasing)."""
    n = times.numel() - 1
    asc = times.flip(0)  # ascending in time, descending in index
    pos = torch.searchsorted(asc, t.clamp(float(asc[0]), float(asc[-1]))).clamp(1, n)
    lo, hi = asc[pos - 1], asc[pos]
    frac = torch.where(hi > lo, (t - lo) / (hi - lo), torch.zeros_like(t))
    index_from_end = (pos - 1).to(t.dtype) + frac  # position counted from t_eps upwards
    return (n - index_from_end) / n
