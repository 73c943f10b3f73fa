"""Bridge between ComfyUI's model objects and the GAS core; shared by the node pack and the trainer's ComfyUI adapter.

This is the only module of ``gas`` that touches ComfyUI, and only lazily (the layering rule of :mod:`gas`): every
``comfy`` import happens inside a function, so the module loads (and its ComfyUI-free parts work) in an environment
without ComfyUI.

* :func:`describe_model_sampling` / :func:`schedule_from_model_sampling`: a ComfyUI ``model_sampling`` object as a
  :class:`gas.NoiseSchedule`, plus the prediction type and whether learned solvers support it.
* :func:`model_identity`: the model's family (``model_config`` class name), prediction type and a weights
  fingerprint, as recorded in solver files and compared when sampling.
* :class:`FloatTimestepOverride`: makes a discrete-schedule network (SD1.x/SD2.x/SDXL UNet) see the continuous float
  timestep of a GAS time instead of ComfyUI's rounded integer timestep, through ComfyUI's ``DIFFUSION_MODEL``
  wrapper mechanism (never by patching ComfyUI's modules).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from .errors import ScheduleError
from .schedules import DiscreteVPSchedule, FlowSchedule, NoiseSchedule, VESigmaSpace

__all__ = [
    "WRAPPER_KEY",
    "FloatTimestepOverride",
    "SamplingInfo",
    "decoupled_mode",
    "describe_model_sampling",
    "fingerprint_state_dict",
    "model_identity",
    "schedule_from_model_sampling",
    "weights_fingerprint",
]

log = logging.getLogger(__name__)

#: Key under which the float-timestep wrapper is registered in ``transformer_options["wrappers"]``.
WRAPPER_KEY = "gas_float_timestep"
#: Relative tolerance when recognising ComfyUI's float32 sigma table as the exact linear-beta schedule.
_TABLE_RTOL = 2e-6


@dataclass(frozen=True)
class SamplingInfo:
    """What the GAS core needs to know about one ComfyUI ``model_sampling`` object.

    * ``schedule``: the noise schedule in GAS terms (``VESigmaSpace`` when there is no GAS time map).
    * ``prediction``: ``"eps"``, ``"v"``, ``"flow"``, ``"edm"``, ``"x0"`` or ``"other"``.
    * ``kind``: ``"discrete"`` (SD1.x/SD2.x/SDXL schedule), ``"flow"`` (SD3/Flux/...) or ``"other"``.
    * ``learned_ok``: whether a learned solver can run on it; otherwise ``reason`` says why, in one sentence.
    * ``float_timesteps``: whether the network should get float timesteps through :class:`FloatTimestepOverride`
      (discrete schedules, whose ComfyUI timestep is a rounded integer).
    """

    schedule: NoiseSchedule
    prediction: str
    kind: str
    learned_ok: bool
    reason: str | None = None
    float_timesteps: bool = False
    description: str = ""


def _prediction(ms: Any) -> str:
    import comfy.model_sampling as cms

    if isinstance(ms, cms.CONST):
        return "flow"
    if isinstance(ms, cms.EDM):
        return "edm"
    x0_types = tuple(getattr(cms, name) for name in ("X0", "IMG_TO_IMG") if hasattr(cms, name))
    if x0_types and isinstance(ms, x0_types):
        return "x0"
    if isinstance(ms, cms.V_PREDICTION):
        return "v"
    if isinstance(ms, cms.EPS):
        return "eps"
    return "other"


def _plain(ms: Any, base: type, methods: tuple[str, ...] = ("timestep", "sigma")) -> bool:
    """True when ``ms`` is a ``base`` whose time maps are ``base``'s own (not a subclass such as LCM's)."""
    return isinstance(ms, base) and all(getattr(type(ms), m, None) is getattr(base, m) for m in methods)


def _discrete_schedule(ms: Any) -> DiscreteVPSchedule:
    """The exact float64 linear-beta schedule when ComfyUI's table is that schedule, else the table itself."""
    table = torch.as_tensor(ms.sigmas).detach().to("cpu", torch.float64).flatten()
    start, end = getattr(ms, "linear_start", None), getattr(ms, "linear_end", None)
    steps = int(getattr(ms, "num_timesteps", table.numel()))
    if isinstance(start, (int, float)) and isinstance(end, (int, float)) and steps == table.numel():
        try:
            exact = DiscreteVPSchedule.sd_linear(float(start), float(end), steps)
        except ScheduleError:
            exact = None
        if exact is not None:
            exact_sigmas = torch.sqrt(1.0 / exact.alphas_cumprod - 1.0).to(torch.float32).to(torch.float64)
            if torch.allclose(exact_sigmas, table, rtol=_TABLE_RTOL, atol=0.0):
                return exact
    return DiscreteVPSchedule.from_sigmas(table)


