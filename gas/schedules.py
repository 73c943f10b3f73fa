"""Noise-schedule views used by the Generalized Solver.

A schedule is seen from two sides:

* **sigma space** (the sampler's state, ComfyUI / k-diffusion convention). The state at noise level ``s`` is
  ``x = x0 + s*eps`` for VE-type models (EPS / V-prediction, the discrete SD schedules) and ``x = (1-s)*x0 + s*eps``
  for flow (CONST) models. The DPM ("VP-like") state is ``y = rho(s) * x = alpha(s)*x0 + sigma_dpm(s)*eps`` and
  ``lambda(s) = log(alpha/sigma_dpm)`` is the half log-SNR.
* **GAS time** ``t`` in ``[t_eps, 1]`` (the authors' VP time), which parametrises the learned timesteps. Only the
  schedules that define :meth:`NoiseSchedule.sigma_of_time` can carry a learned solver.

All maps are plain torch functions of tensors, differentiable where the solver needs gradients (``sigma_of_time``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .errors import ScheduleError

__all__ = [
    "DiscreteVPSchedule",
    "FlowSchedule",
    "NoiseSchedule",
    "ScheduleError",
    "VESigmaSpace",
    "schedule_from_metadata",
]

#: Largest fraction of the flow time used at t = 1 (sigma = 1 has lambda = -inf); mirrors ComfyUI's
#: ``offset_first_sigma_for_snr`` (``percent_to_sigma(1e-4)``).
FLOW_U_MAX = 1.0 - 1e-4


class NoiseSchedule:
    """Base class: the sigma-space maps of one model family and, in subclasses, the GAS time map.

    The base class implements the VE state convention ``x = x0 + s*eps`` (EPS / V-prediction models); a family with
    another state convention overrides the five sigma-space maps :meth:`rho`, :meth:`alpha`, :meth:`lam`,
    :meth:`beta` and :meth:`initial_scale` (see :class:`FlowSchedule`), so a new family is one new class.
    ``space`` names the convention (``"ve"`` or ``"flow"``); two schedules can only match within one space.
    The formulas are those of ``docs/method.md``, "Sigma space".
    """

    space: str = "ve"

    # ----- sigma space (VE: x = x0 + s*eps) ---------------------------------------------------------------------
    def rho(self, s: torch.Tensor) -> torch.Tensor:
        """Factor with ``y = rho(s) * x``: ``1/sqrt(1+s^2)`` (VE)."""
        return torch.rsqrt(1.0 + s * s)

    def alpha(self, s: torch.Tensor) -> torch.Tensor:
        """Signal coefficient of the DPM state: ``1/sqrt(1+s^2)`` (VE)."""
        return torch.rsqrt(1.0 + s * s)

    def sigma_dpm(self, s: torch.Tensor) -> torch.Tensor:
        """Noise coefficient of the DPM state: ``s*rho(s)`` in every space."""
        return s * self.rho(s)

    def lam(self, s: torch.Tensor) -> torch.Tensor:
        """Half log-SNR ``lambda(s) = log(alpha/sigma_dpm)``: ``-log s`` (VE)."""
        return -torch.log(s)

    def beta(self, s: torch.Tensor) -> torch.Tensor:
        """``alpha/rho``, the data-prediction weight in sigma space: ``1`` (VE)."""
        return torch.ones_like(s)

    def initial_scale(self, s0: torch.Tensor) -> torch.Tensor:
        """Scale of unit noise at ``s0`` for txt2img: ``sqrt(1+s0^2)`` (VE, so that the DPM state ``y_0`` is the
        noise itself)."""
        return torch.sqrt(1.0 + s0 * s0)

    def initial_state(self, noise: torch.Tensor, s0: float | torch.Tensor) -> torch.Tensor:
        """Start state at ``s0`` from unit noise, as ComfyUI builds it for txt2img (empty latent, max denoise):
        ``noise * initial_scale(s0)``."""
        s0 = torch.as_tensor(s0, dtype=torch.float64).detach()
        return noise * float(self.initial_scale(s0))

    def first_sigma(self, s0: torch.Tensor) -> torch.Tensor:
        """The sigma a DPM step may start from (``s0`` itself unless lambda is infinite there; see
        :meth:`FlowSchedule.first_sigma`)."""
        return s0

    # ----- GAS time ---------------------------------------------------------------------------------------------
    has_time: bool = False

    def sigma_of_time(self, t: torch.Tensor) -> torch.Tensor:
        """Sigma at GAS time ``t`` (differentiable)."""
        raise ScheduleError(f"{type(self).__name__} has no GAS time map; a learned solver needs a model schedule")

    def time_of_sigma(self, s: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`sigma_of_time`."""
        raise ScheduleError(f"{type(self).__name__} has no GAS time map; a learned solver needs a model schedule")

    def network_timestep(self, t: torch.Tensor) -> torch.Tensor:
        """Float timestep the network is conditioned on at GAS time ``t``."""
        raise ScheduleError(f"{type(self).__name__} has no network timestep map")

    def clamp_time(self, t: torch.Tensor) -> torch.Tensor:
        """Clamp a shifted time into the range where :meth:`sigma_of_time` is a valid positive sigma."""
        return t

    # ----- description ------------------------------------------------------------------------------------------
    def to_metadata(self) -> dict[str, Any]:
        """JSON-able description; :func:`schedule_from_metadata` rebuilds the schedule from it."""
        raise ScheduleError(f"{type(self).__name__} cannot be stored in a solver file")

    def describe(self) -> str:
        """One-line human description."""
        return type(self).__name__

    def matches(self, other: NoiseSchedule, rtol: float = 1e-4) -> bool:
        """Whether two schedules give the same sigmas for the same GAS times (to ``rtol``)."""
        if self.space != other.space or not (self.has_time and other.has_time):
            return False
        t = torch.linspace(1.0, 1e-3, 257, dtype=torch.float64)
        a, b = self.sigma_of_time(t), other.sigma_of_time(t)
        return bool(torch.allclose(a, b, rtol=rtol, atol=0.0))


