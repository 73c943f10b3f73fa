"""Whether given sigmas fit a learned solver: the one place that decides it, for the sampler, the nodes and any host.

A learned solver only runs on the sigma grid it was trained on (its timesteps, corrections and decoupled times belong
to that grid). :func:`sigma_fit` compares sigmas with the grid and answers with a :class:`SigmaFit`:

* ``FitKind.FULL``: the whole grid; the solver runs as trained.
* ``FitKind.TAIL``: the last ``steps`` sigmas of the grid (img2img, denoise < 1); they run as DPM-Solver++(3M) on
  the learned timesteps, without the corrections (see ``docs/method.md``, "Tails of the grid").
* ``FitKind.MISMATCH`` with a :class:`MismatchReason`: a trailing 0, another step count, or other sigmas.

Callers act on the kind and the reason, never on message text; :meth:`SigmaFit.message` and
:meth:`SigmaFit.tail_message` give the sentences a user reads.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .errors import SigmasMismatchError
from .schedules import NoiseSchedule
from .solver import GeneralizedSolver

__all__ = [
    "GRID_RTOL",
    "PYTHON_FIX",
    "FitKind",
    "MismatchReason",
    "SigmaFit",
    "find_run",
    "fit_to_grid",
    "format_values",
    "sigma_fit",
]

#: Relative tolerance when matching given sigmas against a solver's grid (float32 sigmas must pass).
GRID_RTOL = 2e-5
#: What to do about a mismatch, for Python callers (a ComfyUI node passes its own sentence).
PYTHON_FIX = "use the solver's own sigmas: GAS Sigmas in ComfyUI, or solver.sigmas(schedule) in Python"

SigmaValues = torch.Tensor | Sequence[float]


class FitKind(enum.Enum):
    """How sigmas relate to a learned grid."""

    FULL = "full"
    TAIL = "tail"
    MISMATCH = "mismatch"


class MismatchReason(enum.Enum):
    """Why sigmas do not fit a learned grid."""

    #: They end in 0 and the rest is the grid (or a tail of it): a learned solver has no final denoise step.
    TRAILING_ZERO = "trailing_zero"
    #: They start at the grid's first sigma but have another number of steps (the grid of a solver for another NFE).
    STEP_COUNT = "step_count"
    #: Anything else: another scheduler, another noise schedule, the first steps of the grid, fewer than 2 sigmas.
    OTHER_SIGMAS = "other_sigmas"


@dataclass(frozen=True)
class SigmaFit:
    """The answer of :func:`sigma_fit`.

    ``steps``: steps of the given sigmas (``len - 1``); ``nfe``: steps of the grid; ``start``: index of the grid
    where the given sigmas begin (0 for the full grid, None for a mismatch); ``reason``: set for a mismatch only;
    ``given`` / ``grid``: the values compared, for messages.
    """

    kind: FitKind
    steps: int
    nfe: int
    start: int | None
    reason: MismatchReason | None
    given: tuple[float, ...]
    grid: tuple[float, ...]

    @property
    def fits(self) -> bool:
        """True for the full grid or a tail of it (the solver can run)."""
        return self.kind is not FitKind.MISMATCH

    @property
    def is_tail(self) -> bool:
        """True for a proper tail (denoise < 1)."""
        return self.kind is FitKind.TAIL

    def message(self, label: str = "this solver", fix: str = PYTHON_FIX) -> str:
        """The sentence explaining a mismatch; ``label`` names the solver, ``fix`` says what to do."""
        if self.kind is not FitKind.MISMATCH:
            raise ValueError(f"sigmas that fit ({self.kind.value}) have no mismatch message")
        if self.reason is MismatchReason.TRAILING_ZERO:
            return (f"The sigmas end in 0, but {label} stops at its last learned sigma ({self.grid[-1]:.4g}) "
                    f"without a final denoise step; {fix}")
        if self.reason is MismatchReason.STEP_COUNT:
            return (f"NFE mismatch: the sigmas have {self.steps} steps but {label} was trained for {self.nfe}; "
                    f"{fix}, or use a {self.steps}-step solver")
        zero = (", and they end in 0 although a learned solver stops at its last learned sigma"
                if self.given and self.given[-1] == 0.0 else "")
        shown, want = format_values(self.given), format_values(self.grid, limit=17)
        return (f"These sigmas ({self.steps} steps: {shown}) are not the learned grid of {label} ({self.nfe} steps: "
                f"{want}){zero}; {fix}")

    def tail_message(self, label: str = "the solver") -> str:
        """What happens with a tail of the grid (denoise < 1), in words."""
        return (f"denoise < 1: running the last {self.steps} of the {self.nfe} learned steps of {label} with plain "
                "DPM-Solver++(3M) on the learned timesteps; the learned corrections and decoupled times only apply "
                "to the full trajectory from pure noise")

    def raise_for_mismatch(self, label: str = "this solver", fix: str = PYTHON_FIX) -> None:
        """Raise :class:`gas.SigmasMismatchError` with :meth:`message` when the sigmas do not fit."""
        if self.kind is FitKind.MISMATCH:
            raise SigmasMismatchError(self.message(label, fix))


def _values(sigmas: SigmaValues) -> list[float]:
    if isinstance(sigmas, torch.Tensor):
        return sigmas.detach().to(device="cpu", dtype=torch.float64).flatten().tolist()
    return [float(v) for v in sigmas]


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= GRID_RTOL * abs(b)


def find_run(sigmas: SigmaValues, grid: SigmaValues) -> int | None:
    """First index at which ``sigmas`` stand as consecutive entries of ``grid`` (to ``GRID_RTOL``), or None."""
    given, want = _values(sigmas), _values(grid)
    n = len(given)
    for start in range(len(want) - n + 1):
        if all(_close(g, w) for g, w in zip(given, want[start:start + n], strict=True)):
            return start
    return None


def _tail_start(given: list[float], grid: list[float]) -> int | None:
    """Index where ``given`` starts as a tail of ``grid`` (0 = the whole grid), or None if it is not one."""
    n = len(given)
    if n < 2 or n > len(grid):
        return None
    start = len(grid) - n
    return start if all(_close(g, w) for g, w in zip(given, grid[start:], strict=True)) else None


def _is_head(given: list[float], grid: list[float]) -> bool:
    """Whether ``given`` is the first steps of ``grid`` (e.g. the first part of a split grid)."""
    return len(given) < len(grid) and all(_close(g, w) for g, w in zip(given, grid, strict=False))


def format_values(values: Sequence[float], limit: int = 8) -> str:
    """``values`` as ``a, b, c, ...`` with 4 significant digits, at most ``limit`` of them."""
    shown = ", ".join(f"{v:.4g}" for v in values[:limit])
    return shown + (", ..." if len(values) > limit else "")


def fit_to_grid(sigmas: SigmaValues, grid: SigmaValues) -> SigmaFit:
    """How ``sigmas`` relate to a learned ``grid`` ``[s_0 .. s_N]`` (both descending, compared to ``GRID_RTOL``)."""
    given, want = _values(sigmas), _values(grid)
    steps, nfe = len(given) - 1, len(want) - 1
    start = _tail_start(given, want)
    if start is not None:
        kind = FitKind.FULL if start == 0 else FitKind.TAIL
        return SigmaFit(kind, steps, nfe, start, None, tuple(given), tuple(want))
    if len(given) >= 3 and given[-1] == 0.0 and _tail_start(given[:-1], want) is not None:
        reason = MismatchReason.TRAILING_ZERO
    elif steps >= 1 and steps != nfe and _close(given[0], want[0]) and not _is_head(given, want):
        reason = MismatchReason.STEP_COUNT
    else:
        reason = MismatchReason.OTHER_SIGMAS
    return SigmaFit(FitKind.MISMATCH, steps, nfe, None, reason, tuple(given), tuple(want))


def sigma_fit(sigmas: SigmaValues, solver: GeneralizedSolver, schedule: NoiseSchedule | None = None) -> SigmaFit:
    """Whether ``sigmas`` fit the learned ``solver`` on ``schedule`` (the model's; default: the solver's own).

    Example: ``fit = gas.sigma_fit(sigmas, solver, schedule)``; ``fit.kind`` is ``FitKind.FULL``, ``FitKind.TAIL``
    (``fit.steps`` of the ``fit.nfe`` steps) or ``FitKind.MISMATCH`` (``fit.reason``); ``fit.raise_for_mismatch()``
    raises :class:`gas.SigmasMismatchError`.
    """
    with torch.no_grad():
        grid = solver.sigmas(schedule)
    return fit_to_grid(sigmas, grid)
