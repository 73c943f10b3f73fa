"""What the distillation loop needs from a model: the :class:`DistillProblem` every adapter provides.

Adapters (the ComfyUI checkpoint loader, the built-in demo, a Python user's own model) build one of these; the loop in
:mod:`trainer.distill` knows nothing else about the model.

Contract
--------
* ``denoiser(x, sigma, **cond) -> x0``: k-diffusion convention. ``x`` is the sigma-space state ``[B, *latent_shape]``
  (``x0 + s*eps`` for VE/EPS models, ``(1-s)*x0 + s*eps`` for flow models), ``sigma`` a ``[B]`` tensor, ``cond`` the
  batched keyword arguments from ``conditions``; classifier-free guidance happens inside. It must be differentiable in
  ``x`` (and in ``sigma`` where the network sees the continuous time of ``sigma``), and must not run under
  ``torch.no_grad``/``inference_mode``; the loop freezes nothing for the adapter (freeze your weights).
* ``conditions(indices)``: the conditioning of the given sample indices, batched along dim 0, on ``device``. Sample
  ``i``'s conditioning must be a pure function of ``i`` (the teacher cache and resuming rely on it). Indices from
  :data:`VALIDATION_OFFSET` up are the held-out samples: an adapter with held-out prompts uses them there.
* ``decoupled`` / ``timestep_hook``: how a solver's shifted network time reaches the network (see
  :func:`gas.sample_gas`). ``"resigma"`` (default) needs nothing; ``"timestep"`` needs a hook that makes the *next*
  denoiser call see the network timestep of the GAS time it is given (a 0-dim float64 tensor that may require grad).
  Under gradient checkpointing the hook is called again, with the same time, right before the recomputed call.
* ``identity``: JSON-able description of everything the teacher's output depends on besides the teacher settings:
  model family, prediction type, file name and sha256 of the file, CFG scale, prompts (or their hash), negative
  prompt, resolution, ... It keys the teacher cache and goes into the solver file's metadata.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from gas import NoiseSchedule
from gas.sampling import DECOUPLED_MODES

from .errors import ProblemError

__all__ = ["VALIDATION_OFFSET", "DistillProblem", "ProblemError"]  # ProblemError: from trainer.errors

#: Held-out sample indices are ``VALIDATION_OFFSET + j`` (``j = 0..val_size-1``), so their seeds never meet training's.
VALIDATION_OFFSET = 1 << 20


@dataclass
class DistillProblem:
    """A frozen model seen as a k-diffusion denoiser plus everything the loop needs around it."""

    #: ``(x, sigma, **cond) -> x0`` with CFG inside.
    denoiser: Callable[..., torch.Tensor]
    #: The model's noise schedule; it must have a GAS time map (``schedule.has_time``).
    schedule: NoiseSchedule
    #: Shape of one latent ``(C, H, W)`` (any number of dims works; GAS's discriminator wants ``(C, H, W)`` or
    #: ``(C, T, H, W)``).
    latent_shape: tuple[int, ...]
    #: ``indices -> dict`` of batched keyword arguments for ``denoiser``.
    conditions: Callable[[list[int]], dict[str, torch.Tensor]]
    #: Optional ``latents -> images`` in ``[-1, 1]``, ``[B, 3, H, W]`` (LPIPS loss/metric and the report grid).
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None
    #: ``"resigma"`` or ``"timestep"`` (see the module docstring).
    decoupled: str = "resigma"
    #: Needed for ``decoupled="timestep"``.
    timestep_hook: Callable[[torch.Tensor], None] | None = None
    #: Device of the model; latents and conditions live there.
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: dtype of the latents handed to the denoiser (the solver itself works in float32/float64).
    dtype: torch.dtype = torch.float32
    #: JSON-able model description (cache key and solver metadata).
    identity: dict[str, Any] = field(default_factory=dict)
    #: Base of the output file name, ``<name>-nfe<N>-<mode>.safetensors``.
    name: str = "model"
    #: CFG scale used inside ``denoiser`` (recorded in the solver file; None when there is no guidance).
    cfg: float | None = None
    #: Human description of the model and its conditioning (report).
    description: str = ""
    #: Optional ``steps -> sigmas`` of a GITS schedule for this model (``steps + 1`` values, decreasing); used by the
    #: ``ipndm-gits`` teacher. Without it the teacher searches a GITS-style grid itself (:mod:`trainer.gits`).
    gits_sigmas: Callable[[int], Sequence[float]] | None = None
    #: Free-form extra metadata for the solver file (e.g. the prompts file name).
    extra_metadata: dict[str, Any] = field(default_factory=dict)
    #: Optional ``(latents, indices) -> per-sample negative log-likelihood per dimension`` of end states under the
    #: known data distribution (analytic problems only, e.g. the demo). Evaluation then reports "NLL excess": the
    #: mean of ``nll(method) - nll(teacher)`` over held-out samples, a sample-realism score.
    sample_nll: Callable[[torch.Tensor, list[int]], torch.Tensor] | None = None

    def validate(self) -> None:
        """Raise :class:`ProblemError` on an inconsistent problem (checked before any work starts)."""
        if not callable(self.denoiser):
            raise ProblemError("the denoiser is not callable")
        if not callable(self.conditions):
            raise ProblemError("conditions must be a function of a list of sample indices")
        if not isinstance(self.schedule, NoiseSchedule) or not self.schedule.has_time:
            raise ProblemError(f"the noise schedule {self.schedule!r} has no GAS time map, so no solver can be learned "
                               "for it (use gas.DiscreteVPSchedule or gas.FlowSchedule)")
        shape = tuple(self.latent_shape)
        if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
            raise ProblemError(f"latent_shape must be positive integers, got {self.latent_shape!r}")
        if self.decoupled not in DECOUPLED_MODES:
            raise ProblemError(f"decoupled must be one of {DECOUPLED_MODES}, got {self.decoupled!r}")
        if self.decoupled == "timestep" and self.timestep_hook is None:
            raise ProblemError("decoupled='timestep' needs a timestep_hook")
        if not self.name or any(ch in self.name for ch in '/\\:*?"<>|'):
            raise ProblemError(f"the model name {self.name!r} cannot be part of a file name")
