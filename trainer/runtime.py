"""Running the student: the model-call wrapper (autocast, per-call gradient checkpointing) around ``gas.sample_gas``.

The student is exactly the inference sampler, ``gas.sample_gas(denoiser, x, solver.sigmas(schedule), solver=solver,
differentiable=True)``, started from ``schedule.initial_state(noise, s_0)``. With gradient checkpointing each of the
N model calls runs under ``torch.utils.checkpoint.checkpoint(use_reentrant=False)``: only its inputs are kept and
the call is recomputed during the backward pass, so activation memory does not grow with N. The GAS time a
``timestep_hook`` sets is passed to the checkpointed function as an argument and set again before the recomputation
(shared state read at recompute time would otherwise hold the last call's time).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from gas import GeneralizedSolver, sample_gas

from .problem import DistillProblem

__all__ = ["Autocast", "ModelCaller", "resolve_amp", "run_student", "start_state"]


class Autocast:
    """A reusable autocast context factory for the model calls (a no-op when ``dtype`` is None)."""

    def __init__(self, device: torch.device, dtype: torch.dtype | None) -> None:
        self.device, self.dtype = device, dtype

    def __call__(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @property
    def name(self) -> str:
        return "off" if self.dtype is None else str(self.dtype).replace("torch.", "")


def resolve_amp(amp: str, device: torch.device) -> Autocast:
    """``auto``: bf16 on CUDA when supported, else fp16; off on other devices. ``bf16``/``fp16`` only act on CUDA."""
    if device.type != "cuda" or amp == "off":
        return Autocast(device, None)
    if amp == "auto":
        return Autocast(device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return Autocast(device, torch.bfloat16 if amp == "bf16" else torch.float16)


class ModelCaller:
    """``(x, sigma, **cond) -> x0`` around the problem's denoiser, with autocast and optional checkpointing."""

    def __init__(self, problem: DistillProblem, autocast: Autocast, grad_checkpoint: bool) -> None:
        self.problem = problem
        self.autocast = autocast
        self.grad_checkpoint = grad_checkpoint
        self.time: torch.Tensor | None = None

    def hook(self, t: torch.Tensor) -> None:
        """``timestep_hook`` for ``sample_gas``: remember the GAS time of the next call."""
        self.time = t

    def _run(self, x: torch.Tensor, sigma: torch.Tensor, t: torch.Tensor | None, **cond: Any) -> torch.Tensor:
        if t is not None and self.problem.timestep_hook is not None:
            self.problem.timestep_hook(t)
        with self.autocast():
            return self.problem.denoiser(x, sigma, **cond)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **cond: Any) -> torch.Tensor:
        t, self.time = self.time, None
        if self.grad_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._run, x, sigma, t, use_reentrant=False, **cond)
        return self._run(x, sigma, t, **cond)


def start_state(problem: DistillProblem, noise: torch.Tensor, s0: float) -> torch.Tensor:
    """The solver's start state at ``s0`` from unit noise, on the problem's device and latent dtype."""
    return problem.schedule.initial_state(noise.to(problem.device), s0).to(problem.dtype)


def run_student(problem: DistillProblem, solver: GeneralizedSolver, x_init: torch.Tensor, cond: dict[str, Any], *,
                autocast: Autocast, differentiable: bool, grad_checkpoint: bool = True,
                states: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
    """The solver's end state (float32) from ``x_init``; differentiable in the solver parameters if asked.
    ``states``: a list that receives the intermediate states and their sigmas ``(x_k, s_k)``, k = 1 .. N-1."""
    caller = ModelCaller(problem, autocast, grad_checkpoint and differentiable)
    hook: Callable[[torch.Tensor], None] | None = caller.hook if problem.timestep_hook is not None else None
    with torch.set_grad_enabled(differentiable):
        sigmas = solver.sigmas(problem.schedule)
        if not differentiable:
            sigmas = sigmas.detach()
        record = None
        if states is not None:
            def record(info: dict[str, Any]) -> None:
                if info["i"] > 0:
                    states.append((info["x"], info["sigma"]))
        out = sample_gas(caller, x_init, sigmas, extra_args=cond, callback=record, disable=True, solver=solver,
                         schedule=problem.schedule, decoupled=problem.decoupled, timestep_hook=hook,
                         differentiable=differentiable)
    return out.float()
