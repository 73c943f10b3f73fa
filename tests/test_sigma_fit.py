"""``gas.sigma_fit``: the one structured answer whether sigmas fit a learned solver, and the core's error classes."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

import gas
from gas.grid_fit import GRID_RTOL, fit_to_grid

SD = gas.DiscreteVPSchedule.sd_linear()


def solver(nfe: int = 4, schedule: gas.NoiseSchedule = SD) -> gas.GeneralizedSolver:
    out = gas.GeneralizedSolver(nfe, schedule=schedule)
    with torch.no_grad():
        out.mu_logit.add_(0.3 * torch.randn(nfe - 1, generator=torch.Generator().manual_seed(1)))
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_full_grid(dtype: torch.dtype) -> None:
    s = solver()
    fit = gas.sigma_fit(s.sigmas().detach().to(dtype), s)
    assert fit.kind is gas.FitKind.FULL and fit.fits and not fit.is_tail
    assert (fit.start, fit.steps, fit.nfe, fit.reason) == (0, 4, 4, None)
    fit.raise_for_mismatch()  # nothing to raise
    with pytest.raises(ValueError, match="no mismatch message"):
        fit.message()


@pytest.mark.parametrize("k", [1, 2, 3])
def test_a_tail_of_k_steps(k: int) -> None:
    s = solver()
    grid = s.sigmas().detach()
    fit = gas.sigma_fit(grid[4 - k:].float(), s)
    assert fit.kind is gas.FitKind.TAIL and fit.fits and fit.is_tail
    assert (fit.start, fit.steps, fit.nfe, fit.reason) == (4 - k, k, 4, None)
    assert fit.tail_message().startswith(f"denoise < 1: running the last {k} of the 4 learned steps of the solver")


def test_the_answer_is_a_frozen_value() -> None:
    s = solver()
    fit = gas.sigma_fit(s.sigmas(), s)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fit.kind = gas.FitKind.MISMATCH  # type: ignore[misc]
    assert fit == gas.sigma_fit(s.sigmas().tolist(), s)  # a list of floats gives the same answer as a tensor


def test_trailing_zero() -> None:
    s = solver()
    for sigmas in (torch.cat([s.sigmas(), torch.zeros(1, dtype=torch.float64)]),
                   torch.cat([s.sigmas()[2:], torch.zeros(1, dtype=torch.float64)])):
        fit = gas.sigma_fit(sigmas, s)
        assert (fit.kind, fit.reason, fit.start) == (gas.FitKind.MISMATCH, gas.MismatchReason.TRAILING_ZERO, None)
        assert "without a final denoise step" in fit.message()


def test_step_count() -> None:
    s = solver()
    fit = gas.sigma_fit(solver(6).sigmas(), s)
    assert (fit.kind, fit.reason, fit.steps, fit.nfe) == (gas.FitKind.MISMATCH, gas.MismatchReason.STEP_COUNT, 6, 4)
    assert fit.message("solver 'x'").startswith("NFE mismatch: the sigmas have 6 steps but solver 'x' was trained")
    assert fit.message().endswith("or use a 6-step solver")


def test_other_sigmas() -> None:
    s = solver()
    cases = {
        "another scheduler, same length": torch.tensor([14.6146, 4.0, 1.0, 0.2, 0.0292]),
        "another scheduler, ends in 0": torch.tensor([14.6146, 3.17, 0.447, 0.0292, 0.0]),
        "another schedule": s.sigmas(gas.FlowSchedule(3.0)),
        "one sigma": s.sigmas()[:1],
        "a head, not a tail": s.sigmas()[:3],
    }
    for what, sigmas in cases.items():
        fit = gas.sigma_fit(sigmas, s)
        assert fit.reason is gas.MismatchReason.OTHER_SIGMAS, what
        assert fit.message(fix="do this").endswith("; do this"), what
    assert "they end in 0" in gas.sigma_fit(cases["another scheduler, ends in 0"], s).message()


def test_tolerance_is_relative_and_tight() -> None:
    grid = solver().sigmas().detach()
    assert fit_to_grid(grid * (1 + 0.5 * GRID_RTOL), grid).kind is gas.FitKind.FULL
    assert fit_to_grid(grid * (1 + 2 * GRID_RTOL), grid).kind is gas.FitKind.MISMATCH


def test_the_schedule_argument_is_the_models() -> None:
    flow = solver(schedule=gas.FlowSchedule(3.0))
    on_other_shift = flow.sigmas(gas.FlowSchedule(1.0))
    assert gas.sigma_fit(on_other_shift, flow).kind is gas.FitKind.MISMATCH
    assert gas.sigma_fit(on_other_shift, flow, gas.FlowSchedule(1.0)).kind is gas.FitKind.FULL


def test_sample_gas_follows_the_answer() -> None:
    """The sampler raises and warns with the core's classes for exactly what sigma_fit says."""
    s = solver()
    x = torch.randn(1, 4, 4, 4)

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x / (1 + sigma.reshape(-1, 1, 1, 1) ** 2)

    for reason, sigmas in {gas.MismatchReason.TRAILING_ZERO: torch.cat([s.sigmas(), torch.zeros(1).double()]),
                           gas.MismatchReason.STEP_COUNT: solver(6).sigmas(),
                           gas.MismatchReason.OTHER_SIGMAS: torch.tensor([14.6, 4.0, 1.0, 0.2, 0.03])}.items():
        with pytest.raises(gas.SigmasMismatchError) as caught:
            gas.sample_gas(denoiser, x, sigmas, solver=s, disable=True)
        assert str(caught.value) == gas.sigma_fit(sigmas, s).message(), reason
    with pytest.warns(gas.SigmasTailWarning) as seen:
        gas.sample_gas(denoiser, x, s.sigmas()[1:], solver=s, disable=True)
    assert [str(w.message) for w in seen] == [gas.sigma_fit(s.sigmas()[1:], s).tail_message()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gas.sample_gas(denoiser, x, s.sigmas(), solver=s, disable=True)  # the full grid: no warning
    with pytest.raises(gas.SigmasError, match="strictly decreasing"):
        gas.sample_gas(denoiser, x, torch.tensor([1.0, 2.0]), disable=True)


def test_error_and_warning_classes() -> None:
    """One module holds them; every error is a GASError (a ValueError), every warning a GASWarning (a UserWarning)."""
    import gas.errors as errors

    for name in ("ScheduleError", "SolverFileError", "SigmasError", "SigmasMismatchError"):
        cls = getattr(gas, name)
        assert cls is getattr(errors, name) and issubclass(cls, gas.GASError), name
    assert issubclass(gas.GASError, ValueError) and issubclass(gas.SigmasMismatchError, gas.SigmasError)
    assert issubclass(gas.SigmasTailWarning, gas.GASWarning) and issubclass(gas.GASWarning, UserWarning)
    assert gas.schedules.ScheduleError is errors.ScheduleError
    assert gas.solver_file.SolverFileError is errors.SolverFileError
    with pytest.raises(gas.GASError):
        gas.load_solver("/nonexistent/solver.safetensors")
