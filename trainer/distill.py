"""The distillation loop: :func:`distill` (the public API) and :func:`distill_denoiser` (for your own model).

One iteration ``k`` (1-based), with ``B`` training indices drawn by :func:`batch_indices` (a pure function of seed and
``k``), their teacher noises ``z``, teacher end states ``x_T`` and conditioning ``c``:

* **GAS only, discriminator step** (first): the student runs on fresh noise (a pure function of seed and ``k``) under
  ``no_grad``, with the same ``c``, giving ``fake``; ``L_D = softplus(D(fake) - D(x_T)) + gamma/2 (R1 + R2)``;
  one Adam step on ``D``.
* **solver step**: ``x_S = student(z, c)`` through all N model calls with autograd (each call checkpointed);
  ``L = distill(x_S, x_T) + disc_weight * softplus(D(x_T) - D(x_S))`` (the adversarial part for GAS only, ``D``
  frozen), averaged over the batch; backprop, gradient-norm clip, Adam, EMA update.

``distill`` = loss 'l1': mean |x_S - x_T|; 'lpips': LPIPS-VGG between decoded images. The student is the inference
sampler itself (``gas.sample_gas``), so a trained solver samples in ComfyUI exactly as it was trained.

Under torchrun (K processes, :mod:`trainer.distributed`) every rank takes its contiguous ``B/K`` share of each
global batch (and of the discriminator's fresh noise), and the gradients of the solver and of the discriminator are
averaged over the ranks before clipping and the optimiser step, so the ranks stay identical and the result is the
one-process result up to floating-point noise. Only rank 0 writes.

Files (all writing happens in this module, on one process or on rank 0):
``<out>/<name>-nfe<N>-<mode>.safetensors`` (+ ``.md`` report, ``.png`` grid), ``<runs>/<name>-nfe<N>-<mode>/``
(``state.pt`` training state every ``ckpt_every`` iterations, ``log.csv``, ``tb/``), ``<cache>/teacher-<key>/``.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

import gas
from gas import GeneralizedSolver, NoiseSchedule, save_solver

from .checkpointing import check_compatible, load_state, save_state
from .config import DistillConfig
from .discriminator import LatentDiscriminator
from .distributed import Dist, init_distributed, json_digest, mark_on_every_rank, tensors_digest
from .ema import EMA
from .errors import ConfigError, OutputError, ResumeError, TrainingDivergedError, TrainingInterruptedError
from .evaluate import sample_baselines, sample_solver, score
from .losses import (
    discriminator_loss,
    generator_adversarial_loss,
    l1_latents,
    load_lpips,
    lpips_images,
    lpips_weights_cached,
)
from .problem import VALIDATION_OFFSET, DistillProblem
from .report import BASELINE_REFERENCE, latents_to_images, save_grid, scores_table, write_markdown
from .runtime import Autocast, resolve_amp, run_student, start_state
from .teacher import TeacherCache, TeacherSpec, derive_seed, end_sigmas, make_teacher_spec, run_teacher, sample_noise

__all__ = [
    "DistillResult",
    "OutputPaths",
    "batch_indices",
    "distill",
    "distill_denoiser",
    "output_paths",
]

log = logging.getLogger("trainer")

StepCallback = Callable[[int, dict[str, float]], None]
#: ``(phase, done, total)``: "teacher (train)" / "teacher (held-out)" in samples, "train" in iterations.
ProgressCallback = Callable[[str, int, int], None]
StopCheck = Callable[[], bool]


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


def output_paths(problem: DistillProblem, config: DistillConfig) -> OutputPaths:
    """The files a run writes, from the config's folders and ``<name>-nfe<N>-<mode>``."""
    out_dir, cache_dir, run_root = config.paths()
    stem = f"{config.name or problem.name}-nfe{config.nfe}-{config.mode}"
    run_dir = run_root / stem
    return OutputPaths(stem, out_dir / f"{stem}.safetensors", out_dir / f"{stem}.md", out_dir / f"{stem}.png",
                       run_dir, run_dir / "state.pt", cache_dir)


