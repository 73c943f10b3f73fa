"""Several NFEs in one run: :func:`distill_nfes` trains a solver per NFE on one shared teacher and writes one file.

Files (``<stem>`` = ``<name>-nfe<N1>-<N2>-...-<mode>``, the NFEs ascending, e.g. ``sd15-nfe4-6-8-gas``):

* ``<out>/<stem>.safetensors``: every solver in one format-version-2 file (:func:`gas.combine_solver_files`), each
  with its own metadata (held-out ``scores``, iterations, ...); ``<out>/<stem>.md`` / ``.png``: one report and grid
  covering every NFE.
* ``<runs>/<stem>/``: the per-NFE runs of :func:`trainer.distill.distill` (``<name>-nfe<N>-<mode>/state.pt`` while an
  NFE trains, ``<name>-nfe<N>-<mode>.safetensors`` once it is finished). ``resume`` continues the unfinished NFE and
  keeps the finished ones (they are not retrained); the per-NFE solver files are removed once the combined file is
  written.

The teacher. Its cache is keyed without the solver's NFE (:mod:`trainer.teacher_data`), so every NFE whose teacher
settings are the same reads the samples the first NFE generated. The default ``dpmpp3m`` teacher (32 or 64 steps) is
the same for every NFE: it is generated once. The paper's ``ipndm-gits`` teacher runs NFE + 1 steps unless
``teacher_steps`` is set, so it differs per NFE and each NFE generates its own (a warning says so; a fixed
``teacher_steps`` makes it one shared teacher).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from torch import nn

import gas

from .config import DistillConfig
from .distill import DistillResult, ProgressCallback, StepCallback, StopCheck, distill
from .distributed import init_distributed
from .errors import ResumeError
from .evaluate import evaluate_solver
from .outputs import (
    METRICS_NOTE,
    check_not_written_meanwhile,
    check_writable,
    decoded_images,
    existing_solver_error,
    output_paths,
    timesteps_table,
)
from .problem import DistillProblem
from .report import BASELINE_REFERENCE, save_grid, scores_table, write_markdown
from .runtime import resolve_amp
from .teacher_data import load_teacher

__all__ = ["MultiDistillResult", "MultiPaths", "distill_nfes", "finished_result", "multi_paths", "nfe_stem"]

log = logging.getLogger("trainer")


def nfe_stem(name: str, nfes: Sequence[int], mode: str) -> str:
    """``<name>-nfe<N1>-<N2>-...-<mode>`` (one NFE: the single-run stem ``<name>-nfe<N>-<mode>``)."""
    return f"{name}-nfe{'-'.join(str(n) for n in sorted(set(nfes)))}-{mode}"


@dataclass
class MultiPaths:
    """Where a multi-NFE run writes: the combined solver file, its report and grid, and the per-NFE runs' folder."""

    stem: str
    solver: Path
    report: Path
    grid: Path
    run_dir: Path

    def has_progress(self) -> bool:
        """Whether an earlier run left per-NFE states or finished per-NFE solvers in :attr:`run_dir`."""
        return self.run_dir.is_dir() and (any(self.run_dir.glob("*.safetensors"))
                                          or any(self.run_dir.glob("*/state.pt")))


def multi_paths(problem: DistillProblem, config: DistillConfig, nfes: Sequence[int]) -> MultiPaths:
    """The files of a multi-NFE run of ``config`` (its ``nfe`` ignored) for ``nfes``."""
    out_dir, _, run_root = config.paths()
    stem = nfe_stem(config.name or problem.name, nfes, config.mode)
    return MultiPaths(stem, out_dir / f"{stem}.safetensors", out_dir / f"{stem}.md", out_dir / f"{stem}.png",
                      run_root / stem)


@dataclass
class MultiDistillResult:
    """What :func:`distill_nfes` returns: one :class:`~trainer.distill.DistillResult` per NFE and the combined file."""

    #: Per NFE (ascending): its result (``solver_path`` names its per-NFE file, removed once combined).
    results: dict[int, DistillResult]
    #: The combined solver file, report and grid (report and grid None when not written).
    solver_path: Path
    report_path: Path | None
    grid_path: Path | None
    run_dir: Path
    #: How many distinct teachers the NFEs used (1 when the teacher was shared).
    teachers: int
    seconds: float = 0.0

    @property
    def nfes(self) -> list[int]:
        return sorted(self.results)


