"""Every training option, with its default and a one-line meaning: :class:`DistillConfig`.

Defaults follow the GAS paper's Stable Diffusion recipe (docs/method.md section 9): Adam lr 1e-3, gradient clip 1,
EMA 0.999, batch 4, 2000 iterations, 1400 training and 128 held-out samples, seed 42; GAS adds a discriminator on
latents with Adam lr 1e-5, R1/R2 gamma 0.2 and adversarial weight 1. The CLI builds a config from its options and
``trainer.distill`` takes one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gas import MAX_NFE, MIN_NFE

from .errors import ConfigError

__all__ = ["DEFAULT_RECIPE", "DEFAULT_TEACHER_STEPS", "DISC_FAKES", "DISC_PRESETS", "LOSSES", "LOSS_REDUCTIONS",
           "LR_SCHEDULES", "MODES", "PACK_ROOT", "RECIPES", "SELECTIONS", "STATE_ANNEALS", "TEACHERS", "TIME_INITS",
           "DistillConfig"]

#: The pack folder (the repository root): default outputs live below it.
PACK_ROOT = Path(__file__).resolve().parents[1]
#: Steps of the DPM-Solver++(3M) teacher on a log-SNR-uniform grid in the paper recipe (README: "Choosing the
#: teacher"); the `tuned` recipe uses 32 (``DistillConfig.dpmpp3m_steps``).
DEFAULT_TEACHER_STEPS = 64
MODES = ("gs", "gas")
LOSSES = ("l1", "lpips")
#: How a batch's per-sample distances become the distillation loss (``trainer.losses.reduce_distances``).
LOSS_REDUCTIONS = ("mean", "log", "cauchy")
TEACHERS = ("dpmpp3m", "ipndm-gits")
TEACHER_GRIDS = ("logsnr", "time")
AMP_MODES = ("auto", "off", "bf16", "fp16")
#: Learning-rate schedules of the solver (``trainer.schedule.learning_rate``).
LR_SCHEDULES = ("constant", "cosine")
#: Initial timestep grids of the solver (``trainer.schedule.initial_times``).
TIME_INITS = ("uniform", "logsnr")
#: How the weight of the loss on intermediate states moves over training (``trainer.trajectory.state_weight``).
STATE_ANNEALS = ("none", "linear")
#: Which EMA solver a run writes (``DistillConfig.select``).
SELECTIONS = ("last", "best")
#: Where the discriminator step's fake samples come from (``DistillConfig.disc_fake``).
DISC_FAKES = ("fresh", "paired")
#: Discriminator widths / groups per stage (stages are added or dropped to fit the latent size).
DISC_PRESETS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "paper": ((384, 768, 768, 768, 768), (48, 96, 96, 96, 96)),
    "small": ((32, 64, 64, 64, 64), (4, 8, 8, 8, 8)),
}


#: Named training recipes: the values of the recipe's settings (every other field keeps its own default).
#: "paper": the GAS paper's SD recipe as the trainer's defaults implement it (arXiv 2510.17699, section 5 and
#: appendix; docs/method.md section 9); ``DistillConfig.from_recipe("paper") == DistillConfig()``.
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {
        "batch": 4, "iters": 2000, "train_size": 1400, "gas_train_size": 0, "val_size": 128, "lr": 1e-3,
        "grad_clip": 1.0, "ema": 0.999,
        "dpmpp3m_steps": DEFAULT_TEACHER_STEPS,
        "lr_schedule": "constant", "lr_warmup": 0, "time_init": "uniform", "coef_lr_scale": 1.0, "starts": 1,
        "select": "last", "loss": "l1", "loss_reduce": "mean", "cauchy_scale": 3.0,
        "state_loss": 0.0, "state_points": 16, "state_anneal": "none",
        "disc_lr": 1e-5, "disc_weight": 1.0, "r1_gamma": 0.2, "r1_every": 1, "disc_every": 1,
        "disc_fake": "fresh", "disc_ramp": 0.0,
    },
}
#: "tuned" (the default recipe): the paper recipe with a 5x higher peak learning rate decayed by a cosine, the
#: Cauchy-robust batch loss at ten batch medians, the loss on intermediate states (weight 1, decayed linearly to 0;
#: trainer/trajectory.py), a 32-step teacher (half the paper's teacher model calls, 1.5e-4 from the exact ODE on
#: the bench) and 1800 iterations (90% of the paper's, so that teacher + training take less time than the paper
#: recipe's on the bench); the best of the recipe bench (benchmarks/README.md: at least 15% below "paper", worst
#: seed below the paper's best, in every teacher x NFE cell, in less wall time); in GAS mode an
#: adversarial weight of 0.1 with lazy R1/R2 (every 16th discriminator step) and a discriminator step every 4th
#: iteration (GAS mode at under 2x GS's cost on the bench). Measured on analytic teachers only.
RECIPES["tuned"] = {**RECIPES["paper"], "iters": 1800, "lr": 5e-3, "lr_schedule": "cosine", "loss_reduce": "cauchy",
                    "cauchy_scale": 10.0, "state_loss": 1.0, "state_anneal": "linear", "dpmpp3m_steps": 32,
                    "disc_weight": 0.1, "r1_every": 16, "disc_every": 4}

#: The recipe the command line (``--recipe``) and the GAS Train Solver node start from. ``DistillConfig()`` itself
#: holds the paper recipe's values (``DistillConfig.from_recipe(DEFAULT_RECIPE)`` is the default run).
DEFAULT_RECIPE = "tuned"


@dataclass
class DistillConfig:
    """Options of one distillation run (see the field comments; ``python -m trainer --help`` maps its options to these
    fields)."""

    # ----- what is learned ---------------------------------------------------------------------------------------
    nfe: int = 4  #: network evaluations of the learned solver (its number of steps)
    mode: str = "gas"  #: "gs": distillation loss only; "gas": plus the adversarial loss
    t_eps: float = 1e-3  #: final GAS time; the solver and the teacher stop at sigma(t_eps) (SD: sigma 0.0292)
    # ----- data --------------------------------------------------------------------------------------------------
    seed: int = 42  #: seed of the teacher noise (sample i uses seed + i), the data order and the discriminator
    train_size: int = 1400  #: teacher samples used for training (indices 0..n-1; GAS mode: `gas_train_size` if set)
    gas_train_size: int = 0  #: GAS mode's training samples instead of `train_size` (0: `train_size`)
    val_size: int = 128  #: held-out teacher samples for evaluation (own seeds and, where the adapter has them, prompts)
    # ----- optimisation ------------------------------------------------------------------------------------------
    batch: int = 4  #: samples per iteration
    iters: int = 2000  #: training iterations
    lr: float = 1e-3  #: Adam learning rate of the solver parameters
    grad_clip: float = 1.0  #: gradient-norm clip of the solver parameters (0 = off)
    ema: float = 0.999  #: EMA decay of the solver parameters (warm-up min(decay, (1+n)/(10+n)))
    lr_schedule: str = "constant"  #: solver lr over iterations: "constant" (paper) or "cosine" decay to 0 at `iters`
    lr_warmup: int = 0  #: iterations of linear lr warm-up from 0 before the schedule (0 = none, the paper)
    time_init: str = "uniform"  #: initial solver timesteps: "uniform" in GAS time (paper) or "logsnr"-uniform
    coef_lr_scale: float = 1.0  #: learning rate of the coefficient corrections relative to `lr` (timesteps: `lr`)
    #: multi-start: K short runs from K initial grids (uniform .. log-SNR), the best goes on (trainer/starts.py)
    starts: int = 1
    start_iters: int | None = None  #: iterations of each start (default: `iters` / (5 K), at least 1)
    #: which EMA solver is written: "last" (the end of training, the paper) or "best" (the lowest held-out L1 among
    #: the checks every `eval_every` iterations and the end: early stopping on the held-out teacher samples)
    select: str = "last"
    loss: str = "l1"  #: distillation loss: "l1" on latents, or "lpips" (VGG) on decoded images
    #: batch reduction of the per-sample distances d_i: "mean" (the paper); "log", the mean of log(d_i + 1e-6):
    #: each sample's gradient is divided by its own distance (relative error), so the few samples a few-step solver
    #: sends to another mode no longer dominate the update; "cauchy", c log(1 + d_i / c) with c `cauchy_scale`
    #: batch medians: L1 for typical samples, log-like for those far above the median
    loss_reduce: str = "mean"
    #: scale c of the "cauchy" reduction in medians of the batch's distances: a sample at c medians counts half of
    #: what L1 would, one far above counts like a log (larger: closer to L1)
    cauchy_scale: float = 3.0
    #: weight of the loss on the solver's intermediate states against the teacher's trajectory (trainer/trajectory.py;
    #: mean L1 in DPM state space over states 1 .. N-1), added to the distillation loss; 0 = the end state only (the
    #: paper). On: the teacher cache also keeps `state_points` states and denoised outputs per sample
    state_loss: float = 0.0
    state_points: int = 16  #: teacher steps whose state and denoised output are kept for `state_loss` (evenly spread)
    state_anneal: str = "none"  #: `state_loss` weight over training: "none" (constant) or "linear" decay to 0
    # ----- adversarial (mode "gas") ------------------------------------------------------------------------------
    disc_lr: float = 1e-5  #: Adam learning rate of the discriminator
    disc_weight: float = 1.0  #: weight of the adversarial loss in the solver's loss
    r1_gamma: float = 0.2  #: weight gamma of the R1 + R2 gradient penalties (applied as gamma/2)
    #: R1 + R2 on every N-th discriminator step only, weighted N times (StyleGAN2's lazy regularisation); 1 = paper
    r1_every: int = 1
    disc_every: int = 1  #: one discriminator step every N iterations (1 = every iteration, the paper)
    #: the discriminator step's fake batch: "fresh" (the student on fresh noise, the paper) or "paired" (the student on
    #: the batch's own noises, so each relativistic pair is the teacher's and the student's sample of one noise)
    disc_fake: str = "fresh"
    #: fraction of the iterations over which the adversarial weight ramps linearly from 0 to `disc_weight` (the
    #: discriminator trains from the start); 0 = the full weight from iteration 1 (the paper)
    disc_ramp: float = 0.0
    disc_preset: str = "paper"  #: discriminator size: "paper" (R3GAN latent, 22 M params at 4x64x64) or "small"
    disc_widths: tuple[int, ...] | None = None  #: override the preset's per-stage widths
    disc_groups: tuple[int, ...] | None = None  #: override the preset's per-stage group counts
    disc_blocks: int = 2  #: residual blocks per discriminator stage
    # ----- teacher -----------------------------------------------------------------------------------------------
    teacher: str = "dpmpp3m"  #: "dpmpp3m" (many-step DPM-Solver++(3M)) or "ipndm-gits" (the paper's SD teacher)
    teacher_steps: int | None = None  #: teacher steps (default: `dpmpp3m_steps` for dpmpp3m, nfe+1 for ipndm-gits)
    #: steps of the dpmpp3m teacher when `teacher_steps` is not given (the recipe's: 64 paper, 32 tuned)
    dpmpp3m_steps: int = DEFAULT_TEACHER_STEPS
    teacher_grid: str = "logsnr"  #: sigma grid of the dpmpp3m teacher: uniform in "logsnr" or in GAS "time"
    teacher_order: int = 2  #: iPNDM order of the ipndm-gits teacher (2 as in the paper, up to 4)
    teacher_batch: int = 16  #: samples per teacher batch
    # ----- compute -----------------------------------------------------------------------------------------------
    grad_checkpoint: bool = True  #: recompute each model call in the backward pass (memory flat in NFE)
    amp: str = "auto"  #: autocast of the model calls: "auto" (bf16/fp16 on CUDA, off on CPU), "off", "bf16", "fp16"
    eval_batch: int = 16  #: samples per batch in evaluation
    # ----- files -------------------------------------------------------------------------------------------------
    out_dir: str | None = None  #: solver/report folder (default: <pack>/models/gas_solvers)
    cache_dir: str | None = None  #: teacher cache folder (default: <pack>/gas_cache)
    run_dir: str | None = None  #: training state and logs folder (default: <pack>/runs)
    name: str | None = None  #: output name (default: the model's name); file <name>-nfe<N>-<mode>.safetensors
    overwrite: bool = False  #: replace an existing solver file / start over an unfinished run
    resume: bool = False  #: continue the unfinished run of this output from its last training checkpoint
    ckpt_every: int = 100  #: iterations between training checkpoints (a crash loses at most this many)
    eval_every: int = 500  #: iterations between held-out evaluations of the EMA solver (also at iteration 1)
    log_every: int = 100  #: iterations between log lines
    csv: bool = False  #: write a CSV log (<run dir>/log.csv)
    tensorboard: bool = False  #: write TensorBoard events (<run dir>/tb; needs the tensorboard package)
    report: bool = True  #: write the markdown report and the PNG grid next to the solver
    grid_samples: int = 8  #: held-out samples shown in the report's image grid
    extra_metadata: dict[str, Any] = field(default_factory=dict)  #: added to the solver file's metadata

    @classmethod
    def from_recipe(cls, recipe: str, **overrides: Any) -> DistillConfig:
        """The config of named recipe ``recipe`` (:data:`RECIPES`), with ``overrides`` on top."""
        if recipe not in RECIPES:
            raise ConfigError(f"`recipe` must be one of {', '.join(RECIPES)}, got {recipe!r}")
        return cls(**{**RECIPES[recipe], **overrides})

    # ----- derived -----------------------------------------------------------------------------------------------
    @property
    def training_samples(self) -> int:
        """The teacher samples the run trains on: :attr:`gas_train_size` in GAS mode when set, else
        :attr:`train_size`."""
        return self.gas_train_size if self.mode == "gas" and self.gas_train_size > 0 else self.train_size

    @property
    def resolved_teacher_steps(self) -> int:
        """Teacher steps after defaults: :attr:`dpmpp3m_steps` for dpmpp3m, NFE + 1 for ipndm-gits."""
        if self.teacher_steps is not None:
            return self.teacher_steps
        return self.dpmpp3m_steps if self.teacher == "dpmpp3m" else self.nfe + 1

    def start_length(self) -> int:
        """Iterations of each start of a multi-start run (:attr:`start_iters`, default ``iters / (5 starts)``)."""
        return int(self.start_iters) if self.start_iters is not None else max(1, self.iters // (5 * self.starts))

    def disc_architecture(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Discriminator (widths, groups) after the preset and the overrides."""
        widths, groups = DISC_PRESETS[self.disc_preset]
        return tuple(self.disc_widths or widths), tuple(self.disc_groups or groups)

    def paths(self) -> tuple[Path, Path, Path]:
        """``(out_dir, cache_dir, run_dir)`` with the pack defaults filled in."""
        out = Path(self.out_dir) if self.out_dir else PACK_ROOT / "models" / "gas_solvers"
        cache = Path(self.cache_dir) if self.cache_dir else PACK_ROOT / "gas_cache"
        runs = Path(self.run_dir) if self.run_dir else PACK_ROOT / "runs"
        return out.expanduser(), cache.expanduser(), runs.expanduser()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able copy (tuples become lists)."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistillConfig:
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names}
        return cls(**kwargs)

    # ----- validation --------------------------------------------------------------------------------------------
    def validate(self, processes: int = 1) -> None:
        """Raise :class:`~trainer.errors.ConfigError` (one sentence) on the first value that cannot work, for a run
        on ``processes`` processes (torchrun), which share each batch evenly."""

        def need(cond: bool, message: str) -> None:
            if not cond:
                raise ConfigError(message)

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        need(is_int(self.nfe) and MIN_NFE <= self.nfe <= MAX_NFE,
             f"`nfe` must be an integer from {MIN_NFE} to {MAX_NFE}, got {self.nfe!r}")
        need(self.mode in MODES, f"`mode` must be one of {', '.join(MODES)}, got {self.mode!r}")
        need(self.loss in LOSSES, f"`loss` must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        need(self.loss_reduce in LOSS_REDUCTIONS,
             f"`loss_reduce` must be one of {', '.join(LOSS_REDUCTIONS)}, got {self.loss_reduce!r}")
        need(math.isfinite(self.state_loss) and self.state_loss >= 0,
             f"`state_loss` must be a finite weight >= 0 (0 = off), got {self.state_loss}")
        need(self.state_points >= 1, f"`state_points` must be at least 1, got {self.state_points}")
        need(self.state_anneal in STATE_ANNEALS,
             f"`state_anneal` must be one of {', '.join(STATE_ANNEALS)}, got {self.state_anneal!r}")
        need(self.teacher in TEACHERS, f"`teacher` must be one of {', '.join(TEACHERS)}, got {self.teacher!r}")
        need(self.teacher_grid in TEACHER_GRIDS, f"`teacher_grid` must be one of {TEACHER_GRIDS}")
        need(self.amp in AMP_MODES, f"`amp` must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        need(self.lr_schedule in LR_SCHEDULES,
             f"`lr_schedule` must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        need(is_int(self.starts) and self.starts >= 1, f"`starts` must be a positive integer, got {self.starts!r}")
        if self.start_iters is not None:
            need(is_int(self.start_iters) and self.start_iters >= 1,
                 f"`start_iters` must be a positive integer, got {self.start_iters!r}")
        if is_int(self.starts) and self.starts > 1:
            need(self.starts * self.start_length() < self.iters,
                 f"`starts` x `start_iters` ({self.starts} x {self.start_length()}) must be fewer than `iters` "
                 f"({self.iters})")
        need(self.select in SELECTIONS, f"`select` must be one of {', '.join(SELECTIONS)}, got {self.select!r}")
        need(self.time_init in TIME_INITS,
             f"`time_init` must be one of {', '.join(TIME_INITS)}, got {self.time_init!r}")
        need(self.disc_preset in DISC_PRESETS, f"`disc_preset` must be one of {', '.join(DISC_PRESETS)}")
        need(self.disc_fake in DISC_FAKES,
             f"`disc_fake` must be one of {', '.join(DISC_FAKES)}, got {self.disc_fake!r}")
        need(is_num(self.t_eps) and 0 < self.t_eps < 1,
             f"`t_eps` must lie strictly between 0 and 1, got {self.t_eps!r}")
        need(is_int(self.seed) and self.seed >= 0, f"`seed` must be a non-negative integer, got {self.seed!r}")
        for name in ("train_size", "val_size", "batch", "iters", "teacher_batch", "eval_batch", "ckpt_every",
                     "eval_every", "log_every", "disc_blocks", "r1_every", "disc_every"):
            value = getattr(self, name)
            need(is_int(value) and value >= 1, f"`{name}` must be a positive integer, got {value!r}")
        need(is_int(self.lr_warmup) and 0 <= self.lr_warmup < self.iters,
             f"`lr_warmup` must be an integer from 0 to `iters` - 1 ({self.iters - 1}), got {self.lr_warmup!r}")
        need(is_num(self.disc_ramp) and 0 <= self.disc_ramp <= 1,
             f"`disc_ramp` must be a fraction of the iterations from 0 to 1, got {self.disc_ramp!r}")
        need(is_int(self.gas_train_size) and self.gas_train_size >= 0,
             f"`gas_train_size` must be a non-negative integer (0: `train_size`), got {self.gas_train_size!r}")
        size_name = "gas_train_size" if self.training_samples != self.train_size else "train_size"
        need(self.batch <= self.training_samples,
             f"`batch` ({self.batch}) cannot be larger than `{size_name}` ({self.training_samples})")
        need(self.batch % processes == 0,
             f"`batch` ({self.batch}) must be divisible by the number of processes ({processes}), so that every "
             "process trains on an equal share of each batch")
        need(is_int(self.grid_samples) and self.grid_samples >= 0, "`grid_samples` must be a non-negative integer")
        if self.teacher_steps is not None:
            need(is_int(self.teacher_steps) and 1 <= self.teacher_steps <= 10000,
                 f"`teacher_steps` must be an integer from 1 to 10000, got {self.teacher_steps!r}")
        need(is_int(self.dpmpp3m_steps) and 1 <= self.dpmpp3m_steps <= 10000,
             f"`dpmpp3m_steps` must be an integer from 1 to 10000, got {self.dpmpp3m_steps!r}")
        need(self.teacher_order in (1, 2, 3, 4), f"`teacher_order` must be 1..4, got {self.teacher_order!r}")
        for name in ("lr", "disc_lr", "coef_lr_scale", "cauchy_scale"):
            value = getattr(self, name)
            need(is_num(value) and value > 0, f"`{name}` must be a positive number, got {value!r}")
        for name in ("grad_clip", "disc_weight", "r1_gamma"):
            value = getattr(self, name)
            need(is_num(value) and value >= 0, f"`{name}` must be a number >= 0, got {value!r}")
        need(is_num(self.ema) and 0 <= self.ema < 1, f"`ema` must lie in [0, 1), got {self.ema!r}")
        widths, groups = self.disc_architecture()
        need(len(widths) >= 1 and len(widths) == len(groups),
             "the discriminator needs as many group counts as widths")
        for w, g in zip(widths, groups, strict=True):
            need(is_int(w) and is_int(g) and w > 0 and g > 0 and (2 * w) % g == 0,
                 f"discriminator width {w} must be a positive integer whose expansion {2 * w} is divisible by "
                 f"its group count {g}")
        if self.name is not None:
            need(bool(self.name) and not any(ch in self.name for ch in '/\\:*?"<>|'),
                 f"`name` {self.name!r} cannot be part of a file name")
