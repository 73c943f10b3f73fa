"""The k-diffusion-style sampler function behind GAS Sampler and GAS KSampler, wrapped in ``comfy.samplers.KSAMPLER``.

ComfyUI's KSAMPLER scales the noise for ``sigmas[0]``, wraps the callback (progress bar, latent previews, the
``denoised_output`` of SamplerCustom) and applies ``inverse_noise_scaling`` to the result; this function adds what a
learned solver needs around :func:`gas.sample_gas`:

1. the model's schedule, family and weights fingerprint from ``model.inner_model.inner_model`` (the ``BaseModel``
   behind the guider), checked against the solver file: a mismatch raises :class:`GASNodeError` (one sentence)
   before any network call; a different cfg, distilled guidance (Flux dev), flow shift or checkpoint is logged as a
   warning;
2. the sigmas located in the solver file's grids (:mod:`solver_choice`): the whole grid of an NFE it holds runs
   that learned solver; any other run of one of its grids (an img2img tail, KSamplerAdvanced's start/end steps, a
   resampled grid) runs as DPM-Solver++(3M) on those sigmas, logged; sigmas from no grid are refused;
3. for discrete-schedule (SD) models, the float-timestep wrapper in a *copy* of ``extra_args["model_options"]``,
   so the network sees ``1000*t - 1`` of each GAS time instead of ComfyUI's rounded integer timestep.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import comfy.samplers
import torch

from . import logic, solver_choice
from ._gas import comfy_bridge, core
from .errors import GASNodeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplerSpec:
    """What a GAS SAMPLER carries: the solver to run (None: DPM-Solver++(3M)) and its dropdown name for messages;
    or ``solvers``, a whole solver file (:class:`gas.SolverSet`) whose solver is picked by the sigmas it gets
    (``stock``: for the sampler ``gas`` of ComfyUI's lists, whose messages name scheduler ``gas``)."""

    solver: core.GeneralizedSolver | None
    name: str = logic.NO_SOLVER
    solvers: core.SolverSet | None = None
    stock: bool = False


def build_sampler(solvers: core.SolverSet | core.GeneralizedSolver | None,
                  name: str = logic.NO_SOLVER) -> comfy.samplers.KSAMPLER:
    """A ComfyUI SAMPLER running the solver file ``solvers`` (its solver for the sigmas' NFE; DPM-Solver++(3M) when
    None)."""
    spec = SamplerSpec(None, name, solver_choice.solver_set_of(solvers))
    return comfy.samplers.KSAMPLER(sample_gas_in_comfy, extra_options={"gas": spec})


def _pick(spec: SamplerSpec, info: comfy_bridge.SamplingInfo, base: Any, sigmas: torch.Tensor) -> SamplerSpec:
    """The solver of a solver file for these sigmas: its learned solver when they are that NFE's whole grid, else
    None (DPM-Solver++(3M) on them, logged). The file must fit the model (family check first)."""
    assert spec.solvers is not None
    solver = solver_choice.representative(spec.solvers)
    verdict = logic.compatibility(solver, spec.name, info, comfy_bridge.model_identity(base, fingerprint=False))
    if verdict.error is not None:
        raise logic.GASNodeError(verdict.error)
    schedule = logic.effective_schedule(solver, info)
    picked, note = solver_choice.pick_for_sigmas(spec.solvers, sigmas, schedule, spec.name, stock=spec.stock)
    if note is not None:
        log.warning("[GAS] %s", note)
    return SamplerSpec(picked, spec.name)


def _guider_cfg(guider: Any) -> float | None:
    """The CFG scale of a ``CFGGuider`` (None for guiders with several scales, e.g. DualCFGGuider)."""
    if guider is None or hasattr(guider, "cfg1"):
        return None
    cfg = getattr(guider, "cfg", None)
    return float(cfg) if isinstance(cfg, (int, float)) and not isinstance(cfg, bool) else None


def _guider_guidance(guider: Any) -> float | None:
    """The distilled guidance (Flux dev) in the guider's positive conditioning, as ComfyUI processed it."""
    conds = getattr(guider, "conds", None)
    return logic.conditioning_guidance(conds.get("positive")) if isinstance(conds, dict) else None


def _check_solver(spec: SamplerSpec, info: comfy_bridge.SamplingInfo, base: Any, guider: Any,
                  schedule: core.NoiseSchedule, sigmas: torch.Tensor) -> None:
    """Refuse (GASNodeError) or warn before sampling with a learned solver."""
    solver = spec.solver
    assert solver is not None
    verdict = logic.compatibility(solver, spec.name, info, comfy_bridge.model_identity(base))
    if verdict.error is not None:
        raise GASNodeError(verdict.error)
    for message in verdict.warnings:
        log.warning("[GAS] %s", message)
    for message in (logic.cfg_warning(solver, spec.name, _guider_cfg(guider)),
                    logic.guidance_warning(solver, spec.name, _guider_guidance(guider)),
                    logic.shift_warning(solver, spec.name, info)):
        if message is not None:
            log.warning("[GAS] %s", message)


def sample_gas_in_comfy(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict[str, Any] | None = None,
                        callback: Any = None, disable: bool | None = None, gas: SamplerSpec | None = None
                        ) -> torch.Tensor:
    """KSAMPLER sampler function: ``model`` is ComfyUI's ``KSamplerX0Inpaint`` around the guider. Inference only
    (no autograd); the checks run before, so a refusal's traceback holds no torch frame."""
    spec = gas if gas is not None else SamplerSpec(None)
    guider = getattr(model, "inner_model", None)
    base = getattr(guider, "inner_model", None)
    if base is None or not hasattr(base, "model_sampling"):
        raise GASNodeError("the GAS sampler must be run by ComfyUI's samplers (SamplerCustom, "
                           "SamplerCustomAdvanced or GAS KSampler)")
    info = comfy_bridge.describe_model_sampling(base.model_sampling)
    if spec.solvers is not None:
        spec = _pick(spec, info, base, sigmas)
    schedule = logic.effective_schedule(spec.solver, info)
    if spec.solver is not None:
        _check_solver(spec, info, base, guider, schedule, sigmas)

    extra = dict(extra_args or {})
    override = None
    if info.float_timesteps and schedule.has_time:
        override = comfy_bridge.FloatTimestepOverride(schedule, label=f"GAS {spec.name}")
        extra["model_options"] = override.install(extra.get("model_options"))
    decoupled = comfy_bridge.decoupled_mode(info) if spec.solver is not None else "resigma"
    try:
        with torch.no_grad():
            return core.sample_gas(model, x, sigmas, extra, callback, disable, spec.solver, schedule=schedule,
                                   decoupled=decoupled, timestep_hook=override.hook if override else None)
    finally:
        if override is not None:
            override.finish()