def distill_nfes(problem: DistillProblem, config: DistillConfig, nfes: Sequence[int], *, progress: bool = True,
                 lpips_model: nn.Module | None = None, callback: StepCallback | None = None,
                 on_progress: ProgressCallback | None = None,
                 should_stop: StopCheck | None = None) -> MultiDistillResult:
    """Distil one solver per NFE in ``nfes`` (``config.nfe`` is ignored) and write them into one solver file.

    Each NFE is a :func:`trainer.distill.distill` run on the same teacher cache; the arguments are passed on to each.
    ``resume`` keeps the NFEs an interrupted run finished and continues the one it was training; ``overwrite``
    starts every NFE over and replaces the combined file. Raises what ``distill`` raises (one sentence each);
    :class:`~trainer.errors.ResumeError` when a run folder holds progress and neither ``resume`` nor ``overwrite``
    is given, or ``resume`` finds nothing to resume.
    """
    t_start = time.time()
    nfes = sorted({int(n) for n in nfes})
    configs = {n: dataclasses.replace(config, nfe=n) for n in nfes}
    dist = init_distributed(problem.device)
    paths = multi_paths(problem, config, nfes)
    def check() -> None:
        for cfg in configs.values():
            cfg.validate(dist.world)
        _check(paths, config)

    dist.main_decides(check)
    if config.teacher == "ipndm-gits" and config.teacher_steps is None and len(nfes) > 1 and dist.is_main:
        log.warning("the ipndm-gits teacher runs NFE + 1 steps, so it differs per NFE and each of the %d NFEs "
                    "generates its own teacher samples; pass `teacher_steps` to share one teacher", len(nfes))
    if dist.is_main:
        log.info("training %s: one solver per NFE %s, written into one file", paths.stem,
                 ", ".join(str(n) for n in nfes))
    results: dict[int, DistillResult] = {}
    parts: list[Path] = []  # each NFE's own solver file, combined into one at the end
    first_with: dict[str, int] = {}  # teacher cache key -> the first NFE that used it
    for n in nfes:
        cfg = dataclasses.replace(configs[n], out_dir=str(paths.run_dir), run_dir=str(paths.run_dir),
                                  name=config.name or problem.name, report=False)
        part = output_paths(problem, cfg)
        parts.append(part.solver)
        finished, unfinished = dist.main_decides(lambda p=part: (p.solver.exists(), p.state.exists()))
        if config.resume and finished and not unfinished:
            if dist.is_main:
                log.info("NFE %d was finished by the interrupted run (%s): kept, not retrained", n, part.solver.name)
            results[n] = finished_result(problem, cfg, part.solver, progress)
        else:
            cfg.resume = config.resume and unfinished
            results[n] = distill(problem, cfg, progress=progress, lpips_model=lpips_model, callback=callback,
                                 on_progress=on_progress, should_stop=should_stop)
        key = results[n].teacher_key
        if dist.is_main:
            if key in first_with:
                log.info("NFE %d: teacher samples reused from the cache generated for NFE %d (teacher %s)", n,
                         first_with[key], results[n].teacher)
            elif first_with:
                log.info("NFE %d: its teacher differs from the earlier NFEs' (teacher %s)", n, results[n].teacher)
        first_with.setdefault(key, n)

    def write() -> tuple[Path | None, Path | None]:
        check_not_written_meanwhile(paths.solver, config, paths.run_dir)  # the NFEs' own files stay there
        gas.combine_solver_files(parts, paths.solver, overwrite=config.overwrite)
        report = grid = None
        if config.report:
            report, grid = write_multi_report(problem, config, paths, results)
        for part in parts:
            with contextlib.suppress(OSError):
                part.unlink()
        log.info("solvers for NFE %s written to %s", ", ".join(str(n) for n in nfes), paths.solver)
        return report, grid

    report_path, grid_path = dist.main_decides(write)
    return MultiDistillResult(results=results, solver_path=paths.solver, report_path=report_path,
                              grid_path=grid_path, run_dir=paths.run_dir, teachers=len(first_with),
                              seconds=time.time() - t_start)


