"""The Generalized Solver update rule, precomputed as a plan of linear coefficients.

In the DPM state ``y = rho(s)*x`` the authors' rule for step ``k`` (1-based, column ``j = k-1``) is

    y_k = (A + a1[j]) y_{k-1} - (alpha_k phi1 + c1[j]) m_{k-1}
          [k = 2:  - (alpha_k phi1/2 + c2[j]) D1_0 + a2[j] y_0]
          [k >= 3: + (alpha_k phi2 + c2[j]) D1 - (alpha_k phi3 + c3[j]) D2
                   + sum_{i>=4} ci[j] m_{k-i} + sum_{i>=2} ai[j] y_{k-i}]

with ``h = lambda_k - lambda_{k-1}``, ``phi1 = exp(-h) - 1``, ``phi2 = phi1/h + 1``, ``phi3 = phi2/h - 1/2``,
``A = sigma_dpm_k / sigma_dpm_{k-1}`` and the DPM-Solver++ finite differences ``D1_0, D1_1, D1, D2`` of the three
newest data predictions. Every term is linear in the history, so step ``k`` is
``x_k = sum_i X[k-1, i] x_i + sum_i M[k-1, i] m_i`` in sigma space (``x_i = y_i / rho_i``). The plan holds those two
lower-triangular matrices, differentiable in the solver parameters, and the per-call quantities of the decoupled
network time. The rule and its sigma-space form: ``docs/method.md`` sections 3 and 6.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .schedules import NoiseSchedule

__all__ = ["TWO_M_FORMS", "SolverPlan", "build_coefficients"]

#: ``"gas"``: the authors' second step ``-(alpha phi1 / 2) D1_0``; ``"k-diffusion"``: ``+alpha phi2 D1_0`` (the Taylor
#: form of k-diffusion's ``sample_dpmpp_3m_sde`` / ``sample_dpmpp_2m_sde``).
TWO_M_FORMS = ("gas", "k-diffusion")


@dataclass
class SolverPlan:
    """Everything one integration needs, all float64.

    ``sigmas [N+1]``: state sigmas. ``x_coef, m_coef [N, N]``: row ``k-1`` gives ``x_k`` from the history.
    ``call_sigmas [N]``: sigma of each model call; ``call_times [N]`` the GAS time the network should see (or None
    where the schedule has no time map). A call returns ``D``; the data prediction at the state sigma is
    ``m_k = out_x[k]*x_k + out_d[k]*D`` with the model input ``input_scale[k]*x_k`` ("re-sigma", identity when the
    call is at the state sigma). ``denoise_last``: the last step returns ``m_{N-1}`` (sigmas ending in 0).
    """

    sigmas: torch.Tensor
    x_coef: torch.Tensor
    m_coef: torch.Tensor
    call_sigmas: torch.Tensor
    call_times: torch.Tensor | None
    input_scale: torch.Tensor
    out_x: torch.Tensor
    out_d: torch.Tensor
    denoise_last: bool = False

    @property
    def nfe(self) -> int:
        return int(self.call_sigmas.numel())


def build_coefficients(
    sigmas: torch.Tensor,
    schedule: NoiseSchedule,
    a: torch.Tensor | None = None,
    c: torch.Tensor | None = None,
    *,
    two_m: str = "gas",
    denoise_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigma-space coefficient matrices ``(X, M)`` of the update rule on ``sigmas`` (float64, ``[N, N]`` each).

    ``a``/``c`` are the ``[N, N]`` corrections (None = zero). With ``denoise_last`` the final sigma is 0 and the last
    step returns the newest data prediction (k-diffusion's convention).
    """
    if two_m not in TWO_M_FORMS:
        raise ValueError(f"two_m must be one of {TWO_M_FORMS}, got {two_m!r}")
    s = sigmas.to(torch.float64)
    n = s.numel() - 1
    live = s[:n] if denoise_last else s  # lambda is infinite at a final sigma of 0
    tensors = [schedule.lam(live), schedule.alpha(live), schedule.sigma_dpm(s), schedule.rho(s)]
    corrections = [m.to(torch.float64) if m is not None else None for m in (a, c)]
    track = torch.is_grad_enabled() and any(t.requires_grad for t in tensors + corrections if t is not None)
    if track:  # 0-dim tensors: differentiable in the solver parameters
        lam, alpha, sig, rho = tensors
        a64, c64 = corrections
        expm1 = torch.expm1
        zero = torch.zeros((), dtype=torch.float64, device=s.device)
    else:  # python floats: the same arithmetic, an order of magnitude cheaper per scalar
        lam, alpha, sig, rho = (t.detach().cpu().tolist() for t in tensors)
        a64, c64 = (m.detach().cpu().tolist() if m is not None else None for m in corrections)
        expm1 = math.expm1
        zero = 0.0

    def corr(mat, i: int, j: int):
        return zero if mat is None else mat[i][j]

    y_rows: list[list] = []
    m_rows: list[list] = []
    for k in range(1, n + 1):
        j = k - 1
        yr = [zero] * n
        mr = [zero] * n
        if denoise_last and k == n:  # k-diffusion's final step to sigma 0: x_N = m_{N-1}
            mr[k - 1] = zero + 1.0
            y_rows.append([y / rho[k] for y in yr])
            m_rows.append(mr)
            continue
        h = lam[k] - lam[k - 1]
        phi1 = expm1(-h)
        phi2 = phi1 / h + 1.0
        phi3 = phi2 / h - 0.5
        yr[k - 1] = sig[k] / sig[k - 1] + corr(a64, 0, j)
        mr[k - 1] = -(alpha[k] * phi1 + corr(c64, 0, j))
        if k == 2:
            r0 = (lam[1] - lam[0]) / h
            g = -(0.5 * alpha[k] * phi1) if two_m == "gas" else alpha[k] * phi2
            g = g - corr(c64, 1, j)
            mr[1] = mr[1] + g / r0
            mr[0] = mr[0] - g / r0
            yr[0] = yr[0] + corr(a64, 1, j)
        elif k >= 3:
            r0 = (lam[k - 1] - lam[k - 2]) / h
            r1 = (lam[k - 2] - lam[k - 3]) / h
            g1 = alpha[k] * phi2 + corr(c64, 1, j)  # multiplies D1
            g2 = -(alpha[k] * phi3 + corr(c64, 2, j))  # multiplies D2
            w = r0 / (r0 + r1)
            u = g1 * (1.0 + w) + g2 / (r0 + r1)  # multiplies D1_0
            v = -g1 * w - g2 / (r0 + r1)  # multiplies D1_1
            mr[k - 1] = mr[k - 1] + u / r0
            mr[k - 2] = mr[k - 2] - u / r0 + v / r1
            mr[k - 3] = mr[k - 3] - v / r1
            for i in range(4, k + 1):
                mr[k - i] = mr[k - i] + corr(c64, i - 1, j)
            for i in range(2, k + 1):
                yr[k - i] = yr[k - i] + corr(a64, i - 1, j)
        # to sigma space: x_k = y_k / rho_k with y_i = rho_i x_i
        y_rows.append([yr[i] * rho[i] / rho[k] for i in range(n)])
        m_rows.append([mr[i] / rho[k] for i in range(n)])

    if track:
        return torch.stack([torch.stack(r) for r in y_rows]), torch.stack([torch.stack(r) for r in m_rows])
    return torch.tensor(y_rows, dtype=torch.float64), torch.tensor(m_rows, dtype=torch.float64)