def describe_model_sampling(ms: Any) -> SamplingInfo:
    """Classify a ComfyUI ``model_sampling`` object (``model.get_model_object("model_sampling")``).

    * ``ModelSamplingDiscrete`` with EPS or V_PREDICTION: :class:`gas.DiscreteVPSchedule` (the exact float64
      ``sd_linear`` schedule when ComfyUI's table is the linear-beta one, else built from the table). A
      zero-terminal-SNR table (``zsnr``) works without a solver but is refused for learned solvers.
    * CONST with ``ModelSamplingDiscreteFlow`` (SD3, AuraFlow, Wan, ...): :class:`gas.FlowSchedule` with its shift and
      multiplier. CONST with ``ModelSamplingFlux``: ``FlowSchedule(exp(shift), 1)``, since
      ``flux_time_shift(mu, 1, t)`` equals ``time_snr_shift(exp(mu), t)`` and Flux's timestep is sigma itself.
    * Anything else (EDM, LCM-distilled, X0, other CONST schedules, ...): usable without a solver only.
    """
    import comfy.model_sampling as cms

    prediction = _prediction(ms)
    name = next((c.__name__ for c in type(ms).__mro__[1:]
                 if issubclass(c, torch.nn.Module) and c.__module__.startswith("comfy")), type(ms).__name__)
    unsupported = "learned GAS solvers are not supported for this model family"
    if _plain(ms, cms.ModelSamplingDiscrete) and prediction in ("eps", "v"):
        try:
            schedule: NoiseSchedule = _discrete_schedule(ms)
        except ScheduleError as exc:
            return SamplingInfo(VESigmaSpace(), prediction, "other", False,
                                f"this model's discrete noise table is unusual ({exc}); {unsupported}")
        if getattr(ms, "zsnr", False):
            return SamplingInfo(schedule, prediction, "discrete", False,
                                "this model uses a zero-terminal-SNR schedule (zsnr); learned GAS solvers are trained "
                                "on the standard discrete schedule and are not supported for it",
                                float_timesteps=True, description=f"{schedule.describe()}, zsnr")
        return SamplingInfo(schedule, prediction, "discrete", True, float_timesteps=True,
                            description=schedule.describe())
    if prediction == "flow":
        if _plain(ms, cms.ModelSamplingDiscreteFlow):
            schedule = FlowSchedule(float(ms.shift), float(ms.multiplier))
            return SamplingInfo(schedule, prediction, "flow", True, description=schedule.describe())
        if hasattr(cms, "ModelSamplingFlux") and _plain(ms, cms.ModelSamplingFlux):
            schedule = FlowSchedule(math.exp(float(ms.shift)), 1.0)
            return SamplingInfo(schedule, prediction, "flow", True, description=schedule.describe())
        return SamplingInfo(FlowSchedule(1.0), prediction, "other", False,
                            f"its flow schedule ({name}) has no GAS time map; {unsupported}")
    return SamplingInfo(VESigmaSpace(), prediction, "other", False,
                        f"its noise schedule ({name}, {prediction} prediction) is not one GAS solvers are trained on; "
                        f"{unsupported}")


def schedule_from_model_sampling(ms: Any) -> NoiseSchedule:
    """The :class:`gas.NoiseSchedule` of a ComfyUI ``model_sampling`` object (see :func:`describe_model_sampling`)."""
    return describe_model_sampling(ms).schedule