class VESigmaSpace(NoiseSchedule):
    """Sigma space of any VE / EPS-type denoiser (k-diffusion's convention) with no GAS time map.

    Enough for DPM-Solver++(3M) on arbitrary sigmas (``solver=None``); a learned solver needs a model schedule.
    """

    def describe(self) -> str:
        return "VE sigma space (no time map)"


class DiscreteVPSchedule(NoiseSchedule):
    """The discrete VP schedule of SD1.x / SD2.x / SDXL, continued in time as in DPM-Solver.

    Knots ``t_n = (n+1)/T`` carry ``L_n = log(alphas_cumprod[n]) / 2``; ``log alpha(t)`` is the piecewise-linear
    interpolation of ``L`` in ``t`` (the first and last segments extended linearly), ``s(t) = sqrt(exp(-2 L(t)) - 1)``
    and the network sees the float timestep ``T*t - 1``. At the knots ``s`` equals ComfyUI's discrete sigmas exactly.
    """

    has_time = True

    def __init__(self, alphas_cumprod: torch.Tensor, *, description: dict[str, Any] | None = None) -> None:
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten().cpu()
        if ac.numel() < 2:
            raise ScheduleError("a discrete schedule needs at least 2 alphas_cumprod values")
        if not torch.isfinite(ac).all() or (ac <= 0).any() or (ac >= 1).any():
            raise ScheduleError("alphas_cumprod must lie strictly between 0 and 1 (zero-terminal-SNR is not supported)")
        if (ac[1:] >= ac[:-1]).any():
            raise ScheduleError("alphas_cumprod must be strictly decreasing")
        self.alphas_cumprod = ac
        self.num_train_steps = ac.numel()
        self.log_alpha_knots = 0.5 * torch.log(ac)
        self._description = description
        self._cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    @classmethod
    def sd_linear(cls, beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = 1000) -> DiscreteVPSchedule:
        """The "scaled linear" schedule of SD1.x/SD2.x/SDXL: ``betas = linspace(sqrt(b0), sqrt(b1), T)^2``."""
        if not (0 < beta_start < beta_end < 1) or steps < 2:
            raise ScheduleError(f"bad linear schedule: beta_start={beta_start}, beta_end={beta_end}, steps={steps}")
        betas = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), steps, dtype=torch.float64) ** 2
        desc = {"kind": "discrete_vp", "beta_schedule": "linear", "linear_start": beta_start,
                "linear_end": beta_end, "timesteps": steps}
        return cls(torch.cumprod(1.0 - betas, dim=0), description=desc)

    @classmethod
    def from_sigmas(cls, sigmas: torch.Tensor) -> DiscreteVPSchedule:
        """Build from a model's discrete sigma table (``sigma_n = sqrt((1-abar_n)/abar_n)``, ascending)."""
        s = torch.as_tensor(sigmas, dtype=torch.float64).flatten().cpu()
        return cls(1.0 / (1.0 + s * s))

    def _knots(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = self.log_alpha_knots.to(device=like.device, dtype=like.dtype)
        return self._cache[key]

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Piecewise-linear ``log alpha(t)`` through the knots ``((n+1)/T, L_n)``, linear beyond the ends."""
        T = self.num_train_steps
        knots = self._knots(t)
        pos = t * T - 1.0  # fractional knot index
        idx = torch.clamp(torch.floor(pos.detach()), 0, T - 2).long()
        w = pos - idx.to(pos.dtype)
        lo, hi = knots[idx], knots[idx + 1]
        return lo + w * (hi - lo)

    def sigma_of_time(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(torch.expm1(-2.0 * self.log_alpha(t)))

    def time_of_sigma(self, s: torch.Tensor) -> torch.Tensor:
        T = self.num_train_steps
        knots = self._knots(s)
        target = -0.5 * torch.log1p(s * s)  # log alpha at sigma s; knots decrease with n
        # number of knots strictly above target -> segment index
        count = (knots.unsqueeze(0) > target.reshape(-1, 1)).sum(dim=1).reshape(s.shape)
        idx = torch.clamp(count - 1, 0, T - 2)
        lo, hi = knots[idx], knots[idx + 1]
        pos = idx.to(s.dtype) + (target - lo) / (hi - lo)
        return (pos + 1.0) / T

    def network_timestep(self, t: torch.Tensor) -> torch.Tensor:
        return t * self.num_train_steps - 1.0

    def clamp_time(self, t: torch.Tensor) -> torch.Tensor:
        # log alpha reaches 0 (sigma = 0) slightly below t = 1/T on the extended first segment
        return torch.clamp(t, min=0.5 / self.num_train_steps)

    @property
    def sigma_min(self) -> float:
        return float(torch.sqrt(1.0 / self.alphas_cumprod[0] - 1.0))

    @property
    def sigma_max(self) -> float:
        return float(torch.sqrt(1.0 / self.alphas_cumprod[-1] - 1.0))

    def to_metadata(self) -> dict[str, Any]:
        if self._description is not None:
            return dict(self._description)
        return {"kind": "discrete_vp", "beta_schedule": "table", "timesteps": self.num_train_steps,
                "alphas_cumprod": [float(v) for v in self.alphas_cumprod]}

    def describe(self) -> str:
        d = self.to_metadata()
        if d.get("beta_schedule") == "linear":
            return f"discrete VP, linear betas {d['linear_start']}..{d['linear_end']}, T={d['timesteps']}"
        return f"discrete VP, custom table, T={self.num_train_steps}"


class FlowSchedule(NoiseSchedule):
    """Rectified-flow (CONST) models: SD3, Flux, AuraFlow, ...

    ``s(t) = warp(U_MAX*t)`` with the time shift ``warp(u) = a*u / (1 + (a-1)*u)`` (``a`` = ``shift``; Flux's
    ``flux_time_shift(mu)`` is the same map with ``a = exp(mu)``). The network timestep is ``multiplier * s``.
    """

    space = "flow"
    has_time = True

    def __init__(self, shift: float = 1.0, multiplier: float = 1000.0) -> None:
        if not (math.isfinite(shift) and shift > 0):
            raise ScheduleError(f"flow shift must be a positive number, got {shift}")
        if not (math.isfinite(multiplier) and multiplier > 0):
            raise ScheduleError(f"flow timestep multiplier must be positive, got {multiplier}")
        self.shift = float(shift)
        self.multiplier = float(multiplier)

    # ----- sigma space (flow: x = (1-s)*x0 + s*eps, already the DPM state) ----------------------------------------
    def rho(self, s: torch.Tensor) -> torch.Tensor:
        """``1``: the flow state is the DPM state."""
        return torch.ones_like(s)

    def alpha(self, s: torch.Tensor) -> torch.Tensor:
        """``1-s``."""
        return 1.0 - s

    def lam(self, s: torch.Tensor) -> torch.Tensor:
        """``log((1-s)/s)``."""
        return torch.log1p(-s) - torch.log(s)

    def beta(self, s: torch.Tensor) -> torch.Tensor:
        """``1-s``."""
        return 1.0 - s

    def initial_scale(self, s0: torch.Tensor) -> torch.Tensor:
        """``s0``: ComfyUI's flow start ``s0*noise``."""
        return s0

    # ----- GAS time -------------------------------------------------------------------------------------------------
    def _warp(self, u: torch.Tensor) -> torch.Tensor:
        a = self.shift
        return a * u / (1.0 + (a - 1.0) * u)

    def _unwarp(self, s: torch.Tensor) -> torch.Tensor:
        a = self.shift
        return s / (a - (a - 1.0) * s)

    def sigma_of_time(self, t: torch.Tensor) -> torch.Tensor:
        """``warp(U_MAX*t)`` for ``t <= 1``; beyond 1 (a shifted first network time) lambda continues linearly in t,
        so the sigma stays below 1 and the map stays differentiable."""
        inside = self._warp(FLOW_U_MAX * torch.where(t > 1.0, torch.ones_like(t), t))  # full gradient at t = 1
        if not bool((t > 1.0).any()):
            return inside
        a = self.shift
        s1 = self._warp(torch.as_tensor(FLOW_U_MAX, dtype=t.dtype, device=t.device))
        lam1 = torch.log1p(-s1) - torch.log(s1)
        dlam_dt = -FLOW_U_MAX * a / ((1.0 + (a - 1.0) * FLOW_U_MAX) ** 2 * s1 * (1.0 - s1))
        outside = torch.sigmoid(-(lam1 + (torch.clamp(t, min=1.0) - 1.0) * dlam_dt))
        return torch.where(t > 1.0, outside, inside)

    def time_of_sigma(self, s: torch.Tensor) -> torch.Tensor:
        return self._unwarp(s) / FLOW_U_MAX

    def network_timestep(self, t: torch.Tensor) -> torch.Tensor:
        return self.multiplier * self.sigma_of_time(t)

    def clamp_time(self, t: torch.Tensor) -> torch.Tensor:
        return torch.clamp(t, min=1e-6)

    def first_sigma(self, s0: torch.Tensor) -> torch.Tensor:
        """``s0``, or ``warp(FLOW_U_MAX)`` for ``s0 >= 1`` (lambda = -inf there; ComfyUI offsets the first sigma the
        same way)."""
        if float(s0) >= 1.0:
            return self._warp(torch.as_tensor(FLOW_U_MAX, dtype=s0.dtype, device=s0.device))
        return s0

    def to_metadata(self) -> dict[str, Any]:
        return {"kind": "flow", "shift": self.shift, "multiplier": self.multiplier}

    def describe(self) -> str:
        return f"flow (CONST), shift {self.shift:g}, timestep multiplier {self.multiplier:g}"


def schedule_from_metadata(meta: dict[str, Any]) -> NoiseSchedule:
    """Rebuild a schedule from :meth:`NoiseSchedule.to_metadata` output; raises :class:`ScheduleError`."""
    if not isinstance(meta, dict):
        raise ScheduleError("schedule must be a JSON object")
    kind = meta.get("kind")
    try:
        if kind == "discrete_vp":
            if meta.get("beta_schedule") == "linear":
                return DiscreteVPSchedule.sd_linear(float(meta["linear_start"]), float(meta["linear_end"]),
                                                    int(meta["timesteps"]))
            if meta.get("beta_schedule") == "table":
                return DiscreteVPSchedule(torch.tensor([float(v) for v in meta["alphas_cumprod"]], dtype=torch.float64))
            raise ScheduleError(f"unknown beta_schedule {meta.get('beta_schedule')!r}")
        if kind == "flow":
            return FlowSchedule(float(meta["shift"]), float(meta.get("multiplier", 1000.0)))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ScheduleError):
            raise
        raise ScheduleError(f"incomplete {kind} schedule description ({exc})") from None
    raise ScheduleError(f"unknown schedule kind {kind!r}")
