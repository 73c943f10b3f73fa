"""The solver file: a ``.safetensors`` file with the solver tensors and validated JSON metadata (never a pickle).

Two format versions, both read:

* **version 1**, one solver (what :func:`save_solver` writes, so that a single-solver file stays readable by older
  versions of the pack): tensors ``mu_logit [N-1]``, ``t_couple [N]``, ``a [N, N]``, ``c [N, N]`` (row ``i`` =
  correction index ``i+1``, column ``j`` = step ``j+1``; entries with ``i > j`` are never read and must be 0) and the
  metadata below.
* **version 2**, several solvers for one model, one per NFE (what :func:`save_solver_set` writes): the same four
  tensors per solver, named ``nfe<N>.mu_logit`` and so on; metadata ``format``, ``format_version`` (2), ``nfes`` (the
  NFEs, ascending), ``schedule`` (shared), ``solvers`` (``{"<N>": {"t_eps", "grid_sigmas", "metadata"}}``, the
  last holding that solver's descriptive fields, e.g. its held-out ``scores``) and ``content_sha256``.

Version 1 metadata (each value a JSON document in safetensors' string metadata):

=================  ===================================================================================================
``format``         ``"gas-solver"``
``format_version`` ``1``
``nfe``            number of network evaluations N (1..16)
``t_eps``          final GAS time (the grid ends at ``t_eps``)
``schedule``       the noise schedule the solver was trained for (:func:`gas.schedules.schedule_from_metadata`)
``grid_sigmas``    the learned sigmas on that schedule (checked against the tensors when loading)
``content_sha256`` SHA-256 of the tensors and of every other metadata field (any edit or corruption is detected)
optional           ``model`` (family, prediction, file, sha256), ``cfg``, ``mode`` (gs/gas/untrained/imported),
                   ``teacher``, ``loss``, ``iterations``, ``created``, ``pack_version``, ``scores`` and any other
                   JSON value
=================  ===================================================================================================
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from .atomic_file import write_atomically
from .errors import ScheduleError, SolverFileError
from .schedules import NoiseSchedule, schedule_from_metadata
from .solver import MAX_NFE, MIN_NFE, GeneralizedSolver, used_correction_mask
from .solver_set import SolverSet

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "SINGLE_FORMAT_VERSION", "SolverFileError", "combine_solver_files",
           "load_solver", "load_solver_set", "read_solver_metadata", "save_solver", "save_solver_set"]

FORMAT_NAME = "gas-solver"
#: The newest format (several solvers per file); :data:`SINGLE_FORMAT_VERSION` files are read as one-solver sets.
FORMAT_VERSION = 2
#: The one-solver format, still written by :func:`save_solver`.
SINGLE_FORMAT_VERSION = 1
_READABLE_VERSIONS = (SINGLE_FORMAT_VERSION, FORMAT_VERSION)
#: A solver file holds a few hundred floats; anything much larger is not one.
MAX_FILE_BYTES = 4 * 1024 * 1024
_TENSORS = ("mu_logit", "t_couple", "a", "c")
_REQUIRED = ("format", "format_version", "nfe", "t_eps", "schedule")
_REQUIRED_SET = ("format", "format_version", "nfes", "schedule", "solvers", "content_sha256")
_GRID_RTOL = 1e-6
_CHECKSUM_KEY = "content_sha256"


def _is_valid_grid(grid: torch.Tensor) -> bool:
    return bool(torch.isfinite(grid).all() and (grid > 0).all() and (grid[1:] < grid[:-1]).all())


def _file_dtype(value: torch.Tensor) -> torch.dtype:
    return torch.float64 if value.dtype == torch.float64 else torch.float32


def _content_hash(tensors: dict[str, torch.Tensor], encoded_meta: dict[str, str],
                  names: tuple[str, ...] | None = None) -> str:
    """SHA-256 over the tensors (name, dtype, shape, bytes) and the encoded metadata, in a canonical order
    (version 1: the four tensor names in their fixed order; version 2: every tensor, sorted by name)."""
    digest = hashlib.sha256()
    for name in names if names is not None else _TENSORS:
        value = tensors[name].contiguous()
        digest.update(f"{name}|{value.dtype}|{list(value.shape)}|".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    for key in sorted(encoded_meta):
        if key != _CHECKSUM_KEY:
            digest.update(f"{key}={encoded_meta[key]}\n".encode())
    return digest.hexdigest()


def _solver_tensors(solver: GeneralizedSolver, path: Path) -> tuple[dict[str, torch.Tensor], list[float]]:
    """The four tensors of one solver as written (unread corrections zeroed, float64 or float32, CPU) and its grid;
    refuses NaN/inf and timesteps that give no valid grid on its schedule."""
    if solver.schedule is None:
        raise SolverFileError(path, "the solver has no noise schedule to record")
    mask = used_correction_mask(solver.nfe).to(solver.a.device)
    with torch.no_grad():
        tensors = {
            "mu_logit": solver.mu_logit.detach(),
            "t_couple": solver.t_couple.detach(),
            "a": solver.a.detach() * mask,
            "c": solver.c.detach() * mask,
        }
        tensors = {name: value.to(device="cpu", dtype=_file_dtype(value)).contiguous()
                   for name, value in tensors.items()}
        for name, value in tensors.items():
            if not torch.isfinite(value).all():
                raise SolverFileError(path, f"refusing to save: tensor '{name}' holds NaN or inf")
        probe = GeneralizedSolver(solver.nfe, t_eps=solver.t_eps, schedule=solver.schedule,
                                  dtype=tensors["mu_logit"].dtype)
        probe.mu_logit.copy_(tensors["mu_logit"])
        grid_tensor = probe.sigmas()
        if not _is_valid_grid(grid_tensor):
            raise SolverFileError(path, "refusing to save: its timesteps do not give a finite, strictly decreasing "
                                        f"sigma grid on its schedule (is t_eps={solver.t_eps:g} below its range?)")
    return tensors, grid_tensor.tolist()


def _encode(meta: dict[str, Any], tensors: dict[str, torch.Tensor], names: tuple[str, ...] | None) -> dict[str, str]:
    meta = {k: v for k, v in meta.items() if k != _CHECKSUM_KEY}
    encoded = {key: json.dumps(value, allow_nan=False) for key, value in meta.items()}
    encoded[_CHECKSUM_KEY] = json.dumps(_content_hash(tensors, encoded, names))
    return encoded


def save_solver(solver: GeneralizedSolver, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write one ``solver`` atomically in format version 1 (float64 parameters stay float64, others become float32;
    metadata as JSON). Refuses to replace an existing file unless ``overwrite``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not overwrite:
        raise SolverFileError(path, "already exists (pass overwrite=True to replace it)")
    tensors, grid = _solver_tensors(solver, path)
    meta: dict[str, Any] = dict(solver.metadata)
    meta.update(format=FORMAT_NAME, format_version=SINGLE_FORMAT_VERSION, nfe=solver.nfe, t_eps=solver.t_eps,
                schedule=solver.schedule.to_metadata(), grid_sigmas=grid)
    encoded = _encode(meta, tensors, None)
    return write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=encoded))


def save_solver_set(solvers: SolverSet | list[GeneralizedSolver] | tuple[GeneralizedSolver, ...],
                    path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write several solvers for one model (one per NFE, e.g. trained with ``--nfe 4,6,8``) atomically into one file
    (format version 2). Each solver keeps its own metadata (held-out ``scores``, ``iterations``, ...); they must share
    the noise schedule and, where recorded, the model family and prediction type.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not overwrite:
        raise SolverFileError(path, "already exists (pass overwrite=True to replace it)")
    try:
        solver_set = solvers if isinstance(solvers, SolverSet) else SolverSet(solvers)
    except ValueError as exc:
        raise SolverFileError(path, f"refusing to save: {exc}") from None
    models = {json.dumps({k: (s.metadata.get("model") or {}).get(k) for k in ("family", "prediction")})
              for s in solver_set.solvers if isinstance(s.metadata.get("model"), dict)}
    if len(models) > 1:
        raise SolverFileError(path, "refusing to save: the solvers were trained for different model families or "
                                    "prediction types (one file serves one model)")
    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, Any] = {}
    for solver in solver_set.solvers:
        own, grid = _solver_tensors(solver, path)
        tensors.update({f"nfe{solver.nfe}.{name}": value for name, value in own.items()})
        entries[str(solver.nfe)] = {"t_eps": solver.t_eps, "grid_sigmas": grid,
                                    "metadata": {k: v for k, v in solver.metadata.items() if k != _CHECKSUM_KEY}}
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "nfes": list(solver_set.nfes),
            "schedule": solver_set.schedule.to_metadata(), "solvers": entries}
    encoded = _encode(meta, tensors, tuple(sorted(tensors)))
    return write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=encoded))


def combine_solver_files(inputs: list[str | os.PathLike[str]], output: str | os.PathLike[str], *,
                         overwrite: bool = False) -> Path:
    """Merge solver files (each of any version) into one multi-NFE file; an NFE held twice is refused."""
    solvers: list[GeneralizedSolver] = []
    for item in inputs:
        solvers.extend(load_solver_set(item).solvers)
    nfes = [s.nfe for s in solvers]
    twice = sorted({n for n in nfes if nfes.count(n) > 1})
    if twice:
        raise SolverFileError(output, f"refusing to save: NFE {twice} is held by more than one input file")
    return save_solver_set(solvers, output, overwrite=overwrite)


def read_solver_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Decoded metadata of a one-solver file, fully validated (tensors included); raises :class:`SolverFileError`
    (a multi-NFE file: use :func:`load_solver_set` and each solver's ``metadata``)."""
    solver = load_solver(path)
    return {**solver.metadata, "nfe": solver.nfe, "t_eps": solver.t_eps, "schedule": solver.schedule.to_metadata()}


