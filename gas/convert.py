"""Import the GAS authors' released solvers (``torch.save`` training checkpoints) into solver files.

Usage: ``python -m gas.convert IN.pt OUT.safetensors --model sd15 [--cfg 7.5] [--t-eps 1e-3] [--overwrite]``

The checkpoint is read with ``torch.load(..., weights_only=True)`` (no arbitrary pickles). The EMA shadow parameters
are used (that is what the authors' own generation script samples with), in their registration order
``mu_logit, t_couple, c1, a1, c2, a2, ..., cN, aN``; N is inferred and the order must equal N. Correction entries the
update rule never reads have no effect on the output and are dropped (stored as 0).
"""

from __future__ import annotations

import argparse
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import SolverFileError
from .schedules import DiscreteVPSchedule, NoiseSchedule
from .solver import MAX_NFE, MIN_NFE, GeneralizedSolver, used_correction_mask
from .solver_file import save_solver

__all__ = ["MODEL_PRESETS", "import_official_checkpoint", "main"]

#: What the authors' configs used, per model: the schedule, t_eps, CFG scale and model identity.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "sd15": {
        "schedule": DiscreteVPSchedule.sd_linear,
        "t_eps": 1e-3,
        "cfg": 7.5,
        "model": {"family": "SD15", "prediction": "eps", "file": "v1-5-pruned-emaonly.ckpt"},
        "teacher": "LD3 iPNDM (order 2) on GITS sigmas, cfg 7.5 (authors' SD recipe)",
    },
}


def _shadow_params(path: Path, checkpoint: Any) -> list[torch.Tensor]:
    if not isinstance(checkpoint, dict):
        raise SolverFileError(path, f"holds a {type(checkpoint).__name__}, not the authors' checkpoint dictionary")
    ema = checkpoint.get("ema")
    if not isinstance(ema, dict) or "shadow_params" not in ema:
        raise SolverFileError(path, "has no 'ema' entry with 'shadow_params' (not a GAS training checkpoint)")
    shadow = ema["shadow_params"]
    if not isinstance(shadow, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in shadow):
        raise SolverFileError(path, "'ema.shadow_params' is not a list of tensors")
    return list(shadow)


def _solver_from_shadow(path: Path, shadow: list[torch.Tensor], schedule: NoiseSchedule, t_eps: float,
                        metadata: dict[str, Any]) -> GeneralizedSolver:
    if len(shadow) < 4 or len(shadow) % 2:
        raise SolverFileError(path, f"has {len(shadow)} shadow parameters; the authors' layout has 2 + 2*order")
    order = (len(shadow) - 2) // 2
    if shadow[1].ndim != 1:
        raise SolverFileError(path, "its second parameter (t_couple) is not a vector")
    nfe = shadow[1].numel()
    if not (MIN_NFE <= nfe <= MAX_NFE):
        raise SolverFileError(path, f"t_couple has {nfe} entries; supported NFE is {MIN_NFE} to {MAX_NFE}")
    if order != nfe:
        raise SolverFileError(path, f"has solver order {order} but {nfe} steps; only order = steps is supported")
    expected = [(nfe - 1,)] + [(nfe,)] * (1 + 2 * order)
    for index, (tensor, shape) in enumerate(zip(shadow, expected, strict=True)):
        if tuple(tensor.shape) != shape:
            raise SolverFileError(path, f"shadow parameter {index} has shape {list(tensor.shape)}, expected "
                                        f"{list(shape)} for {nfe} steps")
        if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
            raise SolverFileError(path, f"shadow parameter {index} is not a finite floating-point tensor")
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in shadow) else torch.float32
    solver = GeneralizedSolver(nfe, t_eps=t_eps, schedule=schedule, metadata=metadata, dtype=dtype)
    mask = used_correction_mask(nfe).to(dtype)
    with torch.no_grad():
        solver.mu_logit.copy_(shadow[0].to(dtype))
        solver.t_couple.copy_(shadow[1].to(dtype))
        c_rows = [shadow[2 + 2 * i].to(dtype) for i in range(order)]
        a_rows = [shadow[3 + 2 * i].to(dtype) for i in range(order)]
        solver.c.copy_(torch.stack(c_rows) * mask)
        solver.a.copy_(torch.stack(a_rows) * mask)
    return solver


def _check_archive(path: Path) -> None:
    """torch.save writes a zip archive; verify every entry's CRC (torch.load itself does not)."""
    try:
        if not zipfile.is_zipfile(path):
            raise SolverFileError(path, "is not a torch checkpoint (not a zip archive)")
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except SolverFileError:
        raise
    except Exception as exc:  # BadZipFile, zlib errors, struct errors, EOF on truncated archives
        raise SolverFileError(path, f"is a damaged archive ({type(exc).__name__})") from None
    if damaged is not None:
        raise SolverFileError(path, f"is damaged (entry '{damaged}' fails its CRC check)")


def import_official_checkpoint(
    checkpoint_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str] | None = None,
    *,
    model: str = "sd15",
    cfg: float | None = None,
    t_eps: float | None = None,
    overwrite: bool = False,
) -> GeneralizedSolver:
    """Read an authors' checkpoint (EMA parameters) into a :class:`GeneralizedSolver`; write it if ``output_path``.

    ``model`` picks the preset (schedule, t_eps, cfg) of :data:`MODEL_PRESETS`; ``cfg``/``t_eps`` override it.
    Problems raise :class:`~gas.solver_file.SolverFileError` naming the file.
    """
    path = Path(checkpoint_path)
    if model not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {model!r}; known: {sorted(MODEL_PRESETS)}")
    preset = MODEL_PRESETS[model]
    if not path.is_file():
        raise SolverFileError(path, "no such file")
    _check_archive(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors, or objects the safe unpickler refuses
        raise SolverFileError(path, f"cannot be read as a weights-only torch checkpoint ({type(exc).__name__})") \
            from None
    used_t_eps = float(preset["t_eps"] if t_eps is None else t_eps)
    if not (0 < used_t_eps < 1):
        raise ValueError(f"--t-eps must lie strictly between 0 and 1, got {used_t_eps}")
    metadata = {
        "mode": "imported",
        "source": path.name,
        "model": dict(preset["model"]),
        "cfg": float(preset["cfg"] if cfg is None else cfg),
        "teacher": preset["teacher"],
        "step": int(checkpoint.get("step", -1)) if isinstance(checkpoint, dict) else -1,
    }
    solver = _solver_from_shadow(path, _shadow_params(path, checkpoint), preset["schedule"](), used_t_eps, metadata)
    if output_path is not None:
        save_solver(solver, output_path, overwrite=overwrite)
    return solver


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m gas.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="the authors' .pt training checkpoint")
    parser.add_argument("output", help="solver file to write (.safetensors)")
    parser.add_argument("--model", default="sd15", choices=sorted(MODEL_PRESETS),
                        help="model the solver was trained for (default: %(default)s)")
    parser.add_argument("--cfg", type=float, default=None, help="CFG scale it was trained with (default: preset's)")
    parser.add_argument("--t-eps", type=float, default=None, help="final GAS time (default: preset's, 1e-3 for SD)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    try:
        solver = import_official_checkpoint(args.checkpoint, args.output, model=args.model, cfg=args.cfg,
                                            t_eps=args.t_eps, overwrite=args.overwrite)
    except (SolverFileError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    grid = ", ".join(f"{v:.4f}" for v in solver.sigmas().tolist())
    print(f"wrote {args.output}: {solver.nfe} steps, sigmas [{grid}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
