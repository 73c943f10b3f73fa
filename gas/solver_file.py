"""The solver file: a ``.safetensors`` file with four tensors and validated JSON metadata (never a pickle).

Tensors: ``mu_logit [N-1]``, ``t_couple [N]``, ``a [N, N]``, ``c [N, N]`` (row ``i`` = correction index ``i+1``,
column ``j`` = step ``j+1``; entries with ``i > j`` are never read and must be 0).

Metadata (each value a JSON document in safetensors' string metadata):

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
from .schedules import schedule_from_metadata
from .solver import MAX_NFE, MIN_NFE, GeneralizedSolver, used_correction_mask

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "SolverFileError", "load_solver", "read_solver_metadata", "save_solver"]

FORMAT_NAME = "gas-solver"
FORMAT_VERSION = 1
#: A solver file holds a few hundred floats; anything much larger is not one.
MAX_FILE_BYTES = 4 * 1024 * 1024
_TENSORS = ("mu_logit", "t_couple", "a", "c")
_REQUIRED = ("format", "format_version", "nfe", "t_eps", "schedule")
_GRID_RTOL = 1e-6
_CHECKSUM_KEY = "content_sha256"


def _is_valid_grid(grid: torch.Tensor) -> bool:
    return bool(torch.isfinite(grid).all() and (grid > 0).all() and (grid[1:] < grid[:-1]).all())


def _file_dtype(value: torch.Tensor) -> torch.dtype:
    return torch.float64 if value.dtype == torch.float64 else torch.float32


def _content_hash(tensors: dict[str, torch.Tensor], encoded_meta: dict[str, str]) -> str:
    """SHA-256 over the tensors (name, dtype, shape, bytes) and the encoded metadata, in a canonical order."""
    digest = hashlib.sha256()
    for name in _TENSORS:
        value = tensors[name].contiguous()
        digest.update(f"{name}|{value.dtype}|{list(value.shape)}|".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    for key in sorted(encoded_meta):
        if key != _CHECKSUM_KEY:
            digest.update(f"{key}={encoded_meta[key]}\n".encode())
    return digest.hexdigest()


def save_solver(solver: GeneralizedSolver, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write ``solver`` atomically (float64 parameters stay float64, others become float32; metadata as JSON).

    Refuses to replace an existing file unless ``overwrite``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not overwrite:
        raise SolverFileError(path, "already exists (pass overwrite=True to replace it)")
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
        grid = grid_tensor.tolist()
    meta: dict[str, Any] = dict(solver.metadata)
    meta.update(format=FORMAT_NAME, format_version=FORMAT_VERSION, nfe=solver.nfe, t_eps=solver.t_eps,
                schedule=solver.schedule.to_metadata(), grid_sigmas=grid)
    meta.pop(_CHECKSUM_KEY, None)
    encoded = {key: json.dumps(value, allow_nan=False) for key, value in meta.items()}
    encoded[_CHECKSUM_KEY] = json.dumps(_content_hash(tensors, encoded))
    return write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=encoded))


def read_solver_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Decoded metadata of a solver file, fully validated (tensors included); raises :class:`SolverFileError`."""
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
            keys = list(handle.keys())
            unknown = sorted(set(keys) - set(_TENSORS))
            if unknown:
                raise SolverFileError(path, f"holds unexpected tensors {unknown} (expected {list(_TENSORS)})")
            tensors = {key: handle.get_tensor(key) for key in keys}
    except SolverFileError:
        raise
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
    missing = [key for key in _REQUIRED if key not in meta]
    if missing:
        raise SolverFileError(path, f"metadata lacks {missing}")
    version = meta["format_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version != FORMAT_VERSION:
        raise SolverFileError(path, f"has format_version {version!r}; this version of the pack reads version "
                                    f"{FORMAT_VERSION} (update the pack, or re-export the solver)")
    return meta


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite JSON constant {name}")


def load_solver(path: str | os.PathLike[str], *, device: torch.device | str | None = None,
                dtype: torch.dtype | None = None) -> GeneralizedSolver:
    """Load and validate a solver file; every problem raises :class:`SolverFileError` naming the file.

    ``dtype`` of the parameters defaults to the file's (float64 stays float64, anything else becomes float32).
    """
    path = Path(path)
    tensors, raw_meta = _open(path)
    meta = _decode_metadata(path, raw_meta)
    if _CHECKSUM_KEY in meta and all(name in tensors for name in _TENSORS):
        if meta[_CHECKSUM_KEY] != _content_hash(tensors, raw_meta):
            raise SolverFileError(path, "its content does not match its checksum (the file is damaged or was edited "
                                        "by hand; re-save it with gas.save_solver)")

    nfe = meta["nfe"]
    if not isinstance(nfe, int) or isinstance(nfe, bool) or not (MIN_NFE <= nfe <= MAX_NFE):
        raise SolverFileError(path, f"nfe {nfe!r} is not an integer from {MIN_NFE} to {MAX_NFE}")
    t_eps = meta["t_eps"]
    if not isinstance(t_eps, (int, float)) or isinstance(t_eps, bool) or not (0 < t_eps < 1):
        raise SolverFileError(path, f"t_eps {t_eps!r} is not a number strictly between 0 and 1")
    try:
        schedule = schedule_from_metadata(meta["schedule"])
    except ScheduleError as exc:
        raise SolverFileError(path, f"bad schedule ({exc})") from None

    shapes = {"mu_logit": (nfe - 1,), "t_couple": (nfe,), "a": (nfe, nfe), "c": (nfe, nfe)}
    for name, shape in shapes.items():
        if name not in tensors:
            raise SolverFileError(path, f"lacks tensor '{name}'")
        value = tensors[name]
        if not value.is_floating_point():
            raise SolverFileError(path, f"tensor '{name}' has dtype {value.dtype}, expected floating point")
        if tuple(value.shape) != shape:
            raise SolverFileError(path, f"tensor '{name}' has shape {list(value.shape)}, expected {list(shape)} "
                                        f"for nfe={nfe}")
        if not torch.isfinite(value).all():
            raise SolverFileError(path, f"tensor '{name}' holds NaN or inf")
    unread = ~used_correction_mask(nfe)
    for name in ("a", "c"):
        if (tensors[name][unread] != 0).any():
            raise SolverFileError(path, f"tensor '{name}' has nonzero entries the update rule never reads "
                                        "(inconsistent file)")
    if (tensors["t_couple"].abs() > 1.0).any():
        raise SolverFileError(path, "t_couple holds time shifts larger than the whole time range (inconsistent file)")

    if dtype is None:
        dtype = _file_dtype(tensors["mu_logit"])
    descriptive = {k: v for k, v in meta.items() if k not in _REQUIRED and k != _CHECKSUM_KEY}
    solver = GeneralizedSolver(nfe, t_eps=float(t_eps), schedule=schedule, metadata=descriptive, dtype=dtype)
    with torch.no_grad():
        for name in _TENSORS:
            getattr(solver, name).copy_(tensors[name].to(dtype))
        grid = solver.sigmas()
    if not _is_valid_grid(grid):
        raise SolverFileError(path, "its timesteps do not give a finite, strictly decreasing sigma grid")
    stored = meta.get("grid_sigmas")
    if stored is not None:
        ok = isinstance(stored, list) and len(stored) == nfe + 1 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in stored)
        if not ok or not torch.allclose(torch.tensor(stored, dtype=torch.float64), grid, rtol=_GRID_RTOL, atol=0):
            raise SolverFileError(path, "its recorded grid_sigmas disagree with its timesteps (inconsistent file)")
    if device is not None:
        solver.to(device)
    return solver
