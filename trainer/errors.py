"""Errors the trainer reports to its user: each message is one sentence, and the CLI maps them to exit codes."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "LPIPSUnavailableError",
    "OutputError",
    "ResumeError",
    "TeacherCacheError",
    "TrainerError",
    "TrainingDivergedError",
    "TrainingInterruptedError",
]


class TrainerError(Exception):
    """Base class: a problem the user can fix; ``str(error)`` is one sentence and ``exit_code`` the CLI status."""

    exit_code = 2


class ConfigError(TrainerError, ValueError):
    """An option value that cannot work (NFE out of range, negative sizes, unknown names, ...)."""


class OutputError(TrainerError):
    """The output folder is not writable, or the solver file already exists and ``overwrite`` was not given."""


class LPIPSUnavailableError(TrainerError):
    """The LPIPS loss was asked for but the ``lpips`` package or its pretrained backbone weights are unavailable."""


class TeacherCacheError(TrainerError):
    """The teacher cache folder cannot be used."""


class ResumeError(TrainerError):
    """``--resume`` without a saved state, a saved state from different settings, or a run that would be lost."""


class TrainingDivergedError(TrainerError):
    """The loss or the gradient became NaN/inf; the last good training state is kept."""

    exit_code = 3


class TrainingInterruptedError(TrainerError):
    """Ctrl-C: the training state was saved and the run can continue with ``--resume``."""

    exit_code = 130
