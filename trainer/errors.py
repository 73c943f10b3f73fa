"""Every error the trainer reports to its user: each message is one sentence, and the CLI maps them to exit codes.

Messages name the Python parameters they are about (``nfe``, ``overwrite``, ``ckpt``, ...) and list them in
:attr:`TrainerError.parameters`; :meth:`TrainerError.naming` rewrites those names, which is how ``python -m trainer``
prints its own option names (``--nfe``, ``--overwrite``, ``--ckpt``) instead. The library knows nothing of the CLI.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

__all__ = [
    "ConfigError",
    "LPIPSUnavailableError",
    "OutputError",
    "ProblemError",
    "ResumeError",
    "TeacherCacheError",
    "TrainerError",
    "TrainingDivergedError",
    "TrainingInterruptedError",
]


class TrainerError(Exception):
    """Base class: a problem the user can fix; ``str(error)`` is one sentence and ``exit_code`` the CLI status.

    ``parameters``: the parameter names (fields of :class:`~trainer.config.DistillConfig`, or an adapter's arguments)
    that the message names as words, for :meth:`naming`.
    """

    exit_code = 2

    def __init__(self, message: str, *, parameters: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.parameters = tuple(parameters)

    def naming(self, names: Mapping[str, str]) -> str:
        """The message with each of its :attr:`parameters` found in ``names`` written as ``names[parameter]``."""
        text = str(self)
        for parameter in sorted(self.parameters, key=len, reverse=True):
            if parameter in names:
                word = re.compile(rf"(?<![\w.-]){re.escape(parameter)}(?![\w-])")
                text = word.sub(lambda _, flag=names[parameter]: flag, text)
        return text


class ConfigError(TrainerError, ValueError):
    """An option value that cannot work (NFE out of range, negative sizes, unknown names, ...)."""


class ProblemError(TrainerError, ValueError):
    """The model or its settings cannot be distilled (missing checkpoint, not a model, unsupported family, ...).

    Adapters (:mod:`trainer.comfy_adapter`, your own) raise it with one sentence meant for the user.
    """


class OutputError(TrainerError):
    """The output folder is not writable, or the solver file already exists and ``overwrite`` was not given."""


class LPIPSUnavailableError(TrainerError):
    """The LPIPS loss was asked for but the ``lpips`` package or its pretrained backbone weights are unavailable."""


class TeacherCacheError(TrainerError):
    """The teacher cache folder cannot be used."""


class ResumeError(TrainerError):
    """``resume`` without a saved state, a saved state from different settings, or a run that would be lost."""


class TrainingDivergedError(TrainerError):
    """The loss or the gradient became NaN/inf; the last good training state is kept."""

    exit_code = 3


class TrainingInterruptedError(TrainerError):
    """Ctrl-C: the training state was saved and the run can continue with ``resume``."""

    exit_code = 130
