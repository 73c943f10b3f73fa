"""The solver folder: ``models/gas_solvers`` registered with ComfyUI's ``folder_paths``, and the solver dropdown.

Searched, in this order: entries a ``gas_solvers:`` key in ``extra_model_paths.yaml`` created before the pack loaded,
``<ComfyUI models dir>/gas_solvers``, then ``<this pack>/models/gas_solvers`` (where the trainer writes). Only
``.safetensors`` files are listed; ``folder_paths`` re-scans a folder when its modification time changes, and the
schemas are rebuilt on every ``/object_info`` request, so new files appear without a restart.
"""

from __future__ import annotations

import os
from typing import Any

import folder_paths
from comfy_api.latest import io

from . import logic
from ._gas import core

PACK_SOLVER_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "models",
                               logic.FOLDER_NAME)
_CACHE = logic.SolverCache(loader=core.load_solver_set)  # every file as a gas.SolverSet (one or several NFEs)


def register() -> list[str]:
    """Register the solver folders (idempotent); returns the folders searched."""
    comfy_dir = os.path.join(folder_paths.models_dir, logic.FOLDER_NAME)
    return logic.register_folder(folder_paths.folder_names_and_paths, [comfy_dir, PACK_SOLVER_DIR])


def searched_folders() -> list[str]:
    """The folders currently registered for solvers."""
    entry = folder_paths.folder_names_and_paths.get(logic.FOLDER_NAME)
    return list(entry[0]) if entry else []


def options() -> list[str]:
    """The dropdown: the no-solver entry, then every ``.safetensors`` file in the solver folders."""
    register()
    return logic.dropdown_options(folder_paths.get_filename_list(logic.FOLDER_NAME))


def solver_input(tooltip: str | None = None) -> io.Combo.Input:
    """The ``solver`` dropdown shared by every GAS node (rebuilt on each ``/object_info``, so it refreshes)."""
    return io.Combo.Input(
        "solver",
        options=options(),
        default=logic.NO_SOLVER,
        tooltip=tooltip or ("Solver file from models/gas_solvers (learned timesteps + corrections for one model "
                            f"family and NFE). '{logic.NO_SOLVER}' = no learned solver."),
    )


def full_path(name: str) -> str | None:
    """Where the named solver file is, or None."""
    register()
    return folder_paths.get_full_path(logic.FOLDER_NAME, name)


def check(name: Any) -> str | None:
    """Why the dropdown value ``name`` cannot be used right now, or None (the file is found and valid)."""
    problem = logic.check_solver_name(name, full_path(name) if isinstance(name, str) else None, searched_folders())
    if problem is not None or name == logic.NO_SOLVER:
        return problem
    try:
        _CACHE.load(full_path(name))
    except (core.SolverFileError, OSError) as exc:
        return logic.solver_file_message(name, exc)
    return None


def validate(name: Any) -> bool | str:
    """V3 ``validate_inputs`` for a ``solver`` input: True, or the message. A linked input is not known yet at
    validation time (ComfyUI passes None); :func:`load` checks it when the node runs."""
    if name is None:
        return True
    problem = check(name)
    return True if problem is None else problem


def load(name: str) -> core.SolverSet | None:
    """The solver file named in the dropdown as a :class:`gas.SolverSet` (one solver per NFE it holds; None for the
    no-solver entry); problems raise :class:`logic.GASNodeError`."""
    problem = check(name)
    if problem is not None:
        raise logic.GASNodeError(problem)
    if name == logic.NO_SOLVER:
        return None
    return _CACHE.load(full_path(name))


def fingerprint(name: Any) -> Any:
    """Changes when the named file changes (V3 ``fingerprint_inputs``: a replaced file re-runs the node)."""
    path = full_path(name) if isinstance(name, str) and name != logic.NO_SOLVER else None
    if path is None:
        return name
    try:
        return (name, *logic.file_key(path))
    except OSError:
        return name


class SolverInputHooks:
    """ComfyUI V3 hooks of a node with the shared ``solver`` input: queue-time check of the name (ComfyUI does not
    check V3 combo values itself) and a fingerprint that re-runs the node when the file changes. Put it before
    ``io.ComfyNode`` among the bases."""

    @classmethod
    def validate_inputs(cls, solver: Any) -> bool | str:
        return validate(solver)

    @classmethod
    def fingerprint_inputs(cls, solver: Any, **_: Any) -> Any:
        return fingerprint(solver)
