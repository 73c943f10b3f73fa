"""Analytic denoisers for tests: exact posterior means of Gaussian data, in ComfyUI sigma space.

``GaussianVE``: data ``N(mu, s0^2 I)``, state ``x = x0 + s*eps``:
``D(x, s) = mu + s0^2/(s0^2+s^2) (x - mu)``; the probability-flow ODE maps ``x(s) - mu`` linearly with factor
``sqrt((s0^2+s^2)/(s0^2+s'^2))``.
``GaussianFlow``: state ``x = (1-s) x0 + s*eps``, marginal ``N((1-s) mu, v(s))`` with ``v = (1-s)^2 s0^2 + s^2``:
``D(x, s) = mu + (1-s) s0^2 / v(s) * (x - (1-s) mu)`` and ``x(s) = (1-s) mu + sqrt(v(s)/v(s')) (x(s') - (1-s') mu)``.
"""

from __future__ import annotations

import torch


class GaussianVE:
    def __init__(self, mu: torch.Tensor, s0: float = 0.5) -> None:
        self.mu, self.s0 = mu, s0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
        s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        return self.mu + self.s0**2 / (self.s0**2 + s * s) * (x - self.mu)

    def exact(self, x: torch.Tensor, s_from: float, s_to: float) -> torch.Tensor:
        f = ((self.s0**2 + s_to**2) / (self.s0**2 + s_from**2)) ** 0.5
        return self.mu + f * (x - self.mu)


class GaussianFlow:
    def __init__(self, mu: torch.Tensor, s0: float = 0.5) -> None:
        self.mu, self.s0 = mu, s0

    def _var(self, s):
        return (1 - s) ** 2 * self.s0**2 + s * s

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
        s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        return self.mu + (1 - s) * self.s0**2 / self._var(s) * (x - (1 - s) * self.mu)

    def exact(self, x: torch.Tensor, s_from: float, s_to: float) -> torch.Tensor:
        f = (self._var(s_to) / self._var(s_from)) ** 0.5
        return (1 - s_to) * self.mu + f * (x - (1 - s_from) * self.mu)


class GoldenModel:
    """The model of the golden files (shared/golden/README.md): exact eps of N(mu, s0^2) data on the SD1.5 discrete
    schedule, evaluated at a float network timestep, with CFG against the unconditional mean 0.

    The network timestep comes from ``timestep_hook`` (GAS time t -> 1000 t - 1); without a hook the continuous
    timestep of the call sigma is used.
    """

    def __init__(self, cfg: float, s0: float) -> None:
        from gas import DiscreteVPSchedule

        self.cfg, self.s0 = cfg, s0
        self.schedule = DiscreteVPSchedule.sd_linear()
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        self.log_abar = torch.log(torch.cumprod(1 - betas, 0))
        self.tau: torch.Tensor | None = None
        self.calls: list[tuple[float, float]] = []

    def timestep_hook(self, t: torch.Tensor) -> None:
        self.tau = self.schedule.network_timestep(t.detach())

    def _eps(self, y, tau, mu):
        tau = tau.clamp(0, 999)
        lo = tau.floor().long().clamp(max=998)
        w = tau - lo
        abar = torch.exp(self.log_abar[lo] + w * (self.log_abar[lo + 1] - self.log_abar[lo]))
        a, s = abar.sqrt(), (1 - abar).sqrt()
        return s * (y - a * mu) / (a * a * self.s0**2 + s * s)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        sc = sigma[0].to(torch.float64)
        if self.tau is None:
            tau = self.schedule.network_timestep(self.schedule.time_of_sigma(sc))
        else:
            tau = self.tau
        self.calls.append((float(sc), float(tau)))
        y = x / torch.sqrt(1 + sc * sc)
        e_u = self._eps(y, tau, torch.zeros_like(mu))
        e = e_u + self.cfg * (self._eps(y, tau, mu) - e_u)
        return x - sc * e