def _check_writable(folder: Path, what: str) -> None:
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


def _check_outputs(paths: OutputPaths, config: DistillConfig) -> None:
    if paths.solver.exists() and not config.overwrite:
        raise OutputError(f"{paths.solver} already exists: pass --overwrite to replace it, or --name to pick "
                          "another name")
    _check_writable(paths.solver.parent, "output folder")
    _check_writable(paths.run_dir, "run folder")
    if config.resume and not paths.state.exists():
        raise ResumeError(f"there is no unfinished run to resume at {paths.state} (run without --resume to start)")
    if paths.state.exists() and not config.resume and not config.overwrite:
        raise ResumeError(f"an unfinished run of {paths.stem} exists in {paths.run_dir}: pass --resume to continue "
                          "it, or --overwrite to start over")


def batch_indices(config: DistillConfig, step: int) -> list[int]:
    """Training indices of iteration ``step`` (1-based): epoch ``e`` is a permutation seeded by (seed, e), cut into
    ``train_size // batch`` batches (remainder dropped). A pure function of (config, step)."""
    per_epoch = config.train_size // config.batch
    epoch, pos = divmod(step - 1, per_epoch)
    perm = torch.randperm(config.train_size, generator=torch.Generator().manual_seed(
        derive_seed(config.seed, "order", epoch)))
    return perm[pos * config.batch:(pos + 1) * config.batch].tolist()


def _fake_noise(config: DistillConfig, step: int, shape: Sequence[int]) -> torch.Tensor:
    """Fresh noise for the discriminator's fake batch at ``step`` (pure function of seed and step)."""
    gen = torch.Generator().manual_seed(derive_seed(config.seed, "fake", step))
    return torch.randn(tuple(shape), generator=gen)


class _InterruptGuard:
    """First Ctrl-C: finish the iteration, save, stop. Second Ctrl-C: stop at once (KeyboardInterrupt)."""

    def __init__(self, announce: bool = True) -> None:
        self.interrupted = False
        self.announce = announce
        self._previous: Any = None
        self._installed = False

    def _handler(self, signum: int, frame: Any) -> None:
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True
        if self.announce:
            log.warning("Ctrl-C: finishing this iteration and saving the training state (press again to abort)")

    def __enter__(self) -> _InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)


class _Logs:
    """CSV and TensorBoard logs (optional)."""

    FIELDS = ("step", "seconds", "loss", "distill", "adv", "d_loss", "r1", "r2", "grad_norm", "val_l1")

    def __init__(self, run_dir: Path | None, config: DistillConfig | None) -> None:
        self.csv_path = run_dir / "log.csv" if run_dir is not None and config is not None and config.csv else None
        self.tb: Any = None
        if run_dir is not None and config is not None and config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
            self.tb = SummaryWriter(str(run_dir / "tb"))

    @classmethod
    def disabled(cls) -> _Logs:
        """Logs that write nothing (ranks other than 0)."""
        return cls(None, None)

    def write(self, row: dict[str, float]) -> None:
        if self.csv_path is not None:
            new = not self.csv_path.exists()
            with open(self.csv_path, "a", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=self.FIELDS, extrasaction="ignore")
                if new:
                    writer.writeheader()
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        if self.tb is not None:
            for key, value in row.items():
                if key != "step":
                    self.tb.add_scalar(key, value, int(row["step"]))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc="train", unit="it", dynamic_ncols=True)


