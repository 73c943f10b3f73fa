"""The files a run writes: where they go, the checks before any work starts, and what the solver file and report say.

``<out>/<name>-nfe<N>-<mode>.safetensors`` (+ ``.md`` report, ``.png`` grid) and ``<runs>/<name>-nfe<N>-<mode>/``
(``state.pt`` training state, ``log.csv``, ``tb/``); the teacher cache is :mod:`trainer.teacher`'s. An existing solver
file is never replaced without ``overwrite``, and an unfinished run is never started over without ``overwrite``.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import gas
from gas import GeneralizedSolver

from .config import DistillConfig
from .errors import OutputError, ResumeError
from .problem import DistillProblem
from .report import BASELINE_REFERENCE, first_frame, latents_to_images, save_grid, scores_table, write_markdown
from .teacher import TeacherSpec

__all__ = ["METRICS_NOTE", "OutputPaths", "check_outputs", "check_writable", "decoded_images", "existing_solver_error",
           "finite_or_none", "output_paths", "solver_metadata", "timesteps_table", "write_report"]


@dataclass
class OutputPaths:
    """Where one run writes."""

    stem: str
    solver: Path
    report: Path
    grid: Path
    run_dir: Path
    state: Path
    cache_dir: Path


def output_paths(problem: DistillProblem, config: DistillConfig) -> OutputPaths:
    """The files a run writes, from the config's folders and ``<name>-nfe<N>-<mode>``."""
    out_dir, cache_dir, run_root = config.paths()
    stem = f"{config.name or problem.name}-nfe{config.nfe}-{config.mode}"
    run_dir = run_root / stem
    return OutputPaths(stem, out_dir / f"{stem}.safetensors", out_dir / f"{stem}.md", out_dir / f"{stem}.png",
                       run_dir, run_dir / "state.pt", cache_dir)


def check_writable(folder: Path, what: str) -> None:
    """:class:`~trainer.errors.OutputError` unless ``folder`` (the ``what``) can be created and written to."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the {what} {folder} ({exc.strerror or exc})") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"the {what} {folder} is not writable ({exc.strerror or exc})") from None


def existing_solver_error(path: Path) -> OutputError:
    """The error for a solver file that exists while ``overwrite`` is off."""
    return OutputError(f"{path} already exists: pass `overwrite` to replace it, or `name` to pick another name")


def check_not_written_meanwhile(path: Path, config: DistillConfig, kept: Path) -> None:
    """Just before writing the solver file ``path``: refuse (one sentence) if another run wrote it while this one
    trained and ``overwrite`` is off; this run's work stays in ``kept`` for ``resume``."""
    if path.exists() and not config.overwrite:
        raise OutputError(f"{path} appeared while this run trained (another run with the same name?) and was not "
                          f"replaced; this run's work is kept in {kept}: run again with `resume` and `overwrite` to "
                          "write this run's solver over it")


def check_outputs(paths: OutputPaths, config: DistillConfig) -> None:
    """Before any work: the folders are writable, nothing is replaced silently, ``resume`` has a state to resume."""
    if paths.solver.exists() and not config.overwrite:
        raise existing_solver_error(paths.solver)
    check_writable(paths.solver.parent, "output folder")
    check_writable(paths.run_dir, "run folder")
    if config.resume and not paths.state.exists():
        raise ResumeError(f"there is no unfinished run to resume at {paths.state} (run without `resume` to start)")
    if paths.state.exists() and not config.resume and not config.overwrite:
        raise ResumeError(f"an unfinished run of {paths.stem} exists in {paths.run_dir}: pass `resume` to continue "
                          "it, or `overwrite` to start over")


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (in nested dicts and lists) replaced by None (JSON cannot hold them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_or_none(v) for v in value]
    return value


def loss_description(config: DistillConfig) -> str:
    """The training loss in words (solver metadata and report)."""
    base = "L1 on latents" if config.loss == "l1" else "LPIPS-VGG on decoded images"
    if config.loss_reduce == "log":
        base = f"mean log(1e-6 + {base} per sample)"  # LOG_EPS
    elif config.loss_reduce == "cauchy":
        base = f"Cauchy-robust {base} (c log(1 + d / c) per sample, c = {config.cauchy_scale:g} batch medians)"
    if config.mode == "gas":
        base += (f" + {config.disc_weight:g} x relativistic adversarial loss (R3GAN-style latent discriminator, "
                 f"'{config.disc_preset}' size, R1/R2 gamma {config.r1_gamma:g}, disc lr {config.disc_lr:g})")
    return base


