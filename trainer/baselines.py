"""Reference ODE solvers for the teacher and the evaluation, on a given sigma grid ending at ``s_N`` (no trailing 0).

All work in sigma space on the denoiser ``D(x, s)`` and return the state at the last sigma (no final denoise), like
the student:

* :func:`dpmpp_3m`: DPM-Solver++(3M) = ``gas.sample_gas(solver=None)`` (first order, the authors' 2M step, then 3M).
* :func:`dpmpp_2m`: k-diffusion's deterministic ``sample_dpmpp_2m``, written in the schedule's DPM form
  ``y_{k} = (sigma_dpm_k/sigma_dpm_{k-1}) y_{k-1} - alpha_k expm1(-h) D'`` with ``h = lambda_k - lambda_{k-1}``,
  ``D' = D_{k-1}`` on the first step and ``(1 + 1/(2r)) D_{k-1} - 1/(2r) D_{k-2}``, ``r = h_{k-1}/h_k`` after;
  for VE/EPS schedules this is exactly k-diffusion's formula (``t = -log s``).
* :func:`ipndm`: improved PNDM (Adams-Bashforth multistep on ``dx/ds = (x - D)/s``, the probability-flow ODE in
  sigma space for VE and flow states alike) with the warm-up orders 1, 2, 3, ... up to ``order``:
  ``d' = d_0`` | ``(3 d_0 - d_1)/2`` | ``(23 d_0 - 16 d_1 + 5 d_2)/12`` | ``(55 d_0 - 59 d_1 + 37 d_2 - 9 d_3)/24``,
  ``x <- x + (s_next - s) d'``. Order 2 on GITS sigmas is the authors' SD teacher; order 4 is ComfyUI's ``ipndm``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gas import NoiseSchedule, sample_gas

__all__ = ["BASELINES", "dpm_grid", "dpmpp_2m", "dpmpp_3m", "ipndm"]

Denoiser = Callable[..., torch.Tensor]

_AB = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def dpm_grid(schedule: NoiseSchedule, sigmas: torch.Tensor) -> torch.Tensor:
    """``sigmas`` as a float64 CPU grid whose first sigma is the one a DPM step may start from
    (``schedule.first_sigma``: itself, unless lambda is infinite there)."""
    s = sigmas.detach().to(torch.float64).cpu()
    return torch.cat([schedule.first_sigma(s[:1]).reshape(1), s[1:]])


def _call(model: Denoiser, x: torch.Tensor, s: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
    return model(x, s.to(x.dtype) * x.new_ones([x.shape[0]]), **cond)


def dpmpp_3m(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, cond: dict[str, Any] | None = None, *,
             schedule: NoiseSchedule) -> torch.Tensor:
    """DPM-Solver++(3M) (the untrained Generalized Solver) from ``x`` at ``sigmas[0]`` to ``sigmas[-1]``."""
    return sample_gas(model, x, sigmas, extra_args=cond or {}, disable=True, schedule=schedule)


def dpmpp_2m(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, cond: dict[str, Any] | None = None, *,
             schedule: NoiseSchedule) -> torch.Tensor:
    """DPM-Solver++(2M) (k-diffusion's deterministic form, see the module docstring)."""
    cond = cond or {}
    s = dpm_grid(schedule, sigmas)
    lam, rho, sig, alpha = schedule.lam(s), schedule.rho(s), schedule.sigma_dpm(s), schedule.alpha(s)
    y = x.to(torch.float32) * float(rho[0])
    prev = None
    for k in range(1, s.numel()):
        d = _call(model, (y / float(rho[k - 1])).to(x.dtype), s[k - 1], cond).float()
        h = float(lam[k] - lam[k - 1])
        if prev is None:
            dd = d
        else:
            r = float(lam[k - 1] - lam[k - 2]) / h
            dd = (1 + 1 / (2 * r)) * d - (1 / (2 * r)) * prev
        y = float(sig[k] / sig[k - 1]) * y - float(alpha[k]) * float(torch.expm1(torch.tensor(-h))) * dd
        prev = d
    return (y / float(rho[-1])).to(x.dtype)


def ipndm(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, cond: dict[str, Any] | None = None, *,
          schedule: NoiseSchedule | None = None, order: int = 4,
          callback: Callable[[dict[str, Any]], None] | None = None) -> torch.Tensor:
    """Improved PNDM of the given maximum ``order`` (1..4); see the module docstring. ``callback`` gets
    k-diffusion's ``{x, i, sigma, denoised}`` after each model call."""
    if order not in _AB:
        raise ValueError(f"iPNDM order must be 1..4, got {order}")
    cond = cond or {}
    s = dpm_grid(schedule, sigmas) if schedule is not None else sigmas.detach().to(torch.float64).cpu()
    xf = x.to(torch.float32)
    history: list[torch.Tensor] = []
    for k in range(s.numel() - 1):
        denoised = _call(model, xf.to(x.dtype), s[k], cond).float()
        if callback is not None:
            callback({"x": xf, "i": k, "sigma": s[k], "denoised": denoised})
        d = (xf - denoised) / float(s[k])
        history.insert(0, d)
        del history[order:]
        coefs = _AB[min(order, len(history))]
        slope = sum(c * h for c, h in zip(coefs, history, strict=False))
        xf = xf + float(s[k + 1] - s[k]) * slope
    return xf.to(x.dtype)


#: Evaluation baselines by report name: ``name -> (function, keyword arguments)``.
BASELINES: dict[str, tuple[Callable[..., torch.Tensor], dict[str, Any]]] = {
    "DPM-Solver++(3M)": (dpmpp_3m, {}),
    "DPM-Solver++(2M)": (dpmpp_2m, {}),
    "iPNDM": (ipndm, {"order": 4}),
}