class _Trainer:
    """State and steps of one run (kept in one object so checkpoints can capture all of it)."""

    def __init__(self, problem: DistillProblem, config: DistillConfig, autocast: Autocast, s0: float,
                 lpips_model: nn.Module | None, dist: Dist | None = None) -> None:
        self.problem, self.config, self.autocast, self.s0 = problem, config, autocast, s0
        self.lpips = lpips_model
        self.dist = dist or Dist()
        dev = problem.device
        self.solver = GeneralizedSolver(config.nfe, t_eps=config.t_eps, schedule=problem.schedule).to(dev)
        self.params = list(self.solver.parameters())
        self.opt = torch.optim.Adam(self.params, lr=config.lr)
        self.ema = EMA(self.params, config.ema)
        self.disc: LatentDiscriminator | None = None
        self.disc_opt: torch.optim.Optimizer | None = None
        if config.mode == "gas":
            shape = tuple(problem.latent_shape)
            if len(shape) != 3:
                raise ConfigError(f"the GAS discriminator needs (C, H, W) latents, got shape {list(shape)}; "
                                  "use --mode gs")
            widths, groups = config.disc_architecture()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(config.seed, "discriminator"))
                self.disc = LatentDiscriminator(shape[0], shape[1], shape[2], widths=widths, groups=groups,
                                                blocks=config.disc_blocks)
            self.disc.to(dev).requires_grad_(False)
            self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=config.disc_lr)
        self.scaler = torch.amp.GradScaler("cuda") if autocast.dtype == torch.float16 else None
        self.step = 0

    # ----- state -----------------------------------------------------------------------------------------------------
    def state(self, teacher_key: str) -> dict[str, Any]:
        st: dict[str, Any] = {
            "step": self.step, "solver": {k: v.detach().cpu() for k, v in self.solver.state_dict().items()},
            "ema": self.ema.state_dict(), "opt": self.opt.state_dict(), "rng": torch.get_rng_state(),
            "config": self.config.to_dict(), "teacher_key": teacher_key,
        }
        if torch.cuda.is_available() and self.problem.device.type == "cuda" and not self.dist.distributed:
            st["cuda_rng"] = torch.cuda.get_rng_state_all()
        if self.disc is not None and self.disc_opt is not None:
            st["disc"] = {k: v.detach().cpu() for k, v in self.disc.state_dict().items()}
            st["disc_opt"] = self.disc_opt.state_dict()
        if self.scaler is not None:
            st["scaler"] = self.scaler.state_dict()
        return st

    def load(self, st: dict[str, Any]) -> None:
        self.solver.load_state_dict(st["solver"])
        self.opt.load_state_dict(st["opt"])
        self.ema.load_state_dict(st["ema"])
        self.ema.shadow = [s.to(self.problem.device) for s in self.ema.shadow]
        if self.disc is not None and self.disc_opt is not None:
            self.disc.load_state_dict(st["disc"])
            self.disc_opt.load_state_dict(st["disc_opt"])
        if self.scaler is not None and "scaler" in st:
            self.scaler.load_state_dict(st["scaler"])
        torch.set_rng_state(st["rng"])
        if "cuda_rng" in st and torch.cuda.is_available() and not self.dist.distributed:
            torch.cuda.set_rng_state_all(st["cuda_rng"])
        self.step = int(st["step"])

    def ema_solver(self) -> GeneralizedSolver:
        """A CPU copy of the solver holding the EMA parameters."""
        out = GeneralizedSolver(self.config.nfe, t_eps=self.config.t_eps, schedule=self.problem.schedule)
        with torch.no_grad():
            for p, s in zip(out.parameters(), self.ema.shadow, strict=True):
                p.copy_(s.detach().cpu())
        return out

    # ----- one iteration ---------------------------------------------------------------------------------------------
    def _diverged(self, what: str, value: float, last_good: int, state_path: Path) -> TrainingDivergedError:
        kept = (f"the last good training state (iteration {last_good}) is kept in {state_path}"
                if last_good > 0 else "no training state had been saved yet")
        return mark_on_every_rank(TrainingDivergedError(
            f"the {what} became {value} at iteration {self.step}, so training stopped; {kept} (try a lower --lr or "
            "--disc-lr, or --amp off)"))

    def _reduce(self, params: list[nn.Parameter], stats: list[torch.Tensor]) -> list[float]:
        """Average the gradients of ``params`` and the scalar ``stats`` over the ranks (one collective per dtype);
        returns the averaged stats. A no-op average for one process."""
        buf = torch.stack([s.detach().double().reshape(()) for s in stats])
        self.dist.all_reduce_mean_([p.grad for p in params] + [buf])
        return buf.tolist()

    def train_step(self, teacher_noise: torch.Tensor, teacher_lat: torch.Tensor, last_good: int,
                   state_path: Path) -> dict[str, float]:
        """One iteration. Under K ranks each takes its slice of the global batch (the same numbers as with one
        process), and the gradients are averaged before clipping, so every rank applies the identical update."""
        cfg, prob, dist = self.config, self.problem, self.dist
        global_idx = batch_indices(cfg, self.step)
        idx = list(dist.local_slice(global_idx))
        lo = dist.rank * len(idx)
        noise = teacher_noise[idx]
        real = teacher_lat[idx].to(prob.device)
        cond = prob.conditions(idx)
        stats: dict[str, float] = {}
        if self.disc is not None and self.disc_opt is not None:
            fresh = _fake_noise(cfg, self.step, (len(global_idx), *noise.shape[1:]))[lo:lo + len(idx)]
            fake_init = start_state(prob, fresh, self.s0)
            fake = run_student(prob, self.solver, fake_init, cond, autocast=self.autocast, differentiable=False)
            self.disc.requires_grad_(True)
            d_loss_ps, parts = discriminator_loss(self.disc, real, fake, cfg.r1_gamma)
            d_loss = d_loss_ps.mean()
            self.disc_opt.zero_grad(set_to_none=True)
            if dist.distributed or torch.isfinite(d_loss):
                d_loss.backward()
            d_params = list(self.disc.parameters())
            d_val, r1, r2 = self._reduce(d_params, [d_loss, parts["r1"].mean(), parts["r2"].mean()])
            if not math.isfinite(d_val):
                raise self._diverged("discriminator loss", d_val, last_good, state_path)
            self.disc_opt.step()
            self.disc.requires_grad_(False)
            stats.update(d_loss=d_val, r1=r1, r2=r2)
        x_init = start_state(prob, noise, self.s0)
        out = run_student(prob, self.solver, x_init, cond, autocast=self.autocast, differentiable=True,
                          grad_checkpoint=cfg.grad_checkpoint)
        if cfg.loss == "l1":
            dist_loss = l1_latents(out, real)
        else:
            assert prob.decode is not None and self.lpips is not None
            with torch.no_grad():
                target = prob.decode(real).float()
            dist_loss = lpips_images(self.lpips, prob.decode(out).float(), target)
        total = dist_loss
        parts_g = [dist_loss.detach().mean()]
        if self.disc is not None:
            adv = generator_adversarial_loss(self.disc, real, out)
            total = total + cfg.disc_weight * adv
            parts_g.append(adv.detach().mean())
        loss = total.mean()
        self.opt.zero_grad(set_to_none=True)
        if dist.distributed or torch.isfinite(loss):  # one process: never backpropagate a NaN (as before)
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        reduced = self._reduce(self.params, [loss, *parts_g])
        if not math.isfinite(reduced[0]):
            raise self._diverged("loss", reduced[0], last_good, state_path)
        clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
            if not torch.isfinite(grad_norm):
                raise self._diverged("gradient norm", float(grad_norm), last_good, state_path)
            self.opt.step()
        self.ema.update(self.params)
        if self.disc is not None:
            stats["adv"] = reduced[2]
        stats.update(loss=reduced[0], distill=reduced[1], grad_norm=float(grad_norm))
        return stats

    def sync_digest(self) -> str:
        """sha256 of every trained tensor (solver, EMA, discriminator): equal on every rank while in step."""
        tensors = [p.detach() for p in self.params] + list(self.ema.shadow)
        if self.disc is not None:
            tensors += [p.detach() for p in self.disc.parameters()]
        return tensors_digest(tensors)