def _open(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    if not path.exists():
        raise SolverFileError(path, "no such file")
    if not path.is_file():
        raise SolverFileError(path, "is not a regular file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise SolverFileError(path, f"is {size} bytes, far too large for a solver file (is it a model checkpoint?)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            meta = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types, OSError, or ValueError on damaged files
        raise SolverFileError(path, f"is not a readable safetensors file ({type(exc).__name__}: {exc})") from None
    return tensors, meta


def _decode_metadata(path: Path, raw: dict[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for key, text in raw.items():
        try:
            meta[key] = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, TypeError):
            raise SolverFileError(path, f"metadata field '{key}' is not valid JSON") from None
    if meta.get("format") != FORMAT_NAME:
        raise SolverFileError(path, "is a safetensors file but not a GAS solver (metadata 'format' is not "
                                    f"'{FORMAT_NAME}')")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version not in _READABLE_VERSIONS:
        raise SolverFileError(path, f"has format_version {version!r}; this version of the pack reads versions "
                                    f"{SINGLE_FORMAT_VERSION} and {FORMAT_VERSION} (update the pack, or re-export the "
                                    "solver)")
    required = _REQUIRED if version == SINGLE_FORMAT_VERSION else _REQUIRED_SET
    missing = [key for key in required if key not in meta]
    if missing:
        raise SolverFileError(path, f"metadata lacks {missing}")
    return meta


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite JSON constant {name}")


def _check_unknown(path: Path, tensors: dict[str, torch.Tensor], expected: list[str]) -> None:
    unknown = sorted(set(tensors) - set(expected))
    if unknown:
        raise SolverFileError(path, f"holds unexpected tensors {unknown} (expected {expected})")


def _check_nfe(path: Path, nfe: Any) -> int:
    if not isinstance(nfe, int) or isinstance(nfe, bool) or not (MIN_NFE <= nfe <= MAX_NFE):
        raise SolverFileError(path, f"nfe {nfe!r} is not an integer from {MIN_NFE} to {MAX_NFE}")
    return nfe


def _build_solver(path: Path, tensors: dict[str, torch.Tensor], nfe: int, t_eps: Any, schedule: NoiseSchedule,
                  descriptive: dict[str, Any], stored_grid: Any, dtype: torch.dtype | None,
                  where: str = "") -> GeneralizedSolver:
    """One validated solver from its four tensors (names without prefix); ``where`` prefixes every problem."""
    if not isinstance(t_eps, (int, float)) or isinstance(t_eps, bool) or not (0 < t_eps < 1):
        raise SolverFileError(path, f"{where}t_eps {t_eps!r} is not a number strictly between 0 and 1")
    shapes = {"mu_logit": (nfe - 1,), "t_couple": (nfe,), "a": (nfe, nfe), "c": (nfe, nfe)}
    for name, shape in shapes.items():
        if name not in tensors:
            raise SolverFileError(path, f"{where}lacks tensor '{name}'")
        value = tensors[name]
        if not value.is_floating_point():
            raise SolverFileError(path, f"{where}tensor '{name}' has dtype {value.dtype}, expected floating point")
        if tuple(value.shape) != shape:
            raise SolverFileError(path, f"{where}tensor '{name}' has shape {list(value.shape)}, expected "
                                        f"{list(shape)} for nfe={nfe}")
        if not torch.isfinite(value).all():
            raise SolverFileError(path, f"{where}tensor '{name}' holds NaN or inf")
    unread = ~used_correction_mask(nfe)
    for name in ("a", "c"):
        if (tensors[name][unread] != 0).any():
            raise SolverFileError(path, f"{where}tensor '{name}' has nonzero entries the update rule never reads "
                                        "(inconsistent file)")
    if (tensors["t_couple"].abs() > 1.0).any():
        raise SolverFileError(path, f"{where}t_couple holds time shifts larger than the whole time range "
                                    "(inconsistent file)")

    if dtype is None:
        dtype = _file_dtype(tensors["mu_logit"])
    solver = GeneralizedSolver(nfe, t_eps=float(t_eps), schedule=schedule, metadata=descriptive, dtype=dtype)
    with torch.no_grad():
        for name in _TENSORS:
            getattr(solver, name).copy_(tensors[name].to(dtype))
        grid = solver.sigmas()
    if not _is_valid_grid(grid):
        raise SolverFileError(path, f"{where}its timesteps do not give a finite, strictly decreasing sigma grid")
    if stored_grid is not None:
        ok = isinstance(stored_grid, list) and len(stored_grid) == nfe + 1 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in stored_grid)
        if not ok or not torch.allclose(torch.tensor(stored_grid, dtype=torch.float64), grid, rtol=_GRID_RTOL,
                                        atol=0):
            raise SolverFileError(path, f"{where}its recorded grid_sigmas disagree with its timesteps (inconsistent "
                                        "file)")
    return solver


def _schedule(path: Path, meta: dict[str, Any]) -> NoiseSchedule:
    try:
        return schedule_from_metadata(meta["schedule"])
    except ScheduleError as exc:
        raise SolverFileError(path, f"bad schedule ({exc})") from None


def _load_single(path: Path, tensors: dict[str, torch.Tensor], raw_meta: dict[str, str], meta: dict[str, Any],
                 dtype: torch.dtype | None) -> list[GeneralizedSolver]:
    _check_unknown(path, tensors, list(_TENSORS))
    if _CHECKSUM_KEY in meta and all(name in tensors for name in _TENSORS):
        if meta[_CHECKSUM_KEY] != _content_hash(tensors, raw_meta):
            raise SolverFileError(path, "its content does not match its checksum (the file is damaged or was edited "
                                        "by hand; re-save it with gas.save_solver)")
    nfe = _check_nfe(path, meta["nfe"])
    t_eps = meta["t_eps"]
    if not isinstance(t_eps, (int, float)) or isinstance(t_eps, bool) or not (0 < t_eps < 1):
        raise SolverFileError(path, f"t_eps {t_eps!r} is not a number strictly between 0 and 1")
    schedule = _schedule(path, meta)
    descriptive = {k: v for k, v in meta.items() if k not in _REQUIRED and k != _CHECKSUM_KEY}
    return [_build_solver(path, tensors, nfe, t_eps, schedule, descriptive, meta.get("grid_sigmas"), dtype)]


def _load_several(path: Path, tensors: dict[str, torch.Tensor], raw_meta: dict[str, str], meta: dict[str, Any],
                  dtype: torch.dtype | None) -> list[GeneralizedSolver]:
    nfes, entries = meta["nfes"], meta["solvers"]
    if not isinstance(nfes, list) or not nfes or any(not isinstance(n, int) or isinstance(n, bool) for n in nfes) \
            or nfes != sorted(set(nfes)):
        raise SolverFileError(path, f"nfes {nfes!r} is not an ascending list of distinct integers")
    for nfe in nfes:
        _check_nfe(path, nfe)
    if not isinstance(entries, dict) or sorted(entries) != sorted(str(n) for n in nfes):
        raise SolverFileError(path, "metadata 'solvers' does not hold one entry for each NFE in 'nfes'")
    _check_unknown(path, tensors, [f"nfe{n}.{name}" for n in nfes for name in _TENSORS])
    if meta[_CHECKSUM_KEY] != _content_hash(tensors, raw_meta, tuple(sorted(tensors))):
        raise SolverFileError(path, "its content does not match its checksum (the file is damaged or was edited by "
                                    "hand; re-save it with gas.save_solver_set)")
    schedule = _schedule(path, meta)
    solvers = []
    for nfe in nfes:
        entry = entries[str(nfe)]
        if not isinstance(entry, dict) or not isinstance(entry.get("metadata", {}), dict):
            raise SolverFileError(path, f"metadata entry for NFE {nfe} is not an object with 't_eps' and 'metadata'")
        own = {name: tensors[f"nfe{nfe}.{name}"] for name in _TENSORS if f"nfe{nfe}.{name}" in tensors}
        solvers.append(_build_solver(path, own, nfe, entry.get("t_eps"), schedule, dict(entry.get("metadata", {})),
                                     entry.get("grid_sigmas"), dtype, where=f"solver for NFE {nfe}: "))
    return solvers


def load_solver_set(path: str | os.PathLike[str], *, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None) -> SolverSet:
    """Load and validate a solver file of either version as a :class:`~gas.solver_set.SolverSet` (a version 1 file
    gives a set of one); every problem raises :class:`SolverFileError` naming the file.

    ``dtype`` of the parameters defaults to the file's (float64 stays float64, anything else becomes float32).
    """
    path = Path(path)
    tensors, raw_meta = _open(path)
    meta = _decode_metadata(path, raw_meta)
    loader = _load_single if meta["format_version"] == SINGLE_FORMAT_VERSION else _load_several
    solvers = loader(path, tensors, raw_meta, meta, dtype)
    if device is not None:
        for solver in solvers:
            solver.to(device)
    return SolverSet(solvers)


def load_solver(path: str | os.PathLike[str], *, nfe: int | None = None, device: torch.device | str | None = None,
                dtype: torch.dtype | None = None) -> GeneralizedSolver:
    """Load and validate one solver; every problem raises :class:`SolverFileError` naming the file.

    ``nfe`` picks one solver of a multi-NFE file (required there; optional for a one-solver file). ``dtype`` of the
    parameters defaults to the file's (float64 stays float64, anything else becomes float32).
    """
    solver_set = load_solver_set(path, device=device, dtype=dtype)
    if nfe is None:
        if len(solver_set) > 1:
            raise SolverFileError(path, f"holds solvers for NFE {list(solver_set.nfes)}; pass nfe= to choose one "
                                        "(or load them all with gas.load_solver_set)")
        return solver_set.default
    solver = solver_set.get(nfe)
    if solver is None:
        raise SolverFileError(path, f"holds no solver for NFE {nfe} (it holds {list(solver_set.nfes)})")
    return solver
