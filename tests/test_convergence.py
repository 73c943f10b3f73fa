"""Convergence of the untrained solver (DPM-Solver++(3M), authors' form) on Gaussian data, whose probability-flow
ODE has a closed-form solution.

The multistep method starts with one first-order step and one second-order step; the first step's local error is
O(h^2), so the global error falls as O(h^2) = O(N^-2) (the later 3M steps contribute O(N^-3)). Expected observed
order: about 2, and clearly above first order.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import gas
from tests.analytic import GaussianFlow, GaussianVE

CASES = {
    "sd-discrete": (gas.DiscreteVPSchedule.sd_linear(), GaussianVE),
    "flow-shift3": (gas.FlowSchedule(3.0), GaussianFlow),
}


def lam_uniform_sigmas(schedule, n):
    one = torch.tensor(1.0, dtype=torch.float64)
    s_hi, s_lo = schedule.sigma_of_time(one), schedule.sigma_of_time(one * 1e-3)
    lam = torch.linspace(float(schedule.lam(s_hi)), float(schedule.lam(s_lo)), n + 1, dtype=torch.float64)
    return torch.exp(-lam) if schedule.space == "ve" else torch.sigmoid(-lam)


def error(schedule, model_cls, sigmas, solver=None):
    gen = torch.Generator().manual_seed(0)
    model = model_cls(torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64), 0.5)
    x = schedule.initial_state(torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64), sigmas[0])
    out = gas.sample_gas(model, x, sigmas, solver=solver, schedule=schedule, disable=True)
    return (out - model.exact(x, float(sigmas[0]), float(sigmas[-1]))).abs().max().item()


@pytest.mark.parametrize("case", sorted(CASES))
def test_error_falls_at_second_order(case):
    schedule, model_cls = CASES[case]
    ns = [16, 32, 64, 128]
    errs = [error(schedule, model_cls, lam_uniform_sigmas(schedule, n)) for n in ns]
    assert all(b < a for a, b in itertools.pairwise(errs)), errs
    orders = [math.log(a / b) / math.log(2) for a, b in itertools.pairwise(errs)]
    assert all(1.8 < p < 3.6 for p in orders), orders
    assert errs[-1] < 1e-3


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("nfe", [1, 2, 3, 5, 8, 16])
def test_untrained_solver_is_3m_on_its_grid(case, nfe):
    """Zero corrections and decoupled times: exactly DPM-Solver++(3M) on the solver's (uniform-time) grid."""
    schedule, model_cls = CASES[case]
    solver = gas.GeneralizedSolver(nfe, schedule=schedule, dtype=torch.float64)
    sigmas = solver.sigmas().detach()
    assert sigmas.numel() == nfe + 1
    assert torch.allclose(schedule.time_of_sigma(sigmas), solver.times().detach(), atol=1e-12)
    assert torch.allclose(solver.times().detach(), torch.linspace(1, 1e-3, nfe + 1, dtype=torch.float64), atol=1e-9)
    assert error(schedule, model_cls, sigmas, solver) == error(schedule, model_cls, sigmas, None)


def test_learned_solver_can_beat_3m_at_four_steps():
    """The parametrisation is expressive: fitting the 27 used numbers of a 4-step solver to the exact ODE solution
    cuts the error of DPM-Solver++(3M) several times (a few Adam steps on one Gaussian)."""
    schedule = gas.DiscreteVPSchedule.sd_linear()
    gen = torch.Generator().manual_seed(0)
    model = GaussianVE(torch.randn(4, 4, 8, 8, generator=gen, dtype=torch.float64), 0.5)
    solver = gas.GeneralizedSolver(4, schedule=schedule, dtype=torch.float64)
    noise = torch.randn(4, 4, 8, 8, generator=gen, dtype=torch.float64)

    def loss():
        sigmas = solver.sigmas()
        x = schedule.initial_state(noise, sigmas[0])
        out = gas.sample_gas(model, x, sigmas, solver=solver, disable=True, differentiable=True)
        s0, s_end = float(sigmas[0].detach()), float(sigmas[-1].detach())
        return (out - model.exact(x, s0, s_end)).abs().mean()

    start = loss().item()
    opt = torch.optim.Adam(solver.parameters(), lr=2e-2)
    for _ in range(150):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
    assert loss().item() < start / 4
