"""The node pack's own error class (the core's classes are in :mod:`gas.errors`). Importable without ComfyUI.

Every refusal a node makes is a :class:`GASNodeError`; problems found by the core while a node runs keep the core's
class (:class:`gas.SolverFileError`, :class:`gas.ScheduleError`, ...) and reach the user through ComfyUI's error
dialog. Warnings a node wants the user to see are logged (``[GAS] ...`` in the console), never raised.
"""

from __future__ import annotations

__all__ = ["GASNodeError"]


class GASNodeError(ValueError):
    """A problem the user must fix; the message is one sentence meant for the ComfyUI error dialog."""
