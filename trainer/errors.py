"""Every error the trainer reports to its user: each message is one sentence, and the CLI maps them to exit codes.

Messages name the Python parameters they are about (``nfe``, ``overwrite``, ``ckpt``, ...). A parameter is written
between backquotes in the message given to the constructor, ``ConfigError("`nfe` must be ...")``: ``str(error)``
shows the plain name (``nfe must be ...``) and :meth:`TrainerError.naming` another one, which is how
``python -m trainer`` prints its option names (``--nfe must be ...``). The library knows nothing of the CLI.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

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


#: A parameter name in a message template: `name`.
_PARAMETER = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


class TrainerError(Exception):
    """Base class: a problem the user can fix; ``str(error)`` is one sentence and ``exit_code`` the CLI status."""

    exit_code = 2

    @property
    def template(self) -> str:
        """The message as given, parameters between backquotes."""
        return str(self.args[0]) if self.args else ""

    @property
    def parameters(self) -> tuple[str, ...]:
        """The parameters the message names (fields of :class:`~trainer.config.DistillConfig`, adapter arguments)."""
        return tuple(_PARAMETER.findall(self.template))

    def naming(self, names: Mapping[str, str]) -> str:
        """The message with each parameter written as ``names[parameter]`` (its plain name where ``names`` has none)."""
        return _PARAMETER.sub(lambda m: names.get(m.group(1), m.group(1)), self.template)

    def __str__(self) -> str:
        return self.naming({})


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