def _teacher_key(problem: DistillProblem, config: DistillConfig, spec: TeacherSpec, autocast: Autocast
                 ) -> dict[str, Any]:
    return {"cache_format": 1, "identity": problem.identity, "latent_shape": list(problem.latent_shape),
            "dtype": str(problem.dtype).replace("torch.", ""), "amp": autocast.name,
            "schedule": problem.schedule.to_metadata(), "seed": config.seed, "teacher": spec.to_json()}


@dataclass
class TeacherData:
    """The teacher samples of one run: training and held-out noises and end states (CPU), and where they live."""

    spec: TeacherSpec
    cache: TeacherCache
    train_noise: torch.Tensor
    train_lat: torch.Tensor
    val_idx: list[int]
    val_noise: torch.Tensor
    val_lat: torch.Tensor


def load_teacher(problem: DistillProblem, config: DistillConfig, autocast: Autocast, *,
                 progress: bool = True, dist: Dist | None = None, on_progress: ProgressCallback | None = None,
                 should_stop: StopCheck | None = None) -> TeacherData:
    """Resolve the teacher and get its training and held-out samples from the cache (generating what is missing).

    Under torch.distributed every rank calls this: rank 0 resolves the teacher (a searched GITS grid runs the model,
    whose last bits may differ between GPUs) and broadcasts it, the ranks check that they key the same cache, and
    the missing samples are generated by all ranks together (:meth:`TeacherCache.get`).
    """
    dist = dist or Dist()
    _, cache_dir, _ = config.paths()
    spec = dist.main_decides(lambda: make_teacher_spec(problem, config))
    key_data = _teacher_key(problem, config, spec, autocast)
    cache = TeacherCache(cache_dir, key_data, problem.latent_shape)

    if not dist.same_digest(cache.key):
        raise mark_on_every_rank(ConfigError(
            "the processes describe different models or teacher settings (their teacher cache keys differ): every "
            "process must build the same problem"))

    def generate(indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        noise = sample_noise(indices, problem.latent_shape, config.seed)
        lat = run_teacher(problem, spec, noise.to(problem.device), problem.conditions(indices), autocast)
        return noise, lat.cpu()

    if dist.is_main:
        log.info("teacher: %s", spec.describe())
    train_idx = list(range(config.train_size))
    val_idx = [VALIDATION_OFFSET + j for j in range(config.val_size)]
    def phase(desc: str) -> dict[str, Any]:
        report = (lambda done, total: on_progress(desc, done, total)) if on_progress is not None else None
        return {"desc": desc, "report": report, "should_stop": should_stop}

    train_noise, train_lat = cache.get(train_idx, generate, batch=config.teacher_batch, progress=progress, dist=dist,
                                       **phase("teacher (train)"))
    val_noise, val_lat = cache.get(val_idx, generate, batch=config.teacher_batch, progress=progress, dist=dist,
                                   **phase("teacher (held-out)"))
    return TeacherData(spec, cache, train_noise, train_lat, val_idx, val_noise, val_lat)


def _sharded(dist: Dist, n: int, run: Callable[[int, int], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``run(start, stop)`` on this rank's share of ``n`` held-out samples, gathered in order on every rank."""
    lo, hi = dist.local_range(n)
    local = run(lo, hi)
    return {name: dist.all_gather_rows(lat) for name, lat in local.items()}


def evaluate_solver(problem: DistillProblem, config: DistillConfig, solver: GeneralizedSolver, data: TeacherData,
                    label: str, *, autocast: Autocast, lpips_model: nn.Module | None = None,
                    dist: Dist | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Held-out scores of ``solver`` (as ``label``) and of the same-NFE baselines; returns (scores, end states).

    Under torch.distributed every rank samples its share of the held-out set, the end states are gathered on every
    rank, rank 0 computes the scores (LPIPS decodes there) and broadcasts them: every rank returns the same."""
    dist = dist or Dist()
    s0, _ = end_sigmas(problem, config.t_eps)
    if dist.is_main:
        log.info("evaluating on %d held-out samples", len(data.val_idx))
    solver = solver.to(problem.device)

    def run(lo: int, hi: int) -> dict[str, torch.Tensor]:
        idx, noise = data.val_idx[lo:hi], data.val_noise[lo:hi]
        out = {label: sample_solver(problem, solver, idx, noise, s0, autocast=autocast, batch=config.eval_batch)}
        out.update(sample_baselines(problem, config.nfe, config.t_eps, idx, noise, s0, autocast=autocast,
                                    batch=config.eval_batch))
        return out

    outputs = _sharded(dist, len(data.val_idx), run)
    scores = dist.main_decides(lambda: _finite_or_none(score(problem, data.val_lat, outputs, lpips_model=lpips_model,
                                                             batch=config.eval_batch, indices=data.val_idx)))
    return scores, outputs


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

    def check_inputs() -> None:
        config.validate(dist.world)
        problem.validate()

    dist.agree(check_inputs)
    if not dist.same_digest(json_digest(config.to_dict())):
        raise mark_on_every_rank(ConfigError("the processes were given different training options: every process "
                                             "must run the same command"))
    if not problem.identity:
        if dist.is_main:
            log.warning("the problem has no identity: the teacher cache tells models apart only by name (%s)",
                        problem.name)
        problem.identity = {"name": problem.name}
    paths = output_paths(problem, config)
    dist.main_decides(lambda: _check_outputs(paths, config))
    autocast = resolve_amp(config.amp, problem.device)

    lp = lpips_model
    if config.loss == "lpips":
        if problem.decode is None:
            raise mark_on_every_rank(ConfigError("--loss lpips needs a model that can decode its latents to images"))
        lp = lp if lp is not None else dist.agree(lambda: load_lpips(problem.device))
    elif lp is None and problem.decode is not None and dist.is_main and lpips_weights_cached():
        with contextlib.suppress(Exception):  # held-out LPIPS metric: scored on rank 0 only
            lp = load_lpips(problem.device)
    logs = _Logs(paths.run_dir, config) if dist.is_main else _Logs.disabled()

    s0, _ = end_sigmas(problem, config.t_eps)
    data = load_teacher(problem, config, autocast, progress=progress, dist=dist, on_progress=on_progress,
                        should_stop=should_stop)
    spec, cache = data.spec, data.cache
    train_noise, train_lat, val_idx, val_noise, val_lat = (data.train_noise, data.train_lat, data.val_idx,
                                                            data.val_noise, data.val_lat)

    trainer = _Trainer(problem, config, autocast, s0, lp, dist)
    if config.resume:
        def resume() -> None:
            st = load_state(paths.state)
            check_compatible(st.get("config", {}), config.to_dict(), st.get("teacher_key", ""), cache.key,
                             paths.state)
            trainer.load(st)

        dist.agree(resume)  # every rank reads the same state file
        if dist.is_main:
            log.info("resuming %s at iteration %d of %d", paths.stem, trainer.step, config.iters)
    elif paths.state.exists() and dist.is_main:  # --overwrite: start over
        paths.state.unlink()
        with contextlib.suppress(OSError):
            (paths.run_dir / "log.csv").unlink()
    last_good = trainer.step

    def val_l1() -> float:
        ema = trainer.ema_solver().to(problem.device)
        lo, hi = dist.local_range(len(val_idx))
        total = 0.0
        if hi > lo:
            out = sample_solver(problem, ema, val_idx[lo:hi], val_noise[lo:hi], s0, autocast=autocast,
                                batch=config.eval_batch)
            total = float(l1_latents(out, val_lat[lo:hi]).double().sum())
        return dist.all_reduce_sum([total])[0] / max(1, len(val_idx))

    def check_in_sync(step: int) -> None:
        if dist.distributed and not dist.same_digest(trainer.sync_digest()):
            raise RuntimeError(f"the processes' parameters differ at iteration {step}: they no longer train in step "
                               "(a bug; please report it)")

    label = config.mode.upper()
    if dist.is_main:
        procs = f", {dist.world} processes ({dist.backend})" if dist.distributed else ""
        log.info("training %s: %s, NFE %d, %d iterations, batch %d%s, %s", paths.stem, label, config.nfe,
                 config.iters, config.batch, procs,
                 "per-call gradient checkpointing" if config.grad_checkpoint else "no checkpointing")
    t_train = time.time()
    bar = _progress_bar(config.iters, trainer.step, progress)
    if on_progress is not None:
        on_progress("train", trainer.step, config.iters)
    try:
        with _InterruptGuard(announce=dist.is_main) as guard:
            try:
                while trainer.step < config.iters:
                    trainer.step += 1
                    stats = trainer.train_step(train_noise, train_lat, last_good, paths.state)
                    step = trainer.step
                    if step == 1 or (step % config.eval_every == 0 and step < config.iters):
                        stats["val_l1"] = val_l1()
                    stop = guard.interrupted or (should_stop is not None and should_stop())
                    interrupted = dist.any_flag(stop)  # every rank stops at the same iteration
                    saved = step % config.ckpt_every == 0 or step == config.iters or interrupted
                    if saved:
                        check_in_sync(step)
                        if dist.is_main:
                            save_state(paths.state, trainer.state(cache.key))
                        last_good = step
                    logs.write({"step": step, "seconds": time.time() - t_train, **stats})
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix({k: f"{stats[k]:.4g}" for k in ("loss", "distill", "val_l1") if k in stats},
                                        refresh=False)
                    if dist.is_main and (step % config.log_every == 0 or "val_l1" in stats):
                        parts = " ".join(f"{k} {v:.4g}" for k, v in stats.items())
                        _info(bar, f"iteration {step}/{config.iters}: {parts}")
                    if callback is not None:
                        callback(step, stats)
                    if on_progress is not None:
                        on_progress("train", step, config.iters)
                    if interrupted:
                        raise mark_on_every_rank(TrainingInterruptedError(
                            f"interrupted at iteration {step}; the training state is saved in {paths.state}: run the "
                            "same command with --resume to continue"))
            except KeyboardInterrupt:
                raise TrainingInterruptedError(
                    f"aborted during iteration {trainer.step}; the last saved training state (iteration {last_good}) "
                    f"is in {paths.state}: run the same command with --resume to continue") from None
    finally:
        if bar is not None:
            bar.close()
        logs.close()
    train_seconds = time.time() - t_train

    # ----- final evaluation and outputs (rank 0 writes; every rank returns the same result) --------------------------
    solver = trainer.ema_solver()
    scores, outputs = evaluate_solver(problem, config, solver, data, label, autocast=autocast, lpips_model=lp,
                                      dist=dist)
    solver = solver.cpu()
    solver.metadata.update(_metadata(problem, config, spec, scores, label))
    k = min(config.grid_samples, len(val_idx))
    samples = {"teacher": val_lat[:k], **{name: lat[:k] for name, lat in outputs.items()}}

    def write_outputs() -> tuple[Path | None, Path | None]:
        save_solver(solver, paths.solver, overwrite=config.overwrite)
        report_path = grid_path = None
        if config.report:
            report_path, grid_path = _write_report(problem, config, paths, spec, scores, solver, samples, label,
                                                   train_seconds)
        with contextlib.suppress(OSError):
            paths.state.unlink()
        table = scores_table(scores["methods"], config.nfe)
        log.info("held-out scores of %s (%d samples, against the teacher):\n%s", paths.stem, scores["n"], table)
        log.info("solver written to %s", paths.solver)
        return report_path, grid_path

    report_path, grid_path = dist.main_decides(write_outputs)
    return DistillResult(solver=solver, scores=scores, solver_path=paths.solver, report_path=report_path,
                         grid_path=grid_path, run_dir=paths.run_dir, teacher=spec.describe(), label=label,
                         samples=samples, seconds=time.time() - t_start, train_seconds=train_seconds,
                         world=dist.world)


def _info(bar: Any, message: str) -> None:
    """A log line (the CLI's handler writes it above the progress bar)."""
    log.info(message)


def _loss_description(config: DistillConfig) -> str:
    base = "L1 on latents" if config.loss == "l1" else "LPIPS-VGG on decoded images"
    if config.mode == "gas":
        base += (f" + {config.disc_weight:g} x relativistic adversarial loss (R3GAN-style latent discriminator, "
                 f"'{config.disc_preset}' size, R1/R2 gamma {config.r1_gamma:g}, disc lr {config.disc_lr:g})")
    return base


def _metadata(problem: DistillProblem, config: DistillConfig, spec: TeacherSpec, scores: dict[str, Any],
              label: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "model": problem.identity,
        "cfg": problem.cfg,
        "mode": config.mode,
        "teacher": spec.describe(),
        "teacher_settings": {k: v for k, v in spec.to_json().items() if k != "sigmas"},
        "loss": _loss_description(config),
        "iterations": config.iters,
        "batch": config.batch,
        "train_size": config.train_size,
        "seed": config.seed,
        "decoupled": problem.decoupled,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "pack_version": gas.__version__,
        "scores": {"heldout_samples": scores["n"], "reference": "teacher", "solver": label,
                   "methods": scores["methods"]},
    }
    meta.update(problem.extra_metadata)
    meta.update(config.extra_metadata)
    return _finite_or_none(meta)


def _write_report(problem: DistillProblem, config: DistillConfig, paths: OutputPaths, spec: TeacherSpec,
                  scores: dict[str, Any], solver: GeneralizedSolver, samples: dict[str, torch.Tensor], label: str,
                  train_seconds: float) -> tuple[Path, Path | None]:
    grid_path: Path | None = None
    if samples["teacher"].shape[0] > 0:
        rows = [(name, _images(problem, samples[name])) for name in ("teacher", label, BASELINE_REFERENCE)]
        grid_path = save_grid(paths.grid, [(f"{n} ({config.nfe} NFE)" if n != "teacher" else "teacher", im)
                                           for n, im in rows])
    init = GeneralizedSolver(config.nfe, t_eps=config.t_eps, schedule=problem.schedule).sigmas()
    learned = solver.sigmas().tolist()
    tc = solver.t_couple.detach().tolist()
    timesteps = "\n".join([
        "| | " + " | ".join(f"s{k}" for k in range(config.nfe + 1)) + " |",
        "|---|" + "---:|" * (config.nfe + 1),
        "| untrained (uniform time) | " + " | ".join(f"{v:.4g}" for v in init.tolist()) + " |",
        f"| learned ({label}) | " + " | ".join(f"{v:.4g}" for v in learned) + " |",
        "| decoupled time shift | " + " | ".join(f"{v:+.3g}" for v in tc) + " | |",
    ])
    metrics_note = ("L1: mean |x - x_teacher| over latents, same held-out noise. SWD: sliced Wasserstein distance "
                    "between the set of samples and the teacher's set (a distribution distance). LPIPS: on decoded "
                    "images, when available. NLL excess (analytic problems): negative log-likelihood per dimension "
                    "under the known data distribution minus the teacher's. Baselines run on the untrained solver's "
                    "grid.")
    sections = [("Held-out scores", scores_table(scores["methods"], config.nfe) + "\n\n" + metrics_note),
                ("Timesteps (sigmas)", timesteps)]
    if grid_path is not None:
        sections.append(("Samples", f"Rows: teacher, {label}, {BASELINE_REFERENCE}; same held-out noise per column."
                                    f"\n\n![samples]({grid_path.name})"))
    info = {"model": problem.description or problem.name, "solver file": paths.solver.name, "mode": label,
            "NFE": config.nfe, "teacher": spec.describe(), "loss": _loss_description(config),
            "iterations": f"{config.iters} (batch {config.batch}, {config.train_size} training samples, "
                          f"training took {train_seconds:.0f} s)",
            "held-out samples": scores["n"], "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    report = write_markdown(paths.report, f"GAS solver {paths.stem}", sections, info)
    return report, grid_path


def _images(problem: DistillProblem, latents: torch.Tensor) -> torch.Tensor:
    if problem.decode is not None:
        with torch.no_grad():
            return problem.decode(latents.to(problem.device)).float().cpu()
    return latents_to_images(latents)


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
