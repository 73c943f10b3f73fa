"""The two optimisation steps of one iteration (GS: the distillation loss only; GAS: plus the adversarial term of the
GAS paper, arXiv 2510.17699).

* :func:`discriminator_step` (GAS only, first): the student runs on fresh noise (``disc_fake`` "paired": on the
  batch's own noises) under ``no_grad`` with the batch's conditioning, giving ``fake``;
  ``L_D = softplus(D(fake) - D(x_T)) + gamma/2 (R1 + R2)``; one Adam step on ``D``.
* :func:`solver_step`: ``x_S = student(z, c)`` through all N model calls with autograd (each call checkpointed);
  ``L = distill(x_S, x_T) + w_adv * softplus(D(x_T) - D(x_S))`` (the adversarial part for GAS only, ``D``
  frozen; ``w_adv`` = ``disc_weight``, ramped in over the first ``disc_ramp`` of the iterations when set), averaged
  over the batch; backprop, gradient-norm clip, Adam at the iteration's learning rate
  (:func:`trainer.schedule.learning_rate`), EMA update.

With ``state_loss`` on, ``L`` also holds ``w * state_distance`` (:mod:`trainer.trajectory`: the intermediate
states against the teacher's trajectory, ``w`` after ``state_anneal``).

``distill`` = loss 'l1': mean |x_S - x_T|; 'lpips': LPIPS-VGG between decoded images; per sample, then reduced over
the batch as ``loss_reduce`` says (``trainer.losses.reduce_distances``: mean, log or Cauchy, the Cauchy scale being
the median of the global batch). Under torchrun the gradients and the logged numbers are averaged over the ranks
before clipping and the optimiser steps, so every rank applies the identical update. A non-finite loss or gradient
norm raises :class:`NonFiniteError` before any parameter changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .batches import Batch
from .config import DistillConfig
from .distributed import Dist
from .losses import discriminator_loss, generator_adversarial_loss, l1_latents, lpips_images, reduce_distances
from .problem import DistillProblem
from .run_state import RunState
from .runtime import Autocast, run_student, start_state
from .schedule import learning_rate
from .trajectory import state_distances, state_weight

__all__ = ["NonFiniteError", "StepContext", "adversarial_weight", "discriminator_step", "solver_step"]


class NonFiniteError(ArithmeticError):
    """A step met a non-finite ``what`` (the loop turns it into :class:`~trainer.errors.TrainingDivergedError`)."""

    def __init__(self, what: str, value: float) -> None:
        super().__init__(f"the {what} became {value}")
        self.what, self.value = what, value


@dataclass
class StepContext:
    """What every step reads and never changes: the problem, the options, autocast, the start sigma, LPIPS, ranks."""

    problem: DistillProblem
    config: DistillConfig
    autocast: Autocast
    s0: float
    lpips: nn.Module | None = None
    dist: Dist = field(default_factory=Dist)
    #: The sigmas of the teacher's kept states when the state loss is on (``TeacherData.state_sigmas``).
    state_sigmas: torch.Tensor | None = None


def _reduce(dist: Dist, params: list[nn.Parameter], stats: list[torch.Tensor]) -> list[float]:
    """Average the gradients of ``params`` and the scalar ``stats`` over the ranks (one collective per dtype);
    returns the averaged stats. A no-op average for one process."""
    buf = torch.stack([s.detach().double().reshape(()) for s in stats])
    dist.all_reduce_mean_([p.grad for p in params] + [buf])
    return buf.tolist()


def adversarial_weight(cfg: DistillConfig, step: int) -> float:
    """The adversarial loss's weight at iteration ``step`` (1-based): ``disc_weight * min(1, step / (disc_ramp *
    iters))``, or ``disc_weight`` when ``disc_ramp`` is 0."""
    return cfg.disc_weight * (min(1.0, step / (cfg.disc_ramp * cfg.iters)) if cfg.disc_ramp > 0 else 1.0)


def discriminator_step(ctx: StepContext, run: RunState, batch: Batch) -> dict[str, float]:
    """One Adam step of the discriminator against the student's samples of fresh noise (of the batch's own noises
    when ``disc_fake`` is "paired"); returns its stats. The R1 + R2 penalty applies on every ``r1_every``-th
    discriminator step (the first included), weighted ``r1_every`` times."""
    assert run.disc is not None and run.disc_opt is not None
    prob, cfg = ctx.problem, ctx.config
    fake_init = start_state(prob, batch.noise if cfg.disc_fake == "paired" else batch.fake_noise(cfg), ctx.s0)
    fake = run_student(prob, run.solver, fake_init, batch.cond, autocast=ctx.autocast, differentiable=False)
    run.disc.requires_grad_(True)
    d_steps_before = (run.step - 1) // cfg.disc_every  # this is discriminator step d_steps_before + 1
    gamma = cfg.r1_gamma * cfg.r1_every if d_steps_before % cfg.r1_every == 0 else 0.0
    d_loss_ps, parts = discriminator_loss(run.disc, batch.real, fake, gamma)
    d_loss = d_loss_ps.mean()
    run.disc_opt.zero_grad(set_to_none=True)
    if ctx.dist.distributed or torch.isfinite(d_loss):
        d_loss.backward()
    d_val, r1, r2 = _reduce(ctx.dist, list(run.disc.parameters()), [d_loss, parts["r1"].mean(), parts["r2"].mean()])
    if not math.isfinite(d_val):
        raise NonFiniteError("discriminator loss", d_val)
    run.disc_opt.step()
    run.disc.requires_grad_(False)
    return {"d_loss": d_val, "r1": r1, "r2": r2}


def solver_step(ctx: StepContext, run: RunState, batch: Batch) -> dict[str, float]:
    """One Adam step of the solver on the batch (plus the EMA update); returns its stats."""
    prob, cfg = ctx.problem, ctx.config
    x_init = start_state(prob, batch.noise, ctx.s0)
    states: list[tuple[torch.Tensor, torch.Tensor]] | None = [] if batch.states is not None else None
    out = run_student(prob, run.solver, x_init, batch.cond, autocast=ctx.autocast, differentiable=True,
                      grad_checkpoint=cfg.grad_checkpoint, states=states)
    if cfg.loss == "l1":
        dist_loss = l1_latents(out, batch.real)
    else:
        assert prob.decode is not None and ctx.lpips is not None
        with torch.no_grad():
            target = prob.decode(batch.real).float()
        dist_loss = lpips_images(ctx.lpips, prob.decode(out).float(), target)
    scale = None
    if cfg.loss_reduce == "cauchy":  # the median of the global batch, the same on every rank
        scale = ctx.dist.all_gather_rows(dist_loss.detach().float().reshape(-1, 1)).median()
    total = reduce_distances(dist_loss, cfg.loss_reduce, scale, cfg.cauchy_scale)
    parts = [dist_loss.detach().mean()]
    if batch.states is not None:
        assert states is not None and ctx.state_sigmas is not None
        state_dist = state_distances(prob.schedule, states, batch.states, ctx.state_sigmas)
        total = total + state_weight(cfg.state_loss, cfg.state_anneal, run.step, cfg.iters) * state_dist
        parts.append(state_dist.detach().mean())
    if run.disc is not None:
        adv = generator_adversarial_loss(run.disc, batch.real, out)
        total = total + adversarial_weight(cfg, run.step) * adv
        parts.append(adv.detach().mean())
    loss = total.mean()
    run.opt.zero_grad(set_to_none=True)
    if ctx.dist.distributed or torch.isfinite(loss):  # one process: never backpropagate a NaN
        (run.scaler.scale(loss) if run.scaler is not None else loss).backward()
    reduced = _reduce(ctx.dist, run.params, [loss, *parts])
    if not math.isfinite(reduced[0]):
        raise NonFiniteError("loss", reduced[0])
    clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
    for group in run.opt.param_groups:  # exactly cfg.lr for the paper's constant schedule
        group["lr"] = learning_rate(cfg, run.step) * group.get("lr_scale", 1.0)
    if run.scaler is not None:
        run.scaler.unscale_(run.opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(run.params, clip)
        run.scaler.step(run.opt)
        run.scaler.update()
    else:
        grad_norm = torch.nn.utils.clip_grad_norm_(run.params, clip)
        if not torch.isfinite(grad_norm):
            raise NonFiniteError("gradient norm", float(grad_norm))
        run.opt.step()
    run.ema.update(run.params)
    stats = {"state": reduced[2]} if batch.states is not None else {}
    if run.disc is not None:
        stats["adv"] = reduced[-1]
    stats.update(loss=reduced[0], distill=reduced[1], grad_norm=float(grad_norm))
    return stats
