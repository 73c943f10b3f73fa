"""Gradients reach every parameter the update rule reads, are correct, and are exactly zero elsewhere."""

from __future__ import annotations

import pytest
import torch

import gas
from tests.analytic import GaussianFlow, GaussianVE
from tests.helpers.solvers import perturbed_solver


def random_solver(nfe, schedule, seed=0):
    solver = perturbed_solver(nfe, seed, schedule=schedule, time_scale=0.3, couple_scale=0.01, coef_scale=0.02,
                              masked=False, dtype=torch.float64)
    # above t = 1 a flow schedule is pure noise to machine precision (no gradient can exist there)
    with torch.no_grad():
        solver.t_couple[0] = -solver.t_couple[0].abs()
    return solver


def objective(solver, schedule, model_cls, decoupled="resigma"):
    gen = torch.Generator().manual_seed(1)
    model = model_cls(torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64), 0.5)
    noise = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    weights = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    sigmas = solver.sigmas()
    x = schedule.initial_state(noise, sigmas[0])
    out = gas.sample_gas(model, x, sigmas, solver=solver, disable=True, differentiable=True, decoupled=decoupled)
    return (out * weights).sum()


CASES = [(gas.DiscreteVPSchedule.sd_linear(), GaussianVE), (gas.FlowSchedule(3.0), GaussianFlow)]


@pytest.mark.parametrize("schedule,model_cls", CASES, ids=["sd-discrete", "flow"])
@pytest.mark.parametrize("nfe", [1, 2, 3, 4, 6])
def test_gradient_support(schedule, model_cls, nfe):
    solver = random_solver(nfe, schedule)
    objective(solver, schedule, model_cls).backward()
    used = solver.used_mask()
    assert (solver.mu_logit.grad != 0).all()
    assert (solver.t_couple.grad != 0).all()
    for name in ("a", "c"):
        grad = getattr(solver, name).grad
        assert (grad[used] != 0).all(), f"{name}: some read entries get no gradient"
        assert (grad[~used] == 0).all(), f"{name}: unread entries get gradient"


@pytest.mark.parametrize("schedule,model_cls", CASES, ids=["sd-discrete", "flow"])
def test_unread_entries_do_not_change_the_output(schedule, model_cls):
    solver = random_solver(4, schedule)
    with torch.no_grad():
        base = objective(solver, schedule, model_cls)
        solver.a[~solver.used_mask()] = 1e3
        solver.c[~solver.used_mask()] = -1e3
        assert objective(solver, schedule, model_cls) == base


@pytest.mark.parametrize("schedule,model_cls", CASES, ids=["sd-discrete", "flow"])
def test_gradients_match_finite_differences(schedule, model_cls):
    solver = random_solver(4, schedule)
    params = [solver.mu_logit, solver.t_couple, solver.a, solver.c]
    # central differences; the piecewise-linear schedule is smooth away from its knots
    for index, p in enumerate(params):
        grad = torch.autograd.grad(objective(solver, schedule, model_cls), p)[0]
        flat = p.detach().flatten().clone()
        for pos in range(0, flat.numel(), max(1, flat.numel() // 5)):
            if p is solver.a or p is solver.c:
                if not solver.used_mask().flatten()[pos]:
                    continue
            eps = 1e-6
            with torch.no_grad():
                bumped = flat.clone()
                bumped[pos] += eps
                p.copy_(bumped.view_as(p))
                hi = objective(solver, schedule, model_cls).item()
                bumped[pos] -= 2 * eps
                p.copy_(bumped.view_as(p))
                lo = objective(solver, schedule, model_cls).item()
                p.copy_(flat.view_as(p))
            numeric = (hi - lo) / (2 * eps)
            assert abs(numeric - grad.flatten()[pos].item()) <= 1e-6 * max(1.0, abs(numeric)), (index, pos)


def test_timestep_route_passes_gradient_through_the_hook():
    """With decoupled='timestep' the host receives the differentiable shifted time."""
    schedule = gas.DiscreteVPSchedule.sd_linear()
    solver = random_solver(3, schedule)
    received = []

    def model(x, sigma):
        t = received[-1]
        return x * (1.0 + 0.01 * schedule.network_timestep(t))

    sigmas = solver.sigmas()
    out = gas.sample_gas(model, torch.ones(1, 2), sigmas, solver=solver, disable=True, differentiable=True,
                         decoupled="timestep", timestep_hook=received.append)
    out.sum().backward()
    assert len(received) == 3 and all(t.requires_grad for t in received)
    assert (solver.t_couple.grad != 0).all()


@pytest.mark.parametrize("schedule,model_cls", CASES, ids=["sd-discrete", "flow"])
def test_zero_initialised_solver_gets_gradient_everywhere(schedule, model_cls):
    """At initialisation (t_couple and corrections exactly 0) every read parameter still gets a gradient, and the
    output equals the untrained 3M output (the re-sigma terms are exact identities there)."""
    solver = gas.GeneralizedSolver(4, schedule=schedule, dtype=torch.float64)
    value = objective(solver, schedule, model_cls)
    value.backward()
    assert (solver.t_couple.grad != 0).all()
    assert (solver.a.grad[solver.used_mask()] != 0).all() and (solver.c.grad[solver.used_mask()] != 0).all()
    with torch.no_grad():
        assert torch.allclose(objective(solver, schedule, model_cls), value, rtol=1e-12, atol=0)


def test_inference_builds_no_graph():
    schedule = gas.DiscreteVPSchedule.sd_linear()
    solver = random_solver(4, schedule)
    model = GaussianVE(torch.zeros(1, 2, dtype=torch.float64))
    out = gas.sample_gas(model, torch.ones(1, 2, dtype=torch.float64), solver.sigmas(), solver=solver, disable=True)
    assert not out.requires_grad
