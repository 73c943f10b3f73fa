"""GAS core: the Generalized (Adversarial) Solver as a k-diffusion-style sampler, in pure torch.

Public API::

    from gas import sample_gas, load_solver, save_solver, GeneralizedSolver, sigma_fit
    from gas import SolverSet, load_solver_set, save_solver_set, combine_solver_files   # several NFEs in one file
    from gas import DiscreteVPSchedule, FlowSchedule, VESigmaSpace
    from gas import GASError, SolverFileError, SigmasMismatchError, GASWarning   # all in gas.errors

The method (update rule, time map, sigma-space translation) is described in ``docs/method.md``.

Layering rule: ``gas`` may import the standard library, ``torch``, ``safetensors`` and ``numpy`` (and ``tqdm`` for
the progress bar, if installed), nothing else. ComfyUI (``comfy``, ``comfy_api``, ``folder_paths``, ``nodes``,
``latent_preview``) is imported only lazily, inside the functions of :mod:`gas.comfy_bridge`, never when a module is
imported. That keeps the core usable from plain Python (the
trainer's demo, the tests, other hosts) without ComfyUI, while the node pack and the trainer's ComfyUI adapter share
one translation of ComfyUI's model objects. ``tests/test_layering.py`` checks the rule.
"""

from .errors import (
    GASError,
    GASWarning,
    ScheduleError,
    SigmasError,
    SigmasMismatchError,
    SigmasTailWarning,
    SolverFileError,
)
from .grid_fit import FitKind, MismatchReason, SigmaFit, find_run, fit_to_grid, format_values, sigma_fit
from .sampling import build_plan, sample_gas
from .schedules import DiscreteVPSchedule, FlowSchedule, NoiseSchedule, VESigmaSpace
from .solver import MAX_NFE, MIN_NFE, GeneralizedSolver
from .solver_file import (
    combine_solver_files,
    load_solver,
    load_solver_set,
    read_solver_metadata,
    save_solver,
    save_solver_set,
)
from .solver_set import SolverSet

__version__ = "0.1.0"


def import_official_checkpoint(*args, **kwargs) -> GeneralizedSolver:
    """Import an authors' training checkpoint; see :func:`gas.convert.import_official_checkpoint`."""
    from .convert import import_official_checkpoint as _import

    return _import(*args, **kwargs)


__all__ = [
    "MAX_NFE",
    "MIN_NFE",
    "DiscreteVPSchedule",
    "FitKind",
    "FlowSchedule",
    "GASError",
    "GASWarning",
    "GeneralizedSolver",
    "MismatchReason",
    "NoiseSchedule",
    "ScheduleError",
    "SigmaFit",
    "SigmasError",
    "SigmasMismatchError",
    "SigmasTailWarning",
    "SolverFileError",
    "SolverSet",
    "VESigmaSpace",
    "__version__",
    "build_plan",
    "combine_solver_files",
    "find_run",
    "fit_to_grid",
    "format_values",
    "import_official_checkpoint",
    "load_solver",
    "load_solver_set",
    "read_solver_metadata",
    "sample_gas",
    "save_solver",
    "save_solver_set",
    "sigma_fit",
]
