"""Training-recipe bench: held-out error of GS solvers trained with the paper's recipe and with one lever changed.

Usage: ``OMP_NUM_THREADS=1 python -m benchmarks.recipe [--teachers demo,hard,flow] [--settings paper,cosine,...]
[--nfe 4 6] [--seeds 3] [--first-seed 0] [--iters 500] [--png curves.png] [--json results.json]``

Teachers (exact and cheap on the CPU, defined here):

* ``demo``: the demo's analytic class-conditional Gaussian mixture (``trainer/demo.py``: 3x16x16, 8 classes x 3
  components, CFG 4) on SD1.5's discrete VP schedule.
* ``hard``: a larger mixture, 4x16x16, 12 classes x 4 components with unequal weights (1 : 1/2 : 1/4 : 1/8 within a
  class), CFG 7.5, on the same schedule.
* ``flow``: flow matching, ``x_s = (1-s) x0 + s eps`` with a time shift of 3 (SD3-like), the exact denoiser of a
  4x8x8 mixture (6 classes x 3 components, CFG 5): since ``x_s / (1-s) = x0 + (s/(1-s)) eps``, it is the VE mixture
  denoiser at sigma ``s/(1-s)``.
* ``tiny``: the demo mixture at 2x8x8 with 3 classes (for the test; seconds).

Per (teacher, setting, NFE) the bench trains GS solvers (``trainer.distill.distill``, the public API) with training
seeds 0, 1, 2 (teacher noise, data order), and scores each EMA solver on held-out noises the training never sees
(sample indices from 1e6 on) against the exact ODE solution: DPM-Solver++(3M) with ``--exact-steps`` (512) log-SNR
uniform steps in float64 from the trainer's first to its last sigma. It prints, per setting, the mean and the worst
seed's held-out L1 at each NFE, the wall time (teacher generation + training, one process), and whether training was
stable: the last 20% of training does not worsen the held-out L1 by more than 2% (the trainer's own held-out check,
``val_size`` samples against its 64-step teacher, at every tenth of the run and at the end). ``--png`` draws those
curves (mean over seeds) per teacher and NFE.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from gas import DiscreteVPSchedule, FlowSchedule, sample_gas
from trainer.checkpointing import load_state
from trainer.config import DistillConfig
from trainer.demo import GaussianMixtureDenoiser, make_demo_problem
from trainer.distill import distill
from trainer.errors import TrainingInterruptedError
from trainer.evaluate import sample_solver
from trainer.gits import logsnr_grid
from trainer.outputs import output_paths
from trainer.problem import DistillProblem
from trainer.run_state import RunState
from trainer.runtime import resolve_amp
from trainer.teacher import end_sigmas, sample_noise
from trainer.teacher_data import load_teacher

#: First sample index of the bench's held-out set (training uses indices below train_size + val_size).
HELDOUT_START = 1_000_000
#: Fraction of training whose end must not be worse than its start by more than STABLE_TOLERANCE.
STABLE_TAIL, STABLE_TOLERANCE = 0.2, 0.02


class WeightedMixtureDenoiser(GaussianMixtureDenoiser):
    """The demo mixture with component ``m`` of every class weighted ``2^-m`` (normalised within the class)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        w = 0.5 ** torch.arange(self.components, dtype=torch.float64)
        self.log_weights = torch.log(w / w.sum()).repeat(self.classes)  # [K], class-major like the components
        self.settings["weights"] = "geometric-1/2"

    def _component_logp(self, xf: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logp, p, da = super()._component_logp(xf, a)
        return logp + self.log_weights.to(xf.device), p, da


class FlowMixtureDenoiser:
    """Exact flow-matching denoiser of a mixture: ``D_flow(x, s) = D_VE(x / (1-s), s / (1-s))`` (``s`` clamped to
    ``1 - 1e-6``: at ``s = 1`` the state holds no signal, and the VE sigma would be infinite)."""

    def __init__(self, ve: GaussianMixtureDenoiser) -> None:
        self.ve = ve

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        s = torch.as_tensor(sigma, device=x.device).to(torch.float64).reshape(-1).expand(x.shape[0])
        s = s.clamp(max=1.0 - 1e-6)
        scale = (1.0 - s).reshape(-1, *([1] * (x.ndim - 1)))
        return self.ve(x.to(torch.float64) / scale, s / (1.0 - s), cond).to(x.dtype)


def _mixture_problem(name: str, den: Callable[..., torch.Tensor], settings: dict[str, Any], schedule: Any,
                     shape: tuple[int, int, int], classes: int, cfg: float, description: str) -> DistillProblem:
    def conditions(indices: list[int]) -> dict[str, torch.Tensor]:
        return {"cond": torch.tensor([i % classes for i in indices], dtype=torch.long)}

    return DistillProblem(denoiser=den, schedule=schedule, latent_shape=shape, conditions=conditions,
                          identity={"family": f"bench-{name}", **settings, "schedule": schedule.describe()},
                          name=name, cfg=cfg, description=description)


def hard_problem() -> DistillProblem:
    den = WeightedMixtureDenoiser(channels=4, size=16, classes=12, components=4, cfg=7.5, seed=7)
    return _mixture_problem("hard", den, den.settings, DiscreteVPSchedule.sd_linear(), (4, 16, 16), 12, 7.5,
                            "mixture 4x16x16, 12 classes x 4 unequal components, CFG 7.5, SD1.5 schedule")


def flow_problem() -> DistillProblem:
    ve = GaussianMixtureDenoiser(channels=4, size=8, classes=6, components=3, cfg=5.0, seed=11)
    return _mixture_problem("flow", FlowMixtureDenoiser(ve), {**ve.settings, "flow": True}, FlowSchedule(shift=3.0),
                            (4, 8, 8), 6, 5.0, "flow matching, mixture 4x8x8, 6 classes x 3, CFG 5, shift 3")


TEACHERS: dict[str, Callable[[], DistillProblem]] = {
    "demo": make_demo_problem,
    "hard": hard_problem,
    "flow": flow_problem,
    "tiny": lambda: make_demo_problem(channels=2, size=8, classes=3, upscale=2),
}

#: The `lr 3e-3+cosine+cauchy 10 loss` setting (the `tuned` recipe's GS changes to the paper recipe before the loss
#: on intermediate states joined it), which the data and state-loss levers below are built on.
_TUNED: dict[str, Any] = {"lr": 3e-3, "lr_schedule": "cosine", "loss_reduce": "cauchy", "cauchy_scale": 10.0}
#: The `tuned` recipe before its rate and teacher changed: the above plus the loss on intermediate states (weight 1,
#: decayed linearly), the `tuned+state 1 linear` setting that the levers below are built on.
_TUNED_STATE: dict[str, Any] = {**_TUNED, "state_loss": 1.0, "state_anneal": "linear"}
#: The `tuned` recipe at the paper's length (`tuned+teacher 32+lr 5e-3`): the above with the 5x rate and the 32-step
#: teacher; today's `tuned` is it in 90% of the iterations (`tuned+iters x0.9`).
_TUNED_5X: dict[str, Any] = {**_TUNED_STATE, "dpmpp3m_steps": 32, "lr": 5e-3}

#: Bench settings: name -> (DistillConfig overrides of the paper recipe as a function of the iteration count).
SETTINGS: dict[str, Callable[[int], dict[str, Any]]] = {
    "paper": lambda iters: {},
    "cosine": lambda iters: {"lr_schedule": "cosine"},
    "warmup5%+cosine": lambda iters: {"lr_schedule": "cosine", "lr_warmup": max(1, iters // 20)},
    "ema 0.95": lambda iters: {"ema": 0.95},
    "logsnr init": lambda iters: {"time_init": "logsnr"},
    "clip off": lambda iters: {"grad_clip": 0.0},
    "lr 2e-3": lambda iters: {"lr": 2e-3},
    "ema 0.95+lr 2e-3+cosine": lambda iters: {"ema": 0.95, "lr": 2e-3, "lr_schedule": "cosine"},
    "lr 2e-3+cosine": lambda iters: {"lr": 2e-3, "lr_schedule": "cosine"},
    "lr 3e-3+cosine": lambda iters: {"lr": 3e-3, "lr_schedule": "cosine"},
    "ema 0.99": lambda iters: {"ema": 0.99},
    "batch 16 x iters/4+lr 3e-3+cosine": lambda iters: {"batch": 16, "iters": max(1, iters // 4), "lr": 3e-3,
                                                        "lr_schedule": "cosine"},
    "lr 5e-3+cosine": lambda iters: {"lr": 5e-3, "lr_schedule": "cosine"},
    "lr 3e-3+warmup5%+cosine": lambda iters: {"lr": 3e-3, "lr_schedule": "cosine", "lr_warmup": max(1, iters // 20)},
    "best": lambda iters: {"select": "best", "eval_every": max(1, iters // 20)},
    "lr 3e-3+cosine+best": lambda iters: {"lr": 3e-3, "lr_schedule": "cosine", "select": "best",
                                          "eval_every": max(1, iters // 20)},
    "lr 2e-3+cosine+best": lambda iters: {"lr": 2e-3, "lr_schedule": "cosine", "select": "best",
                                          "eval_every": max(1, iters // 20)},
    "starts 4": lambda iters: {"starts": 4},
    "starts 4+best": lambda iters: {"starts": 4, "select": "best", "eval_every": max(1, iters // 20)},
    "starts 4+lr 2e-3+cosine+best": lambda iters: {"starts": 4, "lr": 2e-3, "lr_schedule": "cosine",
                                                   "select": "best", "eval_every": max(1, iters // 20)},
    "lr 3e-3+cosine+coef lr x1/3": lambda iters: {"lr": 3e-3, "lr_schedule": "cosine", "coef_lr_scale": 1 / 3},
    "lr 3e-3+cosine+coef lr x1/3+starts 4": lambda iters: {"lr": 3e-3, "lr_schedule": "cosine",
                                                           "coef_lr_scale": 1 / 3, "starts": 4},
    "lr 3e-3+cosine+log loss": lambda iters: {"lr": 3e-3, "lr_schedule": "cosine", "loss_reduce": "log"},
    "log loss": lambda iters: {"loss_reduce": "log"},
    "lr 3e-3+cosine+cauchy loss": lambda iters: {"lr": 3e-3, "lr_schedule": "cosine", "loss_reduce": "cauchy"},
    "lr 3.0000001e-3+cosine": lambda iters: {"lr": 3.0000001e-3, "lr_schedule": "cosine"},  # float-level change
    # faster timesteps: the times at lr, the coefficient corrections at lr x coef_lr_scale (3e-3 and 3e-3)
    "lr 1e-2+cosine+cauchy loss+coef lr x0.3": lambda iters: {"lr": 1e-2, "lr_schedule": "cosine",
                                                              "loss_reduce": "cauchy", "coef_lr_scale": 0.3},
    "lr 3e-2+cosine+cauchy loss+coef lr x0.1": lambda iters: {"lr": 3e-2, "lr_schedule": "cosine",
                                                              "loss_reduce": "cauchy", "coef_lr_scale": 0.1},
    "cauchy loss": lambda iters: {"loss_reduce": "cauchy"},
    "lr 2e-3+cosine+cauchy loss": lambda iters: {"lr": 2e-3, "lr_schedule": "cosine", "loss_reduce": "cauchy"},
    "lr 3e-3+cosine+cauchy loss+ema 0.99": lambda iters: {"lr": 3e-3, "lr_schedule": "cosine",
                                                          "loss_reduce": "cauchy", "ema": 0.99},
    "lr 3e-3+cosine+ema 0.99": lambda iters: {"lr": 3e-3, "lr_schedule": "cosine", "ema": 0.99},
    "lr 3e-3+cosine+cauchy loss+ema 0.9": lambda iters: {"lr": 3e-3, "lr_schedule": "cosine",
                                                         "loss_reduce": "cauchy", "ema": 0.9},
    "lr 5e-3+cosine+cauchy loss+ema 0.99": lambda iters: {"lr": 5e-3, "lr_schedule": "cosine",
                                                          "loss_reduce": "cauchy", "ema": 0.99},
    "lr 3e-3+cosine+log loss+ema 0.99": lambda iters: {"lr": 3e-3, "lr_schedule": "cosine",
                                                       "loss_reduce": "log", "ema": 0.99},
    "lr 3e-3+cosine+cauchy 10 loss": lambda iters: {"lr": 3e-3, "lr_schedule": "cosine", "loss_reduce": "cauchy",
                                                    "cauchy_scale": 10.0},
    # train-set size and teacher steps on top of `tuned`: the teacher's cost is train_size x teacher_steps model calls
    "lr 3e-3+cosine+cauchy 10 loss+train 700": lambda iters: {**_TUNED, "train_size": 700},
    "lr 3e-3+cosine+cauchy 10 loss+train 2800": lambda iters: {**_TUNED, "train_size": 2800},
    "lr 3e-3+cosine+cauchy 10 loss+teacher 32": lambda iters: {**_TUNED, "teacher_steps": 32},
    "lr 3e-3+cosine+cauchy 10 loss+teacher 32+train 2800": lambda iters: {**_TUNED, "teacher_steps": 32,
                                                                           "train_size": 2800},
    # the loss on intermediate states (trainer/trajectory.py) on top of `tuned`: weight, decay, kept teacher points
    "tuned+state 1": lambda iters: {**_TUNED, "state_loss": 1.0},
    "tuned+state 1 linear": lambda iters: {**_TUNED_STATE},
    "tuned+state 3 linear": lambda iters: {**_TUNED, "state_loss": 3.0, "state_anneal": "linear"},
    "tuned+state 0.3 linear": lambda iters: {**_TUNED, "state_loss": 0.3, "state_anneal": "linear"},
    "tuned+state 3 linear+points 32": lambda iters: {**_TUNED, "state_loss": 3.0, "state_anneal": "linear",
                                                     "state_points": 32},
    # on top of today's tuned: the EMA decay; twice the training samples at half the teacher steps (same teacher cost)
    "tuned+ema 0.99": lambda iters: {**_TUNED_STATE, "ema": 0.99},
    "tuned+teacher 32+train 2800": lambda iters: {**_TUNED_STATE, "teacher_steps": 32, "train_size": 2800},
    # on top of today's tuned, for demo NFE 6 (whose mean the few samples sent to another mode decide): a Cauchy
    # scale of 30 medians or the plain mean (less robust to those samples), log-SNR-uniform start, 32 kept points
    "tuned+cauchy 30": lambda iters: {**_TUNED_STATE, "cauchy_scale": 30.0},
    "tuned+mean loss": lambda iters: {**_TUNED_STATE, "loss_reduce": "mean"},
    "tuned+logsnr start": lambda iters: {**_TUNED_STATE, "time_init": "logsnr"},
    "tuned+points 32": lambda iters: {**_TUNED_STATE, "state_points": 32},
    # the teacher's cost on top of today's tuned: half the teacher steps (half its model calls), or the same teacher
    # cost spent on more training samples at 24 steps; a 5/3x higher peak learning rate
    "tuned+teacher 32": lambda iters: {**_TUNED_STATE, "teacher_steps": 32},
    "tuned+teacher 24+train 3700": lambda iters: {**_TUNED_STATE, "teacher_steps": 24, "train_size": 3700},
    "tuned+lr 5e-3": lambda iters: {**_TUNED_STATE, "lr": 5e-3},
    # today's tuned (the recipe's GS settings; `dpmpp3m_steps` 32 is the 32-step teacher of `tuned+teacher 32`)
    "tuned+teacher 32+lr 5e-3": lambda iters: {**_TUNED_5X},
    # ... in fewer iterations (its cosine decay follows the shorter run): the wall time against its quality
    "tuned+iters x0.9": lambda iters: {**_TUNED_5X, "iters": round(0.9 * iters)},
    "tuned+iters x0.85": lambda iters: {**_TUNED_5X, "iters": round(0.85 * iters)},
    # ... with more distinct training samples (the teacher's cost grows with them; the iterations do not)
    "tuned+iters x0.9+train 2100": lambda iters: {**_TUNED_5X, "iters": round(0.9 * iters), "train_size": 2100},
    "tuned+iters x0.9+train 2800": lambda iters: {**_TUNED_5X, "iters": round(0.9 * iters), "train_size": 2800},
    "tuned+teacher 32+train 2100": lambda iters: {**_TUNED_STATE, "teacher_steps": 32, "train_size": 2100},
    # the same samples in half the optimiser steps: twice the batch for half the iterations (the same model calls in
    # training on a real model; on this bench, whose per-iteration cost is mostly overhead, about half the time)
    "tuned+batch 8 x iters/2": lambda iters: {**_TUNED_STATE, "batch": 8, "iters": max(1, iters // 2)},
    "tuned+batch 8 x iters/2+lr 4e-3": lambda iters: {**_TUNED_STATE, "batch": 8, "iters": max(1, iters // 2),
                                                      "lr": 4e-3},
    # ... with the EMA's horizon kept at the same share of training (0.998 over half the iterations)
    "tuned+batch 8 x iters/2+ema 0.998": lambda iters: {**_TUNED_STATE, "batch": 8, "iters": max(1, iters // 2),
                                                        "ema": 0.998},
    "tuned+batch 8 x iters/2+lr 4e-3+ema 0.998": lambda iters: {**_TUNED_STATE, "batch": 8,
                                                                "iters": max(1, iters // 2), "lr": 4e-3,
                                                                "ema": 0.998},
    "tuned+batch 8 x iters/2+lr 6e-3+ema 0.998": lambda iters: {**_TUNED_STATE, "batch": 8,
                                                                "iters": max(1, iters // 2), "lr": 6e-3,
                                                                "ema": 0.998},
    # the same in 80% of the iterations (the state loss's bookkeeping paid for in iterations)
    "tuned+state 1 linear+iters x0.8": lambda iters: {**_TUNED_STATE, "iters": round(0.8 * iters)},
    # twice the samples per iteration: the same wall time on this bench (its per-iteration cost is overhead), twice
    # the model evaluations on a real model
    "lr 3e-3+cosine+cauchy loss+batch 8": lambda iters: {"lr": 3e-3, "lr_schedule": "cosine",
                                                         "loss_reduce": "cauchy", "batch": 8},
    # the ceiling: the same solver family trained 10x longer on twice the batch (20x the samples)
    "ceiling 10x iters+batch 8+lr 3e-3+cosine": lambda iters: {
        "iters": 10 * iters, "batch": 8, "lr": 3e-3, "lr_schedule": "cosine"},
    "ceiling 10x iters+batch 8+tuned": lambda iters: {**_TUNED_STATE, "iters": 10 * iters, "batch": 8},
    "ceiling 10x iters+batch 8+lr 2e-3+cosine+best": lambda iters: {
        "iters": 10 * iters, "batch": 8, "lr": 2e-3, "lr_schedule": "cosine", "select": "best",
        "eval_every": max(1, iters // 2)},
}


@dataclass
class RunResult:
    """One trained solver: its held-out L1 against the exact ODE, its curve and its cost."""

    teacher: str
    setting: str
    nfe: int
    seed: int
    heldout_l1: float
    teacher_seconds: float
    train_seconds: float
    curve: list[tuple[int, float]] = field(default_factory=list)
    #: The held-out per-sample L1's median and the share of the mean that its largest tenth of samples makes.
    median_l1: float = math.nan
    top_tenth_share: float = math.nan
    #: The trained solver's sigmas (its timesteps), first to last.
    sigmas: list[float] = field(default_factory=list)
    #: With ``--exact-stability``: the bench held-out L1 against the exact ODE of the EMA solver at 80% of training.
    exact_l1_at_80: float = math.nan
    #: With ``--exact-curve K``: ``(iteration, bench held-out L1 against the exact ODE)`` of the EMA solver at every
    #: K-th of training and at 80%, then the end (what the PNG draws instead of the trainer's own check).
    exact_curve: list[tuple[int, float]] = field(default_factory=list)

    @property
    def stable(self) -> bool:
        """The held-out L1 at the end is at most 2% above its value at 80% of training: on the bench held-out set
        against the exact ODE where measured (``--exact-stability``), else on the trainer's own check."""
        if math.isfinite(self.exact_l1_at_80):
            return self.heldout_l1 <= (1 + STABLE_TOLERANCE) * self.exact_l1_at_80
        last_step = self.curve[-1][0]
        before = [v for s, v in self.curve if s <= (1 - STABLE_TAIL) * last_step]
        return self.curve[-1][1] <= (1 + STABLE_TOLERANCE) * before[-1]


@torch.no_grad()
def exact_solution(problem: DistillProblem, noise: torch.Tensor, cond: dict[str, Any], t_eps: float,
                   steps: int, chunk: int = 128) -> torch.Tensor:
    """The probability-flow ODE's end state from ``noise``: DPM-Solver++(3M) on ``steps`` log-SNR-uniform sigmas in
    float64, between the trainer's first and last sigma; ``chunk`` samples at a time (the mixture denoisers' memory
    grows with batch x components x dimensions)."""
    s0, s_end = end_sigmas(problem, t_eps)
    sigmas = logsnr_grid(problem.schedule, s0, s_end, steps)
    out = []
    for lo in range(0, noise.shape[0], chunk):
        x = problem.schedule.initial_state(noise[lo:lo + chunk].to(torch.float64), s0)
        part = {k: v[lo:lo + chunk] if torch.is_tensor(v) else v for k, v in cond.items()}
        out.append(sample_gas(problem.denoiser, x, sigmas, extra_args=part, disable=True,
                              schedule=problem.schedule).float())
    return torch.cat(out)


@dataclass
class HeldOut:
    """A teacher's bench held-out set: sample indices (from 10^6 on), noises, conditioning, exact ODE end states."""

    idx: list[int]
    noise: torch.Tensor
    cond: dict[str, Any]
    exact: torch.Tensor
    s0: float
    autocast: Any

    def sample(self, problem: DistillProblem, solver: Any) -> torch.Tensor:
        """``solver``'s end states from the held-out noises."""
        return sample_solver(problem, solver, self.idx, self.noise, self.s0, autocast=self.autocast, batch=64)


def held_out(problem: DistillProblem, n: int, exact_steps: int, cache: Path | None = None) -> HeldOut:
    """The first ``n`` held-out samples of ``problem`` with their exact solutions (``exact_steps`` steps); with
    ``cache``, the exact solutions are read from / written (atomically) to a safetensors file there, named by the
    teacher's identity, ``n`` and ``exact_steps`` (they cost minutes for thousands of samples)."""
    idx = list(range(HELDOUT_START, HELDOUT_START + n))
    noise = sample_noise(idx, problem.latent_shape, 0)
    cond = problem.conditions(idx)
    t_eps = DistillConfig().t_eps
    path = None
    if cache is not None:
        ident = json.dumps({"identity": problem.identity, "n": n, "steps": exact_steps, "t_eps": t_eps},
                           sort_keys=True, default=str)
        path = cache / f"exact-{problem.name}-{n}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}.safetensors"
    if path is not None and path.is_file():
        exact = load_file(str(path))["exact"]
    else:
        exact = exact_solution(problem, noise, cond, t_eps, exact_steps)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            save_file({"exact": exact.contiguous()}, str(tmp))
            os.replace(tmp, path)
    return HeldOut(idx, noise, cond, exact, end_sigmas(problem, t_eps)[0], resolve_amp("off", problem.device))


def bench_config(recipe: str, root: Path, name: str, iters: int, **overrides: Any) -> DistillConfig:
    """A bench run's config: ``recipe`` with ``overrides`` (they win), ``iters`` iterations, checkpointed, scored on
    64 held-out samples and logged once at the end, no report or grid, every file below ``root``."""
    return DistillConfig.from_recipe(recipe, **{
        "iters": iters, "val_size": 64, "eval_every": iters, "ckpt_every": iters, "log_every": iters,
        "teacher_batch": 32, "eval_batch": 64, "report": False, "grid_samples": 0, "overwrite": True, "name": name,
        "out_dir": str(root / "out"), "cache_dir": str(root / "cache"), "run_dir": str(root / "runs"), **overrides})


def run_config(root: Path, teacher: str, setting: str, nfe: int, seed: int, args: argparse.Namespace) -> DistillConfig:
    overrides = SETTINGS[setting](args.iters)
    iters = overrides.pop("iters", args.iters)  # a setting may trade iterations for batch
    return bench_config("paper", root, f"{teacher}-{list(SETTINGS).index(setting)}-s{seed}", iters, **{
        "nfe": nfe, "mode": "gs", "seed": seed, "train_size": args.train_size, "val_size": args.val_size,
        "eval_every": max(1, iters // 10), "ckpt_every": iters, "log_every": iters, **overrides})


def teacher_key(config: DistillConfig) -> tuple[Any, ...]:
    """What decides a run's teacher samples and their cost (runs with the same key share one generation)."""
    return (config.seed, config.training_samples, config.val_size, config.teacher, config.resolved_teacher_steps,
            config.teacher_grid, config.teacher_order, config.state_loss > 0 and config.state_points)


def timed_teacher(problem: DistillProblem, cfg: DistillConfig, root: Path, teacher: str,
                  sets: dict[tuple[Any, ...], tuple[str, float]], autocast: Any) -> tuple[DistillConfig, float]:
    """``cfg`` with a cache folder of its own per teacher set (:func:`teacher_key`; ``sets`` holds one teacher's, as
    key -> (folder, seconds)), so that no timed teacher run reads samples another set generated (the state loss's
    held-out samples would come from the plain runs' cache); each set is generated and timed on first use. Returns
    the config and its set's teacher seconds."""
    key = teacher_key(cfg)
    if key not in sets:
        folder = str(root / "cache" / f"{teacher}-{len(sets)}")
        t0 = time.perf_counter()
        load_teacher(problem, replace(cfg, cache_dir=folder), autocast, progress=False)
        sets[key] = (folder, time.perf_counter() - t0)
    folder, seconds = sets[key]
    return replace(cfg, cache_dir=folder), seconds


def _train_to(problem: DistillProblem, config: DistillConfig, callback: Callable[[int, dict[str, float]], None],
              ref: HeldOut, stop_at: int) -> float:
    """Train ``config`` (from the start, or with ``resume`` from its saved state) to iteration ``stop_at`` and stop
    there (the trainer saves its state; resuming it gives the uninterrupted run bit for bit); the bench held-out L1 of
    the EMA solver at that point."""
    seen: list[int] = []

    def note(step: int, stats: dict[str, float]) -> None:
        seen.append(step)
        callback(step, stats)

    try:  # asked after each iteration, before its callback: stop once iteration stop_at is running
        distill(problem, config, progress=False, callback=note,
                should_stop=lambda: bool(seen) and seen[-1] >= stop_at - 1)
    except TrainingInterruptedError:
        pass
    run = RunState(problem, config)
    run.load_state_dict(load_state(output_paths(problem, config).state))
    if run.step != stop_at:
        raise RuntimeError(f"stopped at iteration {run.step}, not {stop_at}")
    return float((ref.sample(problem, run.ema_solver()) - ref.exact).abs().flatten(1).mean(1).double().mean())


def exact_stops(iters: int, args: argparse.Namespace) -> list[int]:
    """Where a run stops to score its EMA solver against the exact ODE: at 80% of ``iters`` with
    ``--exact-stability`` or ``--exact-curve K``, and with the latter also at every K-th of them."""
    if not (args.exact_stability or args.exact_curve):
        return []
    curve = {round(i * iters / args.exact_curve) for i in range(1, args.exact_curve)} if args.exact_curve else set()
    return sorted((curve | {round((1 - STABLE_TAIL) * iters)}) - {0, iters})


def warm_up(root: Path) -> None:
    """An untimed two-iteration run on the tiny teacher, so that no timed run pays the process's one-time costs
    (modules torch imports on first use, such as the optimiser's)."""
    problem = TEACHERS["tiny"]()
    cfg = DistillConfig.from_recipe("paper", nfe=2, mode="gs", iters=2, train_size=4, val_size=2, report=False,
                                    grid_samples=0, name="warm-up", out_dir=str(root / "warm-up"),
                                    cache_dir=str(root / "warm-up"), run_dir=str(root / "warm-up"))
    distill(problem, cfg, progress=False)


def run_bench(args: argparse.Namespace, root: Path, on_result: Callable[[RunResult], None] | None = None
              ) -> list[RunResult]:
    """Every (teacher, setting, NFE, seed) of ``args``; teacher samples are generated (and timed) once per teacher,
    seed and teacher set (:func:`teacher_key`), after an untimed :func:`warm_up`."""
    warm_up(root)
    results: list[RunResult] = []
    for teacher in args.teachers:
        problem = TEACHERS[teacher]()
        ref = held_out(problem, args.heldout, args.exact_steps, args.exact_cache)
        sets: dict[tuple[Any, ...], tuple[str, float]] = {}  # per teacher set (a setting may change its size/steps)
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for setting in args.settings:
                for nfe in args.nfe:
                    cfg, teacher_seconds = timed_teacher(problem, run_config(root, teacher, setting, nfe, seed, args),
                                                         root, teacher, sets, ref.autocast)
                    curve: list[tuple[int, float]] = []

                    def collect(step: int, stats: dict[str, float], curve: list = curve) -> None:
                        if "val_l1" in stats:
                            curve.append((step, stats["val_l1"]))

                    at_80, exact_curve, stops = math.nan, [], exact_stops(cfg.iters, args)
                    t0 = time.perf_counter()
                    if stops:  # stop at 80% (and the curve's points), score that EMA solver, resume (exact) to the end
                        cfg = replace(cfg, ckpt_every=cfg.iters)
                        for n, stop in enumerate(stops):
                            exact_curve.append((stop, _train_to(problem, replace(cfg, resume=n > 0), collect, ref,
                                                                stop)))
                        at_80 = dict(exact_curve)[round((1 - STABLE_TAIL) * cfg.iters)]
                        cfg = replace(cfg, resume=True)
                    res = distill(problem, cfg, progress=False, callback=collect)
                    train_s = res.train_seconds if not stops else time.perf_counter() - t0
                    curve.append((cfg.iters, float(res.scores["methods"][res.label]["l1"])))
                    per_sample = (ref.sample(problem, res.solver) - ref.exact).abs().flatten(1).mean(1).double()
                    top = per_sample.sort(descending=True).values[:max(1, len(per_sample) // 10)]
                    r = RunResult(teacher, setting, nfe, seed, float(per_sample.mean()), teacher_seconds,
                                  train_s, curve, float(per_sample.median()),
                                  float(top.sum() / per_sample.sum()),
                                  [round(float(v), 4) for v in res.solver.sigmas(problem.schedule).detach()],
                                  at_80, [*exact_curve, (cfg.iters, float(per_sample.mean()))] if args.exact_curve
                                  else [])
                    results.append(r)
                    if on_result is not None:
                        on_result(r)
    return results


def summary_rows(results: list[RunResult], nfes: list[int]) -> list[dict[str, Any]]:
    """Per (teacher, setting): mean / worst-seed L1 per NFE, mean wall seconds per NFE, stable over every run."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results:
        row = rows.setdefault((r.teacher, r.setting), {"teacher": r.teacher, "setting": r.setting, "stable": True})
        row.setdefault(r.nfe, []).append(r)
        row["stable"] = row["stable"] and r.stable
    teachers = list(dict.fromkeys(r.teacher for r in results))
    order = list(SETTINGS)
    out = []
    for _, row in sorted(rows.items(), key=lambda kv: (teachers.index(kv[0][0]), order.index(kv[0][1])
                                                       if kv[0][1] in order else len(order))):
        for nfe in nfes:
            runs = row.pop(nfe, [])
            row[f"mean{nfe}"] = sum(r.heldout_l1 for r in runs) / len(runs) if runs else math.nan
            row[f"worst{nfe}"] = max((r.heldout_l1 for r in runs), default=math.nan)
            row[f"wall{nfe}"] = (sum(r.teacher_seconds + r.train_seconds for r in runs) / len(runs) if runs
                                 else math.nan)
        out.append(row)
    return out


def format_table(results: list[RunResult], nfes: list[int]) -> str:
    """The markdown ablation table (change against the same teacher's paper row in parentheses). "goal": at every
    NFE the mean is at least 15% below the paper's and the worst seed below the paper's best seed."""
    rows = summary_rows(results, nfes)
    paper = {r["teacher"]: r for r in rows if r["setting"] == "paper"}
    paper_best = {(r.teacher, r.nfe): min(x.heldout_l1 for x in results if x.setting == "paper" and
                                          (x.teacher, x.nfe) == (r.teacher, r.nfe))
                  for r in results if r.setting == "paper"}
    seeds = {(r.teacher, r.setting): len({x.seed for x in results if (x.teacher, x.setting) == (r.teacher, r.setting)})
             for r in results}
    head = "| teacher | setting | seeds | " + " | ".join(
        f"NFE {n} mean L1 | NFE {n} worst | NFE {n} wall s" for n in nfes) + " | stable | goal |"
    lines = [head, "|---|---|---:|" + "---:|---:|---:|" * len(nfes) + "---|---|"]
    for row in rows:
        cells, goal = [], row["setting"] != "paper"
        for n in nfes:
            ref = paper.get(row["teacher"], {}).get(f"mean{n}")
            rel = "" if ref is None or row["setting"] == "paper" else f" ({100 * (row[f'mean{n}'] / ref - 1):+.0f}%)"
            best = paper_best.get((row["teacher"], n))
            goal = goal and ref is not None and best is not None and row[f"mean{n}"] <= 0.85 * ref \
                and row[f"worst{n}"] < best
            if math.isnan(row[f"mean{n}"]):  # no run of this NFE (an interrupted bench)
                cells += ["-", "-", "-"]
                goal = False
                continue
            cells += [f"{row[f'mean{n}']:.4f}{rel}", f"{row[f'worst{n}']:.4f}", f"{row[f'wall{n}']:.1f}"]
        lines.append(f"| {row['teacher']} | {row['setting']} | {seeds[(row['teacher'], row['setting'])]} | "
                     + " | ".join(cells) + f" | {'yes' if row['stable'] else 'no'} | "
                     + ("-" if row["setting"] == "paper" else "yes" if goal else "no") + " |")
    return "\n".join(lines)


def draw_curves(results: list[RunResult], path: Path) -> None:
    """PNG of the held-out L1 (log scale, mean over seeds) over iterations: one panel per (teacher, NFE), one line
    per setting (Pillow; no plotting library needed)."""
    from PIL import Image, ImageDraw

    panels = sorted({(r.teacher, r.nfe) for r in results})
    settings = list(dict.fromkeys(r.setting for r in results))
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
               (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
    pw, ph, pad = 420, 300, 50
    cols = min(len(panels), 2)
    rows_n = math.ceil(len(panels) / cols)
    img = Image.new("RGB", (cols * pw, rows_n * ph + 20 * len(settings) + 10), "white")
    draw = ImageDraw.Draw(img)
    for k, (teacher, nfe) in enumerate(panels):
        ox, oy = (k % cols) * pw, (k // cols) * ph
        curves: dict[str, list[tuple[int, float]]] = {}
        for s in settings:  # the exact curve where measured, else the trainer's check after iteration 1 (untrained)
            runs = [r.exact_curve or r.curve[1:] for r in results if (r.teacher, r.nfe, r.setting) == (teacher, nfe, s)]
            if runs:
                curves[s] = [(runs[0][i][0], sum(c[i][1] for c in runs) / len(runs)) for i in range(len(runs[0]))]
        pts = [p for c in curves.values() for p in c]
        if not pts:
            continue
        x_max = max(p[0] for p in pts)
        lo, hi = math.log10(min(p[1] for p in pts)), math.log10(max(p[1] for p in pts))
        hi = hi if hi > lo else lo + 1e-3

        def to_px(step: int, val: float, ox: int = ox, oy: int = oy, x_max: int = x_max, lo: float = lo,
                  hi: float = hi) -> tuple[float, float]:
            y = (min(max(math.log10(val), lo), hi) - lo) / (hi - lo)
            return ox + pad + (pw - 1.5 * pad) * step / x_max, oy + ph - pad - (ph - 1.8 * pad) * y

        draw.rectangle([ox + pad, oy + 0.8 * pad, ox + pw - 0.5 * pad, oy + ph - pad], outline="black")
        draw.text((ox + pad, oy + 10), f"{teacher}, NFE {nfe}: held-out L1 (log) vs iteration", fill="black")
        draw.text((ox + 4, oy + 0.8 * pad), f"{10 ** hi:.3g}", fill="black")
        draw.text((ox + 4, oy + ph - pad - 10), f"{10 ** lo:.3g}", fill="black")
        draw.text((ox + pw - pad, oy + ph - pad + 5), str(x_max), fill="black")
        for j, s in enumerate(settings):
            if s in curves and len(curves[s]) > 1:
                draw.line([to_px(*p) for p in curves[s]], fill=colours[j % len(colours)], width=2)
    for j, s in enumerate(settings):
        y = rows_n * ph + 5 + 20 * j
        draw.line([(10, y + 7), (40, y + 7)], fill=colours[j % len(colours)], width=3)
        draw.text((48, y), s, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def load_results(paths: list[Path]) -> list[RunResult]:
    """The runs saved by ``--json`` (JSON lines), in file order."""
    names = set(RunResult.__dataclass_fields__)
    out = []
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                data = json.loads(line)
                data["curve"] = [tuple(p) for p in data["curve"]]
                data["exact_curve"] = [tuple(p) for p in data.get("exact_curve", [])]
                out.append(RunResult(**{k: v for k, v in data.items() if k in names}))
    return out


def main(argv: list[str] | None = None) -> list[RunResult]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teachers", default="demo,hard,flow", help=f"comma-separated, of {', '.join(TEACHERS)}")
    ap.add_argument("--settings", default=",".join(SETTINGS),
                    help="comma-separated, of " + ", ".join(SETTINGS).replace("%", "%%"))
    ap.add_argument("--nfe", type=int, nargs="+", default=[4, 6])
    ap.add_argument("--seeds", type=int, default=3, help="training seeds: N of them, from --first-seed on")
    ap.add_argument("--first-seed", type=int, default=0, help="the first training seed (to add seeds to a saved run)")
    ap.add_argument("--iters", type=int, default=500)
    ap.add_argument("--train-size", type=int, default=400)
    ap.add_argument("--val-size", type=int, default=64, help="the trainer's held-out set (curves, stability)")
    ap.add_argument("--heldout", type=int, default=8192,
                    help="bench held-out samples scored against the exact ODE (the per-sample L1 is heavy-tailed: "
                         "a few samples per hundred make most of the mean, so 1024 samples still move a mean by "
                         "20-40%%; use --exact-cache to compute their exact solutions once)")
    ap.add_argument("--exact-steps", type=int, default=512)
    ap.add_argument("--exact-cache", type=Path, default=None,
                    help="folder to keep the held-out exact solutions in between runs (default: computed each run)")
    ap.add_argument("--exact-stability", action="store_true",
                    help="judge stability on the bench held-out set against the exact ODE: each run stops at 80%% "
                         "of its iterations, scores that EMA solver, then resumes to the end (the same solver as "
                         "without; its train seconds then include the stop and the score)")
    ap.add_argument("--exact-curve", type=int, default=0, metavar="K",
                    help="as --exact-stability, and also stop at every K-th of the iterations to score the EMA solver "
                         "against the exact ODE: the curves the PNG draws (default: 0, the trainer's own check)")
    ap.add_argument("--png", type=Path, default=None, help="write the held-out L1 curves here")
    ap.add_argument("--json", type=Path, default=None, help="write every run's numbers here (JSON lines)")
    ap.add_argument("--load", type=Path, nargs="+", default=None,
                    help="train nothing: print the table (and --png) of runs saved with --json")
    args = ap.parse_args(argv)
    args.teachers = [t for t in args.teachers.split(",") if t]
    args.settings = [s for s in args.settings.split(",") if s]
    for name, known in (("teacher", TEACHERS), ("setting", SETTINGS)):
        for value in getattr(args, f"{name}s"):
            if value not in known:
                ap.error(f"unknown {name} {value!r}; known: {', '.join(known)}")
    logging.getLogger("trainer").setLevel(logging.WARNING)
    if args.load is not None:
        seeds = range(args.first_seed, args.first_seed + args.seeds)  # --seeds / --first-seed select saved runs too
        results = [r for r in load_results(args.load)
                   if r.setting in args.settings and r.teacher in args.teachers and r.seed in seeds]
        print(format_table(results, sorted({r.nfe for r in results})))
        if args.png is not None:
            draw_curves(results, args.png)
        return results
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; iters {args.iters}, batch 4, train "
          f"{args.train_size}, held-out {args.heldout} vs exact ODE ({args.exact_steps} steps), seeds {args.seeds}",
          flush=True)

    def report(r: RunResult) -> None:
        print(f"  {r.teacher} | {r.setting} | NFE {r.nfe} | seed {r.seed} | L1 {r.heldout_l1:.4f} (median "
              f"{r.median_l1:.4f}, top tenth {100 * r.top_tenth_share:.0f}% of it; sigmas {r.sigmas}) | teacher "
              f"{r.teacher_seconds:.1f}s train {r.train_seconds:.1f}s | stable {r.stable}", flush=True)
        if args.json is not None:
            with args.json.open("a") as fh:
                fh.write(json.dumps({**r.__dict__, "stable": r.stable}) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        results = run_bench(args, Path(tmp), on_result=report)
    print(format_table(results, args.nfe))
    if args.png is not None:
        draw_curves(results, args.png)
        print(f"curves written to {args.png}")
    return results


if __name__ == "__main__":
    main()
