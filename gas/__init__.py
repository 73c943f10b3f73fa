"""GAS core: the Generalized (Adversarial) Solver as a k-diffusion-style sampler, in pure torch.

Public API::

    from gas import sample_gas, load_solver, save_solver, GeneralizedSolver
    from gas import SolverSet, load_solver_set, save_solver_set, combine_solver_files   # several NFEs in one file
    from gas import DiscreteVPSchedule, FlowSchedule, VESigmaSpace, SolverFileError
"""

from .sampling import SigmasMismatchError, build_plan, sample_gas
from .schedules import DiscreteVPSchedule, FlowSchedule, NoiseSchedule, ScheduleError, VESigmaSpace
from .solver import MAX_NFE, MIN_NFE, GeneralizedSolver
from .solver_file import (
    SolverFileError,
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
    "FlowSchedule",
    "GeneralizedSolver",
    "NoiseSchedule",
    "ScheduleError",
    "SigmasMismatchError",
    "SolverFileError",
    "SolverSet",
    "VESigmaSpace",
    "__version__",
    "build_plan",
    "combine_solver_files",
    "import_official_checkpoint",
    "load_solver",
    "load_solver_set",
    "read_solver_metadata",
    "sample_gas",
    "save_solver",
    "save_solver_set",
]
