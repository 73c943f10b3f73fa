"""Every exception and warning class the GAS core raises for bad input, in one place.

All errors derive from :class:`GASError`, a ``ValueError``, so ``except ValueError`` keeps working and
``except gas.GASError`` catches exactly the core's refusals. Every message is one sentence naming what is wrong and,
where there is one, the fix. Warnings use the category :class:`GASWarning` (a ``UserWarning``), so a host can filter
or record them by class (``warnings.filterwarnings("ignore", category=gas.GASWarning)``), never by message text.

Plain ``ValueError`` is left for programming mistakes in calls to the Python API (an unknown ``decoupled`` or
``two_m`` mode, an NFE outside 1..16 for a new solver).
"""

from __future__ import annotations

import os

__all__ = [
    "GASError",
    "GASWarning",
    "ScheduleError",
    "SigmasError",
    "SigmasMismatchError",
    "SigmasTailWarning",
    "SolverFileError",
]


class GASError(ValueError):
    """Base class of the core's errors: input the core cannot use (a file, a schedule, sigmas)."""


class ScheduleError(GASError):
    """A noise schedule that cannot be used: an unknown kind, bad numbers, or no GAS time map where one is needed."""


class SolverFileError(GASError):
    """A solver file that cannot be used. The message names the file and the problem in one sentence."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"GAS solver file '{self.path}': {problem}")


class SigmasError(GASError):
    """Sigmas that no solver can run on: fewer than two, not finite, negative or not strictly decreasing."""


class SigmasMismatchError(SigmasError):
    """The sigmas given to a learned solver are not its grid nor a tail of it (:func:`gas.sigma_fit` says why)."""


class GASWarning(UserWarning):
    """Category of every warning the core emits; the image is still made."""


class SigmasTailWarning(GASWarning):
    """The sigmas are a proper tail of a learned grid (img2img, denoise < 1): they run as DPM-Solver++(3M) on the
    learned timesteps, without the learned corrections, which belong to the full trajectory."""
