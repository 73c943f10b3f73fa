"""``sample_gas``: the Generalized Solver as a k-diffusion-style sampler function.

``model(x, sigma, **extra_args) -> x0`` is a denoiser in sigma space (k-diffusion / ComfyUI convention). The same
function serves inference (no autograd, the default) and training (``differentiable=True``: gradients reach the
solver parameters through the precomputed :class:`~gas.update_rule.SolverPlan`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

from .errors import SigmasError, SigmasMismatchError, SigmasTailWarning
from .grid_fit import GRID_RTOL, fit_to_grid
from .schedules import NoiseSchedule, VESigmaSpace
from .solver import GeneralizedSolver
from .update_rule import TWO_M_FORMS, SolverPlan, build_coefficients

__all__ = ["DECOUPLED_MODES", "GRID_RTOL", "SigmasMismatchError", "build_plan", "sample_gas"]

#: ``"resigma"``: the model is called at ``s(t_k + t_couple[k])`` and its x0 is re-derived at the state sigma (exact
#: for any denoiser whose network sees the continuous time of the sigma it gets). ``"timestep"``: the model is called
#: at the state sigma and only the network timestep is shifted, by the host, through ``timestep_hook`` (exact for
#: eps-prediction networks).
DECOUPLED_MODES = ("resigma", "timestep")

TimestepHook = Callable[[torch.Tensor], None]


def build_plan(
    sigmas: torch.Tensor,
    solver: GeneralizedSolver | None = None,
    schedule: NoiseSchedule | None = None,
    *,
    two_m: str = "gas",
    decoupled: str = "resigma",
) -> SolverPlan:
    """Precompute the update coefficients for ``sigmas``.

    Without a solver: DPM-Solver++(3M) (first order, 2M, then 3M) on the given sigmas; a trailing 0 makes the last
    step return the denoised prediction (as k-diffusion does). With a solver: ``sigmas`` must be the solver's grid for
    ``schedule`` (:func:`gas.sigma_fit` decides; other sigmas raise :class:`gas.SigmasMismatchError`); a proper tail
    of it (img2img, denoise < 1) is integrated with DPM-Solver++(3M) on those learned timesteps, without the
    corrections and decoupled times, which belong to the full trajectory, and a :class:`gas.SigmasTailWarning` says
    so. Sigmas no solver can run on raise :class:`gas.SigmasError`.
    """
    if decoupled not in DECOUPLED_MODES:
        raise ValueError(f"decoupled must be one of {DECOUPLED_MODES}, got {decoupled!r}")
    if two_m not in TWO_M_FORMS:
        raise ValueError(f"two_m must be one of {TWO_M_FORMS}, got {two_m!r}")
    sigmas64 = sigmas.detach().to(device="cpu", dtype=torch.float64).flatten()
    if sigmas64.numel() < 2:
        raise SigmasError("sigmas need at least 2 entries (one step)")
    if not torch.isfinite(sigmas64).all() or (sigmas64 < 0).any() or (sigmas64[1:] >= sigmas64[:-1]).any():
        raise SigmasError("sigmas must be finite, non-negative and strictly decreasing")

    sched = schedule or (solver.schedule if solver is not None else None) or VESigmaSpace()
    if solver is None:
        denoise_last = float(sigmas64[-1]) == 0.0
        grid = sigmas64.clone()
        grid[0] = sched.first_sigma(grid[0])
        return _plan_without_corrections(grid, sched, two_m, denoise_last)

    grid = solver.sigmas(sched).to(torch.float64)
    fit = fit_to_grid(sigmas64, grid)
    fit.raise_for_mismatch()
    if fit.is_tail:
        warnings.warn(fit.tail_message(), SigmasTailWarning, stacklevel=3)
        return _plan_without_corrections(grid[fit.start:], sched, two_m, False)

    x_coef, m_coef = build_coefficients(grid, sched, solver.a, solver.c, two_m=two_m)
    times = solver.times().to(grid.device)
    shifted = solver.shifted_times().to(grid.device)
    n = solver.nfe
    if decoupled == "timestep":
        ones = torch.ones(n, dtype=torch.float64, device=grid.device)
        return SolverPlan(grid, x_coef, m_coef, grid[:-1], shifted, ones, torch.zeros_like(ones), ones)
    t_call = sched.clamp_time(shifted)
    s_call = sched.sigma_of_time(t_call)
    if not (torch.is_grad_enabled() and solver.t_couple.requires_grad):
        # exactly the state sigma where there is no shift (keeps an untrained solver bit-identical to 3M); when
        # training, the re-sigma formula stays in the graph even at a zero shift so that t_couple gets its gradient
        no_shift = solver.t_couple.detach().to(grid.device) == 0
        s_call = torch.where(no_shift, grid[:-1], s_call)
        t_call = torch.where(no_shift, times[:-1], t_call)
    s_k = grid[:-1]
    rho_k, rho_c = sched.rho(s_k), sched.rho(s_call)
    sig_k, sig_c = sched.sigma_dpm(s_k), sched.sigma_dpm(s_call)
    alpha_k, alpha_c = sched.alpha(s_k), sched.alpha(s_call)
    # m = (y - sig_k * eps') / alpha_k with eps' = (y - alpha_c D) / sig_c and y = rho_k x
    out_x = rho_k * (1.0 - sig_k / sig_c) / alpha_k
    out_d = sig_k * alpha_c / (sig_c * alpha_k)
    input_scale = rho_k / rho_c
    return SolverPlan(grid, x_coef, m_coef, s_call, t_call, input_scale, out_x, out_d)


def _plan_without_corrections(grid: torch.Tensor, sched: NoiseSchedule, two_m: str, denoise_last: bool) -> SolverPlan:
    x_coef, m_coef = build_coefficients(grid, sched, two_m=two_m, denoise_last=denoise_last)
    n = grid.numel() - 1
    times = sched.time_of_sigma(grid[:-1]) if sched.has_time else None
    ones = torch.ones(n, dtype=torch.float64)
    return SolverPlan(grid, x_coef, m_coef, grid[:-1], times, ones, torch.zeros_like(ones), ones, denoise_last)


def _combine(terms: list[tuple[float | torch.Tensor, torch.Tensor]], differentiable: bool) -> torch.Tensor:
    """``sum coef * tensor`` skipping exact zeros (in place, without autograd, where allowed)."""
    live = [(w, v) for w, v in terms if not (isinstance(w, float) and w == 0.0)]
    if not live:
        return torch.zeros_like(terms[0][1])
    w0, v0 = live[0]
    out = v0 * w0
    for w, v in live[1:]:
        if differentiable:
            out = out + v * w
        else:
            out.add_(v, alpha=w)
    return out


def sample_gas(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    disable: bool | None = None,
    solver: GeneralizedSolver | None = None,
    *,
    schedule: NoiseSchedule | None = None,
    two_m: str = "gas",
    decoupled: str = "resigma",
    timestep_hook: TimestepHook | None = None,
    differentiable: bool = False,
) -> torch.Tensor:
    """Integrate the probability-flow ODE from ``x`` at ``sigmas[0]`` down to ``sigmas[-1]`` with N = len(sigmas)-1
    model calls, k-diffusion style.

    * ``solver=None``: DPM-Solver++(3M) on ``sigmas`` (``two_m="k-diffusion"`` gives k-diffusion's 2M step, hence
      ``sample_dpmpp_3m_sde(eta=0)``). A trailing 0 in ``sigmas`` makes the last step return the denoised prediction.
    * with a :class:`GeneralizedSolver`: ``sigmas`` must be its grid (``solver.sigmas(schedule)``); see
      :func:`build_plan` for tails of the grid. Returns the state at the last sigma (no final denoise).
    * ``schedule``: the model's noise schedule (defaults: the solver's, else VE sigma space).
    * ``decoupled`` / ``timestep_hook``: how the shifted network time reaches the network; the hook is called before
      every model call with the GAS time (a 0-dim float64 tensor) whose network timestep the network should see.
    * ``callback`` gets k-diffusion's dict ``{x, i, sigma, sigma_hat, denoised}`` after each model call.
    """
    extra_args = {} if extra_args is None else extra_args
    if decoupled == "timestep" and timestep_hook is None and solver is not None and not solver.is_untrained():
        raise ValueError("decoupled='timestep' needs a timestep_hook that makes the network see the shifted time")
    with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
        plan = build_plan(sigmas, solver, schedule, two_m=two_m, decoupled=decoupled)
        return _integrate(model, x, sigmas, plan, extra_args, callback, disable, timestep_hook, differentiable)


def _integrate(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    plan: SolverPlan,
    extra_args: dict[str, Any],
    callback: Callable[[dict[str, Any]], None] | None,
    disable: bool | None,
    timestep_hook: TimestepHook | None,
    differentiable: bool,
) -> torch.Tensor:
    in_dtype = x.dtype
    work_dtype = torch.float32 if in_dtype in (torch.float16, torch.bfloat16) else in_dtype
    n = plan.nfe
    if differentiable:
        def cast(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=x.device, dtype=work_dtype)
        x_coef, m_coef = cast(plan.x_coef), cast(plan.m_coef)
        in_scale, out_x, out_d = cast(plan.input_scale), cast(plan.out_x), cast(plan.out_d)
        coef = lambda mat, k, i: mat[k, i]  # noqa: E731
    else:
        x_coef, m_coef = plan.x_coef.tolist(), plan.m_coef.tolist()
        in_scale, out_x, out_d = plan.input_scale.tolist(), plan.out_x.tolist(), plan.out_d.tolist()
        coef = lambda mat, k, i: mat[k][i]  # noqa: E731
    call_sigmas = plan.call_sigmas.to(device=x.device, dtype=work_dtype)
    state_sigmas = sigmas.to(device=x.device)
    # call at the caller's own sigma values where they are the call sigma (hosts may key tables on them)
    given = sigmas.detach().to("cpu", torch.float64)
    planned = plan.call_sigmas.detach().cpu()
    at_given = [abs(float(given[k]) - float(planned[k])) <= GRID_RTOL * float(planned[k]) for k in range(n)]
    s_in = x.new_ones([x.shape[0]], dtype=work_dtype)

    xs: list[torch.Tensor] = [x.to(work_dtype)]
    ms: list[torch.Tensor] = []
    steps = range(n)
    if not disable:
        try:
            from tqdm.auto import trange

            steps = trange(n, disable=disable)
        except ImportError:
            pass
    if differentiable and plan.out_x.requires_grad:  # keep the re-sigma terms in the graph, even where they are 1, 0
        shifted_calls = [True] * n
    else:
        shifted_calls = [bool(sc != 1.0 or ox != 0.0)
                         for sc, ox in zip(plan.input_scale.tolist(), plan.out_x.tolist(), strict=True)]
    for k in steps:
        xk = xs[k]
        shifted = shifted_calls[k]
        if timestep_hook is not None and plan.call_times is not None:
            timestep_hook(plan.call_times[k])
        if shifted:
            x_in = xk * in_scale[k]
            call_sigma = call_sigmas[k]
        else:
            x_in = xk
            call_sigma = state_sigmas[k].to(work_dtype) if at_given[k] else call_sigmas[k]
        d = model(x_in.to(in_dtype), call_sigma * s_in, **extra_args).to(work_dtype)
        mk = d * out_d[k] + xk * out_x[k] if shifted else d
        ms.append(mk)
        if callback is not None:
            callback({"x": xk, "i": k, "sigma": state_sigmas[k], "sigma_hat": state_sigmas[k], "denoised": mk})
        terms = [(coef(x_coef, k, i), xs[i]) for i in range(k + 1)]
        terms += [(coef(m_coef, k, i), ms[i]) for i in range(k + 1)]
        xs.append(_combine(terms, differentiable))
    return xs[-1].to(in_dtype)
