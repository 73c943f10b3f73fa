"""Which learned solver runs, for a step count (GAS Sigmas, GAS KSampler, scheduler ``gas``) and for the sigmas a
sampler receives (GAS Sampler, sampler ``gas``). ComfyUI-free, like :mod:`logic`.

* Steps: a step count the solver file holds gives that NFE's learned solver and grid; any other gives the nearest
  learned grid resampled to that count (:class:`gas.SolverSet`), run as DPM-Solver++(3M), with a console warning.
* ``denoise < 1``: ComfyUI's rule for every scheduler, the last ``steps`` steps of the grid for
  ``int(steps / denoise)`` steps, so KSampler's denoise and GAS Sigmas' denoise give the same sigmas.
* Sigmas: the whole learned grid of a held NFE runs the learned solver; any other consecutive part of one of the
  file's grids (a denoise tail, KSamplerAdvanced's start/end steps, a trailing 0 for a full final denoise, a
  resampled grid) runs as DPM-Solver++(3M) on exactly those sigmas; anything else is refused in one sentence.
"""

from __future__ import annotations

from typing import Any

import torch

from . import logic
from ._gas import core

#: Names of the sampler and the scheduler added to ComfyUI's lists.
STOCK_NAME = "gas"

#: Tooltip of the ``steps`` input of GAS Sigmas and GAS KSampler.
STEPS_TOOLTIP = ("0 = the solver file's (smallest) NFE. A step count the file holds runs that learned solver; any "
                 "other runs the nearest learned time grid resampled to that count, as plain DPM-Solver++(3M) (logged)."
                 f" Without a solver: number of steps (0 = {logic.DEFAULT_NO_SOLVER_STEPS}).")

NOT_PATCHED = ("Scheduler 'gas' found no learned solver on this model: add a GAS Model Patch node between the model "
               "loader and the sampler (after any ModelSampling node, which replaces the model's sampling object and "
               "drops the solver), or pick another scheduler")


def solver_set_of(solvers: Any) -> Any:
    """A :class:`gas.SolverSet` from a set, one solver, or None (kept)."""
    if solvers is None or isinstance(solvers, core.SolverSet):
        return solvers
    return core.SolverSet([solvers])


def representative(solvers: Any) -> core.GeneralizedSolver | None:
    """The solver whose recorded model and schedule stand for the whole set (they share both)."""
    return None if solvers is None else solvers.default


def grid_sigmas(solvers: Any, schedule: core.NoiseSchedule, steps: int, denoise: float,
                name: str) -> tuple[torch.Tensor, list[str]]:
    """The float64 sigmas for ``steps`` (0: the file's smallest NFE, or the no-solver default) and ``denoise``, and
    the warnings to log. Without a solver: uniform GAS times (the grid of an untrained solver)."""
    if solvers is None:
        n = logic.resolve_steps(steps)
    else:
        n = steps or solvers.default.nfe
    try:
        total = core.solver_set.denoise_total_steps(n, denoise)
    except ValueError as exc:
        raise logic.GASNodeError(str(exc)) from None
    if total == 0:
        return torch.zeros(0, dtype=torch.float64), []
    warnings = []
    if solvers is None:
        grid = logic.solver_grid(None, schedule, total)
    else:
        choice = solvers.choose(total)
        message = choice.fallback_message(name, solvers.nfes)
        if message is not None:
            warnings.append(message)
        grid = solvers.sigmas(total, schedule)
    if total != n and solvers is not None:
        warnings.append(f"denoise {denoise:g}: running the last {n} of the {total} steps of GAS solver '{name}''s "
                        "grid as plain DPM-Solver++(3M); the learned corrections only apply to the full trajectory "
                        "from pure noise")
    return grid[total - n:], warnings


def _mismatch(solvers: Any, sigmas: torch.Tensor, schedule: core.NoiseSchedule, name: str, stock: bool) -> str:
    """Why ``sigmas`` fit no grid of the file: the stock path's sentence, or the core's reason against the nearest
    NFE's grid (raised by :func:`logic.check_sigmas`)."""
    given = sigmas.detach().cpu().tolist()
    if stock:
        return (f"The sigmas ({len(given) - 1} steps: {core.format_values(given, limit=6)}) are not a grid of "
                f"GAS solver '{name}' patched onto this model; "
                "choose scheduler 'gas' in the KSampler (or in BasicScheduler), or remove GAS Model Patch to use "
                "sampler 'gas' as DPM-Solver++(3M) with any scheduler")
    logic.check_sigmas(sigmas, solvers.nearest(max(1, len(given) - 1)), schedule, name)  # raises the core's reason
    return f"These sigmas do not fit GAS solver '{name}'; {logic.SIGMAS_FIX}"  # (no grid holds them: not reached)


def pick_for_sigmas(solvers: Any, sigmas: torch.Tensor, schedule: core.NoiseSchedule, name: str, *,
                    stock: bool = False) -> tuple[core.GeneralizedSolver | None, str | None]:
    """The learned solver to run on ``sigmas`` (None: DPM-Solver++(3M) on them) and what to log about it; sigmas
    from no grid of the file raise :class:`logic.GASNodeError` (``stock``: the message names scheduler 'gas')."""
    given = sigmas.detach().to("cpu", torch.float64).flatten()
    final_zero = given.numel() >= 2 and float(given[-1]) == 0.0
    body = given[:-1] if final_zero else given
    found = solvers.locate(body, schedule) if body.numel() >= 2 else None
    if found is None and body.numel() == 1 and final_zero:  # one denoise step from a sigma of a grid
        return None, None
    if found is None:
        raise logic.GASNodeError(_mismatch(solvers, sigmas, schedule, name, stock))
    learned = solvers.get(found.steps)
    if found.is_full and learned is not None and not final_zero:
        return learned, None
    steps = body.numel() - 1 + int(final_zero)
    if found.is_full:
        what = f"{found.steps} steps are not a learned NFE of GAS solver '{name}' (it holds {list(solvers.nfes)})"
    else:
        end = found.start + found.length - 1
        what = (f"these sigmas are steps {found.start}..{end}"
                f"{' plus a final denoise to 0' if final_zero else ''} of the {found.steps}-step grid of GAS solver "
                f"'{name}'")
    return None, (f"{what}: running those {steps} steps as plain DPM-Solver++(3M) on the learned timesteps, without "
                  "the learned corrections, which belong to the whole trajectory of one NFE")


def describe_solver_set(solvers: Any, name: str) -> str:
    """GAS Solver Info's text: each NFE's description (with its held-out scores), or the no-solver text."""
    if solvers is None or len(solvers) == 1:
        return logic.describe_solver(representative(solvers), name)
    head = [f"GAS solver file: {name}",
            f"learned NFEs: {', '.join(str(n) for n in solvers.nfes)} (KSampler/GAS Sigmas 'steps' chooses one; "
            "any other step count runs the nearest learned grid resampled, as DPM-Solver++(3M))"]
    parts = ["\n".join(head)]
    for solver in solvers.solvers:
        parts.append(f"--- NFE {solver.nfe} ---\n" + logic.describe_solver(solver, f"{name} [NFE {solver.nfe}]"))
    return "\n".join(parts)