def solver_metadata(problem: DistillProblem, config: DistillConfig, spec: TeacherSpec, scores: dict[str, Any],
                    label: str) -> dict[str, Any]:
    """The metadata a trained solver file carries: model, teacher, recipe, held-out scores, provenance."""
    meta: dict[str, Any] = {
        "model": problem.identity,
        "cfg": problem.cfg,
        "mode": config.mode,
        "teacher": spec.describe(),
        "teacher_settings": {k: v for k, v in spec.to_json().items() if k != "sigmas"},
        "loss": loss_description(config),
        "iterations": config.iters,
        "batch": config.batch,
        "train_size": config.training_samples,
        "seed": config.seed,
        "decoupled": problem.decoupled,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "pack_version": gas.__version__,
        "scores": {"heldout_samples": scores["n"], "reference": "teacher", "solver": label,
                   "methods": scores["methods"]},
    }
    meta.update(problem.extra_metadata)
    meta.update(config.extra_metadata)
    return finite_or_none(meta)


#: What the report's score columns mean.
METRICS_NOTE = ("L1: mean |x - x_teacher| over latents, same held-out noise. SWD: sliced Wasserstein distance "
                "between the set of samples and the teacher's set (a distribution distance). LPIPS: on decoded "
                "images, when available. NLL excess (analytic problems): negative log-likelihood per dimension "
                "under the known data distribution minus the teacher's. Baselines run on the untrained solver's "
                "grid.")


def write_report(problem: DistillProblem, config: DistillConfig, paths: OutputPaths, spec: TeacherSpec,
                 scores: dict[str, Any], solver: GeneralizedSolver, samples: dict[str, torch.Tensor], label: str,
                 train_seconds: float) -> tuple[Path, Path | None]:
    """The markdown report (held-out table, learned timesteps) and the image grid next to the solver file."""
    grid_path: Path | None = None
    if samples["teacher"].shape[0] > 0:
        rows = [(name, decoded_images(problem, samples[name])) for name in ("teacher", label, BASELINE_REFERENCE)]
        grid_path = save_grid(paths.grid, [(f"{n} ({config.nfe} NFE)" if n != "teacher" else "teacher", im)
                                           for n, im in rows])
    timesteps = timesteps_table(problem, config, solver, label)
    sections = [("Held-out scores", scores_table(scores["methods"], config.nfe) + "\n\n" + METRICS_NOTE),
                ("Timesteps (sigmas)", timesteps)]
    if grid_path is not None:
        sections.append(("Samples", f"Rows: teacher, {label}, {BASELINE_REFERENCE}; same held-out noise per column."
                                    f"\n\n![samples]({grid_path.name})"))
    info = {"model": problem.description or problem.name, "solver file": paths.solver.name, "mode": label,
            "NFE": config.nfe, "teacher": spec.describe(), "loss": loss_description(config),
            "iterations": f"{config.iters} (batch {config.batch}, {config.training_samples} training samples, "
                          f"training took {train_seconds:.0f} s)",
            "held-out samples": scores["n"], "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    report = write_markdown(paths.report, f"GAS solver {paths.stem}", sections, info)
    return report, grid_path


def decoded_images(problem: DistillProblem, latents: torch.Tensor) -> torch.Tensor:
    """Images ``[B, 3, H, W]`` of end-state latents: the problem's decoder, else the latents' first channels (of
    video, the first frame)."""
    if problem.decode is not None:
        with torch.no_grad():
            return first_frame(problem.decode(latents.to(problem.device)).float().cpu())
    return latents_to_images(latents)


def timesteps_table(problem: DistillProblem, config: DistillConfig, solver: GeneralizedSolver, label: str) -> str:
    """Markdown table of the untrained (uniform-time) and learned sigmas and the decoupled time shifts."""
    init = GeneralizedSolver(config.nfe, t_eps=config.t_eps, schedule=problem.schedule).sigmas()
    learned = solver.sigmas().tolist()
    tc = solver.t_couple.detach().tolist()
    return "\n".join([
        "| | " + " | ".join(f"s{k}" for k in range(config.nfe + 1)) + " |",
        "|---|" + "---:|" * (config.nfe + 1),
        "| untrained (uniform time) | " + " | ".join(f"{v:.4g}" for v in init.tolist()) + " |",
        f"| learned ({label}) | " + " | ".join(f"{v:.4g}" for v in learned) + " |",
        "| decoupled time shift | " + " | ".join(f"{v:+.3g}" for v in tc) + " | |",
    ])