def _check(paths: MultiPaths, config: DistillConfig) -> None:
    """Before any work: the folders are writable, nothing is replaced silently, ``resume`` has something to resume."""
    if paths.solver.exists() and not config.overwrite:
        raise existing_solver_error(paths.solver)
    check_writable(paths.solver.parent, "output folder")
    check_writable(paths.run_dir, "run folder")
    progress = paths.has_progress()
    if config.resume and not progress:
        raise ResumeError(f"there is no unfinished run to resume in {paths.run_dir} (run without `resume` to start)")
    if progress and not config.resume and not config.overwrite:
        raise ResumeError(f"an unfinished run of {paths.stem} exists in {paths.run_dir}: pass `resume` to continue "
                          "it, or `overwrite` to start over")


def write_multi_report(problem: DistillProblem, config: DistillConfig, paths: MultiPaths,
                       results: dict[int, DistillResult]) -> tuple[Path, Path | None]:
    """One markdown report (per NFE: held-out scores and timesteps) and one grid (teacher, then per NFE the learned
    solver and DPM-Solver++(3M)) for the combined file."""
    nfes = sorted(results)
    first = results[nfes[0]]
    label = first.label
    grid_path: Path | None = None
    if first.samples["teacher"].shape[0] > 0:
        rows = [("teacher", decoded_images(problem, first.samples["teacher"]))]
        for n in nfes:
            rows += [(f"{name} ({n} NFE)", decoded_images(problem, results[n].samples[name]))
                     for name in (label, BASELINE_REFERENCE)]
        grid_path = save_grid(paths.grid, rows)
    sections = []
    for n in nfes:
        result = results[n]
        sections.append((f"NFE {n}: held-out scores", scores_table(result.scores["methods"], n)))
        sections.append((f"NFE {n}: timesteps (sigmas)",
                         timesteps_table(problem, dataclasses.replace(config, nfe=n), result.solver, label)))
    sections.append(("Metrics", METRICS_NOTE))
    if grid_path is not None:
        sections.append(("Samples", f"Rows: teacher, then per NFE {label} and {BASELINE_REFERENCE}; same held-out "
                                    f"noise per column.\n\n![samples]({grid_path.name})"))
    teachers = sorted({results[n].teacher for n in nfes})
    info = {"model": problem.description or problem.name, "solver file": paths.solver.name, "mode": label,
            "NFEs": ", ".join(str(n) for n in nfes), "teacher": "; ".join(teachers),
            "iterations": f"{config.iters} per NFE (batch {config.batch}, {config.training_samples} training samples)",
            "held-out samples": first.scores["n"],
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return write_markdown(paths.report, f"GAS solvers {paths.stem}", sections, info), grid_path


def finished_result(problem: DistillProblem, config: DistillConfig, path: Path, progress: bool) -> DistillResult:
    """A :class:`~trainer.distill.DistillResult` for a solver file an earlier (interrupted) run already wrote: the
    solver is loaded and evaluated again on the held-out teacher samples (from the cache)."""
    dist = init_distributed(problem.device)
    autocast = resolve_amp(config.amp, problem.device)
    solver = gas.load_solver(path, nfe=config.nfe)
    data = load_teacher(problem, config, autocast, progress=progress, dist=dist)
    label = config.mode.upper()
    scores, outputs = evaluate_solver(problem, config, solver, data, label, autocast=autocast, dist=dist)
    k = min(config.grid_samples, len(data.val_idx))
    samples: dict[str, Any] = {"teacher": data.val_lat[:k], **{name: lat[:k] for name, lat in outputs.items()}}
    paths = output_paths(problem, config)
    return DistillResult(solver=solver, scores=scores, solver_path=paths.solver, report_path=paths.report,
                         grid_path=paths.grid, run_dir=paths.run_dir, teacher=data.spec.describe(), label=label,
                         samples=samples, world=dist.world, teacher_key=data.cache.key)

