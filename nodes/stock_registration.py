"""The sampler ``gas`` and the scheduler ``gas`` in ComfyUI's own lists (KSampler, KSamplerAdvanced, KSamplerSelect,
BasicScheduler and every node reading those lists).

ComfyUI 0.3.64 has no registration call for samplers: ``comfy.samplers.ksampler(name)`` looks up
``comfy.k_diffusion.sampling.sample_<name>``, and the dropdowns read ``comfy.samplers.KSAMPLER_NAMES`` /
``SAMPLER_NAMES`` (``KSampler.SAMPLERS`` is the same list object). Schedulers have a registry:
``SCHEDULER_HANDLERS[name] = SchedulerHandler(fn)`` plus ``SCHEDULER_NAMES`` (``KSampler.SCHEDULERS``). :func:`register`
adds one function and one handler under the new name ``gas`` and appends the name to those lists in place; it
replaces and wraps nothing of ComfyUI's, and running it again adds nothing twice.

A scheduler sees only ``model_sampling`` and the step count, and a sampler only ``extra_args``; so GAS Model Patch
(:func:`attach`) puts the solver file on the MODEL twice: on a copy of its ``model_sampling`` (an object patch, for
the scheduler) and in its ``model_options`` (which reach the sampler as ``extra_args["model_options"]``).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch

from . import logic, solver_choice
from .grid import sampling_sigmas
from .sampler_function import SamplerSpec, sample_gas_in_comfy

log = logging.getLogger(__name__)

NAME = solver_choice.STOCK_NAME
#: Key in ``model_options`` and attribute of the patched ``model_sampling`` that hold the :class:`GASPatch`.
PATCH_KEY = "gas_solver"
#: Set on the functions registered by this pack, so that a second load recognises its own entries.
MARKER = "_comfyui_gas"


@dataclass(frozen=True, eq=False)
class GASPatch:
    """A solver file attached to a MODEL: the loaded :class:`gas.SolverSet` (None for the no-solver entry) and its
    dropdown name. Immutable, so
    ComfyUI's deep copies of ``model_options`` (on every ``ModelPatcher.clone``) share it."""

    solvers: Any
    name: str

    def __deepcopy__(self, memo: dict[int, Any]) -> GASPatch:
        return self


def patch_of(obj: Any) -> Any:
    """The GAS patch a ``model_sampling`` object or a ``model_options`` dict carries, or None."""
    found = obj.get(PATCH_KEY) if isinstance(obj, dict) else getattr(obj, PATCH_KEY, None)
    return found if hasattr(found, "solvers") and hasattr(found, "name") else None


def _carrier(model_sampling: torch.nn.Module, patch: GASPatch | None) -> torch.nn.Module:
    """A shallow copy of ``model_sampling`` (its own module dicts, the same tensors) carrying ``patch``."""
    carrier = copy.copy(model_sampling)
    for slot in ("_parameters", "_buffers", "_modules"):
        if isinstance(getattr(model_sampling, slot, None), dict):
            object.__setattr__(carrier, slot, type(getattr(model_sampling, slot))(getattr(model_sampling, slot)))
    carrier.__dict__[PATCH_KEY] = patch
    return carrier


def attach(model: Any, patch: GASPatch | None) -> Any:
    """A clone of the ComfyUI MODEL ``model`` carrying ``patch`` (None: carrying none); ``model`` is not modified."""
    clone = model.clone()
    clone.add_object_patch("model_sampling", _carrier(clone.get_model_object("model_sampling"), patch))
    if patch is None:
        clone.model_options.pop(PATCH_KEY, None)
    else:
        clone.model_options[PATCH_KEY] = patch
    return clone


def gas_scheduler(model_sampling: Any, steps: int) -> torch.Tensor:
    """Scheduler ``gas``: the patched solver file's grid for ``steps`` steps (its learned solver's grid for an NFE it
    holds, the resampled nearest grid otherwise; a patch with no solver: uniform GAS times, an untrained solver's
    grid); no trailing 0 (a learned solver stops at its last sigma)."""
    patch = patch_of(model_sampling)
    if patch is None:
        raise logic.GASNodeError(solver_choice.NOT_PATCHED)
    return sampling_sigmas(model_sampling, patch.solvers, patch.name, int(steps), 1.0)


def sample_gas(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict[str, Any] | None = None,
               callback: Any = None, disable: bool | None = None) -> torch.Tensor:
    """Sampler ``gas``: on a model with GAS Model Patch, its learned solver for the scheduler ``gas`` sigmas;
    without the patch, DPM-Solver++(3M) on any sigmas (as GAS Sampler's no-solver entry). Runs without autograd
    (inside :func:`sample_gas_in_comfy`, after the checks, so a refusal's traceback holds no torch frame)."""
    patch = patch_of((extra_args or {}).get("model_options") or {})
    if patch is None or patch.solvers is None:
        spec = SamplerSpec(None)
    else:
        spec = SamplerSpec(None, patch.name, patch.solvers, stock=True)
    return sample_gas_in_comfy(model, x, sigmas, extra_args, callback, disable, gas=spec)


setattr(gas_scheduler, MARKER, True)
setattr(sample_gas, MARKER, True)


def _lists(*candidates: list[str]) -> list[list[str]]:
    """The distinct list objects among ``candidates`` (``KSampler.SAMPLERS`` is ``SAMPLER_NAMES`` in 0.3.64)."""
    seen: list[list[str]] = []
    for names in candidates:
        if isinstance(names, list) and not any(names is other for other in seen):
            seen.append(names)
    return seen


def register() -> None:
    """Add sampler ``gas`` and scheduler ``gas`` to ComfyUI's lists (idempotent). A ``gas`` entry another pack
    registered is left alone, with one warning."""
    import comfy.samplers as samplers
    from comfy.k_diffusion import sampling as k_sampling

    current = getattr(k_sampling, f"sample_{NAME}", None)
    if current is None or getattr(current, MARKER, False):
        setattr(k_sampling, f"sample_{NAME}", sample_gas)
    else:
        log.warning("[GAS] another node pack already defines a sampler named '%s'; GAS leaves it in place", NAME)
    for names in _lists(samplers.KSAMPLER_NAMES, samplers.SAMPLER_NAMES, samplers.KSampler.SAMPLERS):
        if NAME not in names:
            names.append(NAME)

    handler = samplers.SCHEDULER_HANDLERS.get(NAME)
    if handler is None or getattr(handler.handler, MARKER, False):
        samplers.SCHEDULER_HANDLERS[NAME] = samplers.SchedulerHandler(gas_scheduler)
    else:
        log.warning("[GAS] another node pack already defines a scheduler named '%s'; GAS leaves it in place", NAME)
    for names in _lists(samplers.SCHEDULER_NAMES, samplers.KSampler.SCHEDULERS):
        if NAME not in names:
            names.append(NAME)
