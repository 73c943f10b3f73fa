"""The sampler-function contract: grids, mismatches, img2img tails, trailing zeros, dtypes, hooks."""

from __future__ import annotations

import warnings

import pytest
import torch

import gas
from tests.analytic import GaussianFlow, GaussianVE

SD = gas.DiscreteVPSchedule.sd_linear()


def trained_looking(nfe=4, schedule=SD, dtype=torch.float32):
    solver = gas.GeneralizedSolver(nfe, schedule=schedule, dtype=dtype)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        solver.mu_logit.add_(0.2 * torch.randn(nfe - 1, generator=gen).to(dtype))
        solver.t_couple.copy_(0.005 * torch.randn(nfe, generator=gen).to(dtype))
        solver.a.copy_(0.01 * torch.randn(nfe, nfe, generator=gen).to(dtype) * solver.used_mask())
        solver.c.copy_(0.01 * torch.randn(nfe, nfe, generator=gen).to(dtype) * solver.used_mask())
    return solver


def model_and_noise(dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(2, 4, 8, 8, generator=gen).to(dtype)
    return GaussianVE(mu, 0.5), torch.randn(2, 4, 8, 8, generator=gen).to(dtype)


def test_other_sigmas_are_refused_with_a_pointer_to_the_right_ones():
    solver = trained_looking()
    model, noise = model_and_noise()
    karras = torch.tensor([14.6146, 4.0, 1.0, 0.2, 0.0292])
    with pytest.raises(gas.SigmasMismatchError, match="GAS Sigmas"):
        gas.sample_gas(model, noise, karras, solver=solver, disable=True)
    with_zero = torch.cat([solver.sigmas().float(), torch.zeros(1)])
    with pytest.raises(gas.SigmasMismatchError, match="without a final denoise step"):
        gas.sample_gas(model, noise, with_zero, solver=solver, disable=True)
    wrong_nfe = gas.GeneralizedSolver(6, schedule=SD).sigmas()
    with pytest.raises(gas.SigmasMismatchError, match="have 6 steps but this solver was trained for 4"):
        gas.sample_gas(model, noise, wrong_nfe, solver=solver, disable=True)


def test_float32_grid_is_accepted():
    solver = trained_looking()
    model, noise = model_and_noise()
    out64 = gas.sample_gas(model, noise.double(), solver.sigmas(), solver=solver, disable=True)
    out32 = gas.sample_gas(model, noise, solver.sigmas().float(), solver=solver, disable=True)
    assert out32.dtype == torch.float32
    assert torch.allclose(out32.double(), out64, atol=1e-4)


def test_tail_of_grid_runs_3m_on_learned_timesteps_with_a_warning():
    solver = trained_looking()
    model, noise = model_and_noise()
    tail = solver.sigmas()[2:]
    with pytest.warns(gas.SigmasTailWarning, match="denoise < 1"):
        out = gas.sample_gas(model, noise, tail, solver=solver, disable=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ref = gas.sample_gas(model, noise, tail, schedule=SD, disable=True)
    assert torch.equal(out, ref)


def test_trailing_zero_without_solver_returns_the_denoised_prediction():
    model, noise = model_and_noise(torch.float64)
    sigmas = torch.tensor([14.6, 3.0, 0.7, 0.0], dtype=torch.float64)
    seen = []
    out = gas.sample_gas(model, noise * 14.6, sigmas, disable=True, callback=seen.append)
    assert len(seen) == 3
    assert torch.equal(out, seen[-1]["denoised"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_state_is_integrated_in_float32(dtype):
    solver = trained_looking()
    model, noise = model_and_noise()
    seen_dtypes = []

    def half_model(x, sigma):
        seen_dtypes.append(x.dtype)
        return model(x.float(), sigma.float()).to(dtype)

    out = gas.sample_gas(half_model, noise.to(dtype), solver.sigmas().float(), solver=solver, disable=True)
    ref = gas.sample_gas(model, noise, solver.sigmas().float(), solver=solver, disable=True)
    assert out.dtype == dtype and set(seen_dtypes) == {dtype}
    assert torch.allclose(out.float(), ref, atol=0.1, rtol=0.02)


def test_timestep_mode_calls_at_the_given_state_sigmas():
    solver = trained_looking()
    model, noise = model_and_noise()
    sigmas = solver.sigmas().float()
    calls, times = [], []

    def recording(x, sigma):
        calls.append(sigma[0].item())
        return model(x, sigma)

    gas.sample_gas(recording, noise, sigmas, solver=solver, disable=True, decoupled="timestep",
                   timestep_hook=times.append)
    assert calls == sigmas[:-1].tolist()
    assert torch.allclose(torch.stack(times), solver.shifted_times().detach())
    with pytest.raises(ValueError, match="timestep_hook"):
        gas.sample_gas(recording, noise, sigmas, solver=solver, disable=True, decoupled="timestep")


def test_resigma_calls_at_shifted_sigmas():
    solver = trained_looking()
    model, noise = model_and_noise()
    calls = []

    def recording(x, sigma):
        calls.append(sigma[0].item())
        return model(x, sigma)

    gas.sample_gas(recording, noise, solver.sigmas().float(), solver=solver, disable=True)
    expected = SD.sigma_of_time(solver.shifted_times()).detach()
    assert torch.allclose(torch.tensor(calls, dtype=torch.float64), expected, rtol=1e-6)


def test_flow_first_sigma_one_is_offset_like_comfyui():
    """sigma = 1 has lambda = -inf; the first step starts from sigma(U_MAX) and stays finite."""
    schedule = gas.FlowSchedule(3.0)
    gen = torch.Generator().manual_seed(0)
    model = GaussianFlow(torch.randn(1, 4, 8, 8, generator=gen, dtype=torch.float64), 0.5)
    sigmas = torch.tensor([1.0, 0.8, 0.5, 0.2, 0.0], dtype=torch.float64)
    calls = []

    def recording(x, sigma):
        calls.append(sigma[0].item())
        return model(x, sigma)

    out = gas.sample_gas(recording, torch.randn(1, 4, 8, 8, generator=gen, dtype=torch.float64), sigmas,
                         schedule=schedule, disable=True)
    assert torch.isfinite(out).all()
    offset = float(schedule.sigma_of_time(torch.tensor(1.0, dtype=torch.float64)))
    assert calls[0] == pytest.approx(offset, rel=1e-12) and calls[0] < 1


def test_bad_options_are_named():
    model, noise = model_and_noise()
    sigmas = torch.tensor([10.0, 1.0, 0.1])
    with pytest.raises(ValueError, match="two_m"):
        gas.sample_gas(model, noise, sigmas, two_m="nope", disable=True)
    with pytest.raises(ValueError, match="decoupled"):
        gas.sample_gas(model, noise, sigmas, decoupled="nope", disable=True)
    with pytest.raises(ValueError, match="strictly decreasing"):
        gas.sample_gas(model, noise, torch.tensor([1.0, 2.0]), disable=True)
    with pytest.raises(ValueError, match="at least 2"):
        gas.sample_gas(model, noise, torch.tensor([1.0]), disable=True)
    with pytest.raises(ValueError, match="nfe must be"):
        gas.GeneralizedSolver(17)
    with pytest.raises(gas.ScheduleError, match="no GAS time map"):
        gas.GeneralizedSolver(4, schedule=gas.VESigmaSpace()).sigmas()


@pytest.mark.parametrize("nfe", list(range(1, 17)))
def test_every_nfe_runs(nfe):
    solver = trained_looking(nfe) if nfe > 1 else gas.GeneralizedSolver(1, schedule=SD)
    model, noise = model_and_noise()
    sigmas = solver.sigmas()
    assert sigmas.numel() == nfe + 1 and (sigmas[1:] < sigmas[:-1]).all()
    out = gas.sample_gas(model, SD.initial_state(noise, sigmas[0]), sigmas.float(), solver=solver, disable=True)
    assert torch.isfinite(out).all()


def test_discrete_time_map_round_trips_and_hits_comfyui_knots():
    t = torch.linspace(1.0, 1e-3, 997, dtype=torch.float64)
    assert torch.allclose(SD.time_of_sigma(SD.sigma_of_time(t)), t, atol=1e-12)
    knots = torch.arange(1, 1001, dtype=torch.float64) / 1000
    abar = SD.alphas_cumprod
    assert torch.allclose(SD.sigma_of_time(knots), ((1 - abar) / abar).sqrt(), rtol=1e-12)
    assert SD.sigma_min == pytest.approx(0.0291672, rel=1e-5) and SD.sigma_max == pytest.approx(14.61464, rel=1e-5)
    uniform4 = gas.GeneralizedSolver(4, schedule=SD).sigmas()
    assert uniform4.tolist() == pytest.approx([14.6146, 4.0861, 1.6156, 0.6952, 0.0292], abs=1e-4)


class VPStateSchedule(gas.NoiseSchedule):
    """A new state convention in one class: variance preserving, ``x = sqrt(1-s^2)*x0 + s*eps`` (``s < 1``); only
    the five sigma-space maps are overridden."""

    space = "vp-state"

    def rho(self, s):
        return torch.ones_like(s)

    def alpha(self, s):
        return torch.sqrt(1.0 - s * s)

    def lam(self, s):
        return 0.5 * torch.log1p(-s * s) - torch.log(s)

    def beta(self, s):
        return torch.sqrt(1.0 - s * s)

    def initial_scale(self, s0):
        return s0


@pytest.mark.parametrize("schedule", [gas.VESigmaSpace(), SD, gas.FlowSchedule(3.0), VPStateSchedule()],
                         ids=lambda s: type(s).__name__)
def test_sigma_space_maps_are_consistent(schedule):
    s = torch.tensor([0.03, 0.2, 0.5, 0.9], dtype=torch.float64)
    assert torch.allclose(schedule.beta(s), schedule.alpha(s) / schedule.rho(s), rtol=1e-14)
    assert torch.allclose(schedule.sigma_dpm(s) / schedule.rho(s), s, rtol=1e-14)
    assert torch.allclose(schedule.lam(s), torch.log(schedule.alpha(s) / schedule.sigma_dpm(s)), rtol=1e-12)


def test_a_new_state_convention_is_one_class():
    """DPM-Solver++(3M) in a variance-preserving state convention equals the VE run mapped into that convention
    (``x_vp = x_ve / sqrt(1 + s_ve^2)`` at ``s_vp = s_ve / sqrt(1 + s_ve^2)``): same lambdas, same x0 predictions."""
    model_ve, noise = model_and_noise(torch.float64)
    sigmas_ve = torch.tensor([14.6, 4.0, 1.3, 0.4, 0.1, 0.03], dtype=torch.float64)
    ve, vp = gas.VESigmaSpace(), VPStateSchedule()
    sigmas_vp = sigmas_ve * ve.rho(sigmas_ve)

    def model_vp(x, s):
        c = torch.sqrt(1.0 - s * s)
        return model_ve(x / c.reshape(-1, 1, 1, 1), s / c)

    x_ve = ve.initial_state(noise, sigmas_ve[0])
    out_ve = gas.sample_gas(model_ve, x_ve, sigmas_ve, schedule=ve, disable=True)
    out_vp = gas.sample_gas(model_vp, ve.rho(sigmas_ve[0]) * x_ve, sigmas_vp, schedule=vp, disable=True)
    assert torch.allclose(out_vp, ve.rho(sigmas_ve[-1]) * out_ve, rtol=1e-9, atol=1e-11)