def decoupled_mode(info: SamplingInfo) -> str:
    """How a solver's shifted network time reaches the network (see :func:`gas.sample_gas`).

    ``"timestep"`` for eps-prediction discrete models (the authors' semantics, exact: the model is called at the state
    sigma and only the UNet timestep moves); ``"resigma"`` for V-prediction and flow models (call at the shifted sigma
    and re-derive the data prediction at the state sigma).
    """
    return "timestep" if info.kind == "discrete" and info.prediction == "eps" else "resigma"


def _base_model(model: Any) -> Any:
    """The ``BaseModel`` of a ``ModelPatcher`` (``.model``) or the object itself."""
    inner = getattr(model, "model", None)
    return inner if inner is not None and hasattr(inner, "diffusion_model") else model


def _model_sampling(model: Any) -> Any:
    getter = getattr(model, "get_model_object", None)
    if callable(getter):
        return getter("model_sampling")
    return _base_model(model).model_sampling


def fingerprint_state_dict(state: Mapping[str, torch.Tensor], samples: int = 1024) -> str | None:
    """A short hash identifying a network's weights, stable across fp16/fp32 loading: the name, shape and ``samples``
    evenly spaced values (rounded to float16) of every floating-point tensor of ``state``, so a LoRA or any other
    patch of any layer changes it. ``state`` is the diffusion model's state dict (a checkpoint's
    ``model.diffusion_model.*`` tensors with that prefix removed give the same value). The values are gathered on the
    weights' device and copied once. None when the weights cannot be read that way."""
    try:
        names = sorted(k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point())
        if not names:
            return None
        digest = hashlib.sha256()
        picked = []
        for name in names:
            value = state[name].detach()
            digest.update(f"{name}|{list(value.shape)}|".encode())
            flat = value.reshape(-1)
            stride = max(1, flat.numel() // samples)
            picked.append(flat[::stride][:samples].to(torch.float16))
        device = picked[0].device
        values = torch.cat([p.to(device) for p in picked]).cpu().contiguous()
        digest.update(values.numpy().tobytes())
        return "w16s-" + digest.hexdigest()[:24]
    except Exception:  # exotic weight types: no fingerprint rather than a failure
        return None


def weights_fingerprint(module: torch.nn.Module) -> str | None:
    """:func:`fingerprint_state_dict` of a network's current weights (None for quantized or meta weights)."""
    try:
        return fingerprint_state_dict(module.state_dict())
    except Exception:
        return None


def model_identity(model: Any, *, fingerprint: bool = True) -> dict[str, Any]:
    """JSON-able identity of a ComfyUI model (a ``ModelPatcher`` or a ``BaseModel``).

    ``{"family": model_config class name (SD15, SD20, SDXL, SD3, Flux, ...), "prediction": eps|v|flow|...,
    "fingerprint": weights_fingerprint(diffusion_model)}``. The trainer adds the checkpoint's file name and sha256.
    """
    base = _base_model(model)
    config = getattr(base, "model_config", None)
    identity: dict[str, Any] = {
        "family": type(config).__name__ if config is not None else None,
        "prediction": describe_model_sampling(_model_sampling(model)).prediction,
    }
    if fingerprint:
        network = getattr(base, "diffusion_model", None)
        identity["fingerprint"] = weights_fingerprint(network) if isinstance(network, torch.nn.Module) else None
    return identity


class FloatTimestepOverride:
    """Feed a discrete-schedule network the float timestep ``schedule.network_timestep(t)`` of a GAS time ``t``.

    ComfyUI maps a sigma to the *nearest integer* timestep of its table; a GAS solver's sigmas lie between the knots
    and its decoupled network times are free, so the network must see the continuous value instead. This object holds
    the GAS time of the next model call and replaces the ``timesteps`` argument of the diffusion model through a
    ``DIFFUSION_MODEL`` wrapper (called by ComfyUI's UNet for SD1.x/SD2.x/SDXL, and by several DiT models).

    Use:

    * sampling: ``model_options = override.install(model_options)`` (a copy; the caller's dict is untouched), then
      ``sample_gas(..., timestep_hook=override.hook)``: the core calls the hook with each call's GAS time.
    * one explicit call (e.g. under ``torch.utils.checkpoint``): ``with override.at(t): denoiser(x, sigma)``.
    * a patched copy of a ``ModelPatcher``: ``patcher = override.patch(patcher)``.

    The time may require grad: it is not detached, and the replaced timesteps keep the float32 dtype ComfyUI gives the
    network (its own ``timestep(...).float()``); float16 would round e.g. 749.25 to 749.0. Under CFG batching every
    chunk of one call (cond and uncond, however batched) gets the same time; a time of shape ``[B]`` is repeated over
    the CFG chunks. When the wrapper is never invoked (a network that ignores ComfyUI's wrappers), one warning is
    logged and the network keeps ComfyUI's integer timesteps.
    """

    def __init__(self, schedule: NoiseSchedule, *, label: str = "GAS") -> None:
        if not schedule.has_time:
            raise ScheduleError(f"{schedule.describe()} has no GAS time map; float timesteps need one")
        self.schedule = schedule
        self.label = label
        self._time: torch.Tensor | None = None
        self._pending = False  # a time was set and no wrapper invocation has used it yet
        self.invocations = 0
        self.fallback = False

    # ----- the time of the next call ---------------------------------------------------------------------------
    def hook(self, t: torch.Tensor | float) -> None:
        """Set the GAS time of the following model call(s) (``timestep_hook`` of :func:`gas.sample_gas`)."""
        self._check_previous_call()
        self._time = torch.as_tensor(t, dtype=torch.float64) if not torch.is_tensor(t) else t
        self._pending = True

    @contextmanager
    def at(self, t: torch.Tensor | float) -> Iterator[None]:
        """Context manager: model calls inside see the network timestep of ``t``; the previous time is restored."""
        previous, previous_pending = self._time, self._pending
        self.hook(t)
        try:
            yield
        finally:
            self._check_previous_call()
            self._time, self._pending = previous, previous_pending

    def clear(self) -> None:
        """Forget the current time (calls see ComfyUI's own timesteps again)."""
        self._check_previous_call()
        self._time, self._pending = None, False

    def finish(self) -> None:
        """End of a sampling run: warn if the last call bypassed the wrapper, then forget the time."""
        self.clear()

    def _check_previous_call(self) -> None:
        if self._pending and not self.fallback:
            self.fallback = True
            log.warning(
                "[%s] this model's network does not accept ComfyUI diffusion-model wrappers, so it sees ComfyUI's "
                "rounded integer timesteps instead of the solver's float timesteps; results of a learned solver "
                "will be slightly off (its decoupled network times are not applied).", self.label)
        self._pending = False

    # ----- the wrapper -------------------------------------------------------------------------------------------
    def network_timesteps(self, like: torch.Tensor) -> torch.Tensor | None:
        """The timesteps to give the network in place of ``like`` (same shape and device), or None for no override."""
        t = self._time
        if t is None:
            return None
        value = self.schedule.network_timestep(t)
        dtype = like.dtype if like.is_floating_point() else torch.float32
        value = value.to(device=like.device, dtype=dtype).reshape(-1)
        n = like.numel()
        if value.numel() == 1:
            return value.expand(n).reshape(like.shape).contiguous()
        if n % value.numel():
            raise ValueError(f"a GAS time of {value.numel()} values cannot fill {n} network timesteps")
        return value.repeat(n // value.numel()).reshape(like.shape)

    def wrapper(self, executor: Callable[..., Any], x: torch.Tensor, timesteps: torch.Tensor, *args: Any,
                **kwargs: Any) -> Any:
        """``DIFFUSION_MODEL`` wrapper: ``(executor, x, timesteps, context, y, control, transformer_options, **kw)``."""
        replaced = self.network_timesteps(timesteps)
        if replaced is not None:
            self.invocations += 1
            self._pending = False
            timesteps = replaced
        return executor(x, timesteps, *args, **kwargs)

    def install(self, model_options: dict[str, Any] | None) -> dict[str, Any]:
        """A copy of ``model_options`` with the wrapper registered (the argument is not modified)."""
        import comfy.patcher_extension as pe

        options = pe.copy_nested_dicts(model_options or {})
        pe.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, self.wrapper, options,
                                is_model_options=True)
        return options

    def patch(self, patcher: Any) -> Any:
        """A clone of a ``ModelPatcher`` whose model options carry the wrapper."""
        clone = patcher.clone()
        clone.model_options = self.install(clone.model_options)
        return clone
