"""The distillation pipeline: :func:`distill` (the public API), :func:`distill_denoiser` (for your own model) and the
training loop :func:`train`.

``distill`` checks the inputs and the output files, gets the teacher's samples (:mod:`trainer.teacher_data`), trains
(:func:`train`), evaluates the EMA solver on the held-out samples (:mod:`trainer.evaluate`) and writes the solver
file and its report (:mod:`trainer.outputs`). One iteration is :func:`trainer.steps.discriminator_step` (GAS only)
then :func:`trainer.steps.solver_step` on the batch of :func:`trainer.batches.training_batch`; what a checkpoint
holds is :class:`trainer.run_state.RunState`. The student is the inference sampler itself (``gas.sample_gas``), so a
trained solver samples in ComfyUI exactly as it was trained.

Under torchrun (K processes, :mod:`trainer.distributed`) every rank takes its contiguous ``B/K`` share of each
global batch (and of the discriminator's fresh noise), and the gradients of the solver and of the discriminator are
averaged over the ranks before clipping and the optimiser step, so the ranks stay identical and the result is the
one-process result up to floating-point noise. Only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gas import GeneralizedSolver, NoiseSchedule, save_solver

from .batches import batch_indices, training_batch
from .config import DistillConfig
from .distributed import Dist, init_distributed, json_digest, mark_on_every_rank
from .errors import ConfigError, TrainingDivergedError, TrainingInterruptedError
from .evaluate import evaluate_solver, heldout_l1
from .losses import resolve_lpips
from .monitor import InterruptGuard, RunMonitor
from .outputs import (
    OutputPaths,
    check_not_written_meanwhile,
    check_outputs,
    output_paths,
    solver_metadata,
    write_report,
)
from .problem import DistillProblem
from .report import scores_table
from .run_state import RunState, save_checkpoint, start_or_resume
from .runtime import resolve_amp
from .starts import best_start
from .steps import NonFiniteError, StepContext, discriminator_step, solver_step
from .teacher import end_sigmas
from .teacher_data import TeacherData, load_teacher

__all__ = [
    "DistillResult",
    "OutputPaths",
    "StepCallback",
    "TeacherData",
    "batch_indices",
    "distill",
    "distill_denoiser",
    "evaluate_solver",
    "load_teacher",
    "output_paths",
    "train",
]

log = logging.getLogger("trainer")

#: ``callback(step, stats)`` after every iteration.
StepCallback = Callable[[int, dict[str, float]], None]
#: ``on_progress(phase, done, total)``: "teacher (train)" / "teacher (held-out)" in samples, "train" in iterations.
ProgressCallback = Callable[[str, int, int], None]
#: ``should_stop()``: asked between teacher batches and after every iteration; True stops the run like Ctrl-C.
StopCheck = Callable[[], bool]


@dataclass
class DistillResult:
    """What :func:`distill` returns."""

    #: The trained solver with its EMA parameters (what was saved), on CPU.
    solver: GeneralizedSolver
    #: Held-out scores: ``{"n": int, "methods": {name: {"l1", "swd", ["lpips"]}}}``.
    scores: dict[str, Any]
    #: The solver file, report and grid (None when not written).
    solver_path: Path | None
    report_path: Path | None
    grid_path: Path | None
    #: Training state and logs folder.
    run_dir: Path
    #: Teacher description and the label of the trained solver in ``scores`` ("GS" / "GAS").
    teacher: str
    label: str
    #: The first ``grid_samples`` held-out end states per method, and the teacher's (CPU).
    samples: dict[str, torch.Tensor] = field(default_factory=dict)
    #: Wall-clock seconds of the whole call, and of the training loop alone.
    seconds: float = 0.0
    train_seconds: float = 0.0
    #: Number of processes that trained (torchrun); every rank returns the same result, rank 0 wrote the files.
    world: int = 1
    #: The teacher cache's key (runs with the same key share the teacher's samples).
    teacher_key: str = ""


def distill(problem: DistillProblem, config: DistillConfig | None = None, *, progress: bool = True,
            lpips_model: nn.Module | None = None, callback: StepCallback | None = None,
            on_progress: ProgressCallback | None = None, should_stop: StopCheck | None = None) -> DistillResult:
    """Distil a GS/GAS solver for ``problem`` with ``config``; write the solver file, the report and logs.

    Raises a :class:`~trainer.errors.TrainerError` subclass with a one-sentence message on bad input (NFE out of
    range, unwritable folder, existing output without ``overwrite``, LPIPS unavailable, ...), on a NaN/inf loss
    (:class:`~trainer.errors.TrainingDivergedError`, the last good state kept) and on Ctrl-C
    (:class:`~trainer.errors.TrainingInterruptedError`, the state saved for ``resume``).

    ``lpips_model``: a ready LPIPS module (default: LPIPS-VGG, loaded when the loss needs it or its weights are
    cached). ``callback(step, stats)`` runs after every iteration (monitoring; an exception from it stops training
    like a crash would). ``on_progress(phase, done, total)`` reports the teacher generation (samples) and training
    (iterations) as they advance. ``should_stop()`` is asked between teacher batches and after every iteration; True
    stops the run like Ctrl-C does (finished teacher samples and the training state are saved, then
    :class:`~trainer.errors.TrainingInterruptedError`; ``resume`` continues).

    Under ``torchrun`` (``WORLD_SIZE > 1``) call it on every process with the same problem (each on its own device,
    ``cuda:LOCAL_RANK``) and config: it initialises the default process group if none exists (see
    :func:`trainer.distributed.init_distributed`), shares the teacher generation, splits every batch (``batch`` must
    be divisible by the number of processes) and averages the gradients. Only rank 0 writes files, logs and shows
    progress; ``callback`` runs on every rank with the same (averaged) stats. Every rank returns the same
    :class:`DistillResult` (the paths name the files rank 0 wrote); the errors above are raised on every rank.
    """
    t_start = time.time()
    config = config or DistillConfig()
    dist = init_distributed(problem.device)
    progress = progress and dist.is_main
    _check_inputs(problem, config, dist)
    paths = output_paths(problem, config)
    dist.main_decides(lambda: check_outputs(paths, config))
    autocast = resolve_amp(config.amp, problem.device)
    lp = resolve_lpips(problem, config.loss, lpips_model, dist)
    monitor = RunMonitor(paths.run_dir, config, progress=progress) if dist.is_main else RunMonitor.disabled()
    data = load_teacher(problem, config, autocast, progress=progress, dist=dist, on_progress=on_progress,
                        should_stop=should_stop)
    ctx = StepContext(problem, config, autocast, end_sigmas(problem, config.t_eps)[0], lp, dist, data.state_sigmas)

    def make_run() -> RunState:
        return RunState(problem, config, fp16=autocast.dtype == torch.float16, distributed=dist.distributed)

    run = make_run()
    start_or_resume(run, config, paths, data.cache.key, dist)
    if config.starts > 1 and run.step == 0:
        run = best_start(ctx, make_run, data)
    if dist.is_main:
        if config.resume:
            log.info("resuming %s at iteration %d of %d", paths.stem, run.step, config.iters)
        procs = f", {dist.world} processes ({dist.backend})" if dist.distributed else ""
        log.info("training %s: %s, NFE %d, %d iterations, batch %d%s, %s", paths.stem, config.mode.upper(),
                 config.nfe, config.iters, config.batch, procs,
                 "per-call gradient checkpointing" if config.grad_checkpoint else "no checkpointing")
    t_train = time.time()
    train(ctx, run, data, paths, monitor, callback=callback, on_progress=on_progress, should_stop=should_stop)
    return _finish(ctx, run, data, paths, t_start=t_start, train_seconds=time.time() - t_train)


def train(ctx: StepContext, run: RunState, data: TeacherData, paths: OutputPaths, monitor: RunMonitor, *,
          callback: StepCallback | None = None, on_progress: ProgressCallback | None = None,
          should_stop: StopCheck | None = None) -> None:
    """Iterations ``run.step + 1 .. iters`` on the teacher's training samples: the steps, the held-out check at
    iteration 1 and every ``eval_every``, a checkpoint every ``ckpt_every`` and at the end; Ctrl-C saves and stops."""
    config, dist = ctx.config, ctx.dist
    last_good = run.step
    monitor.start(run.step)
    if on_progress is not None:
        on_progress("train", run.step, config.iters)
    try:
        with InterruptGuard(announce=dist.is_main) as guard:
            try:
                while run.step < config.iters:
                    run.step += 1
                    step = run.step
                    batch = training_batch(ctx.problem, config, step, data.train_noise, data.train_lat, dist,
                                           data.train_states)
                    try:
                        disc_turn = run.disc is not None and (step - 1) % config.disc_every == 0
                        stats = discriminator_step(ctx, run, batch) if disc_turn else {}
                        stats.update(solver_step(ctx, run, batch))
                    except NonFiniteError as exc:
                        raise _diverged(exc, step, last_good, paths.state) from None
                    checked = step == 1 or (step % config.eval_every == 0 and step < config.iters) or (
                        step == config.iters and config.select == "best")
                    if checked:
                        stats["val_l1"] = heldout_l1(ctx.problem, config, run.ema_solver(), data,
                                                     autocast=ctx.autocast, dist=dist)
                        if config.select == "best":
                            run.note_heldout(stats["val_l1"])
                    stop = guard.interrupted or (should_stop is not None and should_stop())
                    interrupted = dist.any_flag(stop)  # every rank stops at the same iteration
                    if step % config.ckpt_every == 0 or step == config.iters or interrupted:
                        save_checkpoint(run, config, paths, data.cache.key, dist)
                        last_good = step
                    monitor.iteration(step, stats)
                    if callback is not None:
                        callback(step, stats)
                    if on_progress is not None:
                        on_progress("train", step, config.iters)
                    if interrupted:
                        raise mark_on_every_rank(TrainingInterruptedError(
                            f"interrupted at iteration {step}; the training state is saved in {paths.state}: run "
                            "again with `resume` to continue"))
            except KeyboardInterrupt:
                raise TrainingInterruptedError(
                    f"aborted during iteration {run.step}; the last saved training state (iteration {last_good}) "
                    f"is in {paths.state}: run again with `resume` to continue") from None
    finally:
        monitor.close()


def _check_inputs(problem: DistillProblem, config: DistillConfig, dist: Dist) -> None:
    """The options and the problem can work, and every rank was given the same; a problem without an identity is
    named by its name."""

    def check() -> None:
        config.validate(dist.world)
        problem.validate()

    dist.agree(check)
    if not dist.same_digest(json_digest(config.to_dict())):
        raise mark_on_every_rank(ConfigError("the processes were given different training options: every process "
                                             "must run the same command"))
    if not problem.identity:
        if dist.is_main:
            log.warning("the problem has no identity: the teacher cache tells models apart only by name (%s)",
                        problem.name)
        problem.identity = {"name": problem.name}


def _diverged(exc: NonFiniteError, step: int, last_good: int, state: Path) -> TrainingDivergedError:
    kept = (f"the last good training state (iteration {last_good}) is kept in {state}" if last_good > 0
            else "no training state had been saved yet")
    return mark_on_every_rank(TrainingDivergedError(
        f"the {exc.what} became {exc.value} at iteration {step}, so training stopped; {kept} (try a lower `lr` or "
        "`disc_lr`, or turn `amp` off)"))


def _finish(ctx: StepContext, run: RunState, data: TeacherData, paths: OutputPaths, *, t_start: float,
            train_seconds: float) -> DistillResult:
    """Evaluate the EMA solver on the held-out samples and write its file and report (rank 0); the result."""
    problem, config, dist = ctx.problem, ctx.config, ctx.dist
    label = config.mode.upper()
    solver = run.best_solver() if config.select == "best" else run.ema_solver()
    if config.select == "best" and run.best is not None and dist.is_main:
        log.info("writing the EMA solver of iteration %d (held-out L1 %.5g, the lowest of the checks)",
                 run.best[1], run.best[0])
    scores, outputs = evaluate_solver(problem, config, solver, data, label, autocast=ctx.autocast,
                                      lpips_model=ctx.lpips, dist=dist)
    solver = solver.cpu()
    solver.metadata.update(solver_metadata(problem, config, data.spec, scores, label))
    k = min(config.grid_samples, len(data.val_idx))
    samples = {"teacher": data.val_lat[:k], **{name: lat[:k] for name, lat in outputs.items()}}

    def write_outputs() -> tuple[Path | None, Path | None]:
        check_not_written_meanwhile(paths.solver, config, paths.state)
        save_solver(solver, paths.solver, overwrite=config.overwrite)
        report_path = grid_path = None
        if config.report:
            report_path, grid_path = write_report(problem, config, paths, data.spec, scores, solver, samples, label,
                                                  train_seconds)
        with contextlib.suppress(OSError):
            paths.state.unlink()
        log.info("held-out scores of %s (%d samples, against the teacher):\n%s", paths.stem, scores["n"],
                 scores_table(scores["methods"], config.nfe))
        log.info("solver written to %s", paths.solver)
        return report_path, grid_path

    report_path, grid_path = dist.main_decides(write_outputs)
    return DistillResult(solver=solver, scores=scores, solver_path=paths.solver, report_path=report_path,
                         grid_path=grid_path, run_dir=paths.run_dir, teacher=data.spec.describe(), label=label,
                         samples=samples, seconds=time.time() - t_start, train_seconds=train_seconds,
                         world=dist.world, teacher_key=data.cache.key)


def distill_denoiser(denoiser: Callable[..., torch.Tensor], schedule: NoiseSchedule,
                     conditions: Callable[[list[int]], dict[str, torch.Tensor]], latent_shape: Sequence[int],
                     config: DistillConfig | None = None, *, progress: bool = True,
                     lpips_model: nn.Module | None = None, callback: StepCallback | None = None,
                     on_progress: ProgressCallback | None = None, should_stop: StopCheck | None = None,
                     **problem_fields: Any) -> DistillResult:
    """Distil a solver for your own k-diffusion-style denoiser ``(x, sigma, **cond) -> x0``.

    ``schedule``: e.g. ``gas.DiscreteVPSchedule.sd_linear()`` or ``gas.FlowSchedule(shift)``; ``conditions(indices)``
    returns the batched ``cond`` keyword arguments of those sample indices (a pure function of each index);
    ``latent_shape`` is one sample's shape. ``problem_fields`` are the other :class:`DistillProblem` fields
    (``name``, ``identity``, ``decode``, ``device``, ``dtype``, ``cfg``, ``decoupled``, ``timestep_hook``, ...).
    """
    problem = DistillProblem(denoiser=denoiser, schedule=schedule, conditions=conditions,
                             latent_shape=tuple(int(d) for d in latent_shape), **problem_fields)
    return distill(problem, config, progress=progress, lpips_model=lpips_model, callback=callback,
                   on_progress=on_progress, should_stop=should_stop)
