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
network time.
"""

from __future__ import annotations

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
    dev = s.device
    lam = schedule.lam(s[:n] if denoise_last else s)
    rho = schedule.rho(s)
    alpha = schedule.alpha(s[:n] if denoise_last else s)
    sig = schedule.sigma_dpm(s)

    # Rows are assembled as python lists of 0-dim tensors (keeps autograd simple and exact), then stacked.
    zero = torch.zeros((), dtype=torch.float64, device=dev)
    y_rows: list[list[torch.Tensor]] = []
    m_rows: list[list[torch.Tensor]] = []

    def corr(mat: torch.Tensor | None, i: int, j: int) -> torch.Tensor:
        return zero if mat is None else mat[i, j].to(torch.float64)

    for k in range(1, n + 1):
        j = k - 1
        yr = [zero] * n
        mr = [zero] * n
        if denoise_last and k == n:
            mr[k - 1] = torch.ones((), dtype=torch.float64, device=dev)
            y_rows.append(yr)
            m_rows.append(mr)
            continue
        h = lam[k] - lam[k - 1]
        phi1 = torch.expm1(-h)
        phi2 = phi1 / h + 1.0
        phi3 = phi2 / h - 0.5
        yr[k - 1] = sig[k] / sig[k - 1] + corr(a, 0, j)
        mr[k - 1] = -(alpha[k] * phi1 + corr(c, 0, j))
        if k == 2:
            r0 = (lam[1] - lam[0]) / h
            g = -(0.5 * alpha[k] * phi1) if two_m == "gas" else alpha[k] * phi2
            g = g - corr(c, 1, j)
            mr[1] = mr[1] + g / r0
            mr[0] = mr[0] - g / r0
            yr[0] = yr[0] + corr(a, 1, j)
        elif k >= 3:
            r0 = (lam[k - 1] - lam[k - 2]) / h
            r1 = (lam[k - 2] - lam[k - 3]) / h
            g1 = alpha[k] * phi2 + corr(c, 1, j)  # multiplies D1
            g2 = -(alpha[k] * phi3 + corr(c, 2, j))  # multiplies D2
            w = r0 / (r0 + r1)
            u = g1 * (1.0 + w) + g2 / (r0 + r1)  # multiplies D1_0
            v = -g1 * w - g2 / (r0 + r1)  # multiplies D1_1
            mr[k - 1] = mr[k - 1] + u / r0
            mr[k - 2] = mr[k - 2] - u / r0 + v / r1
            mr[k - 3] = mr[k - 3] - v / r1
            for i in range(4, k + 1):
                mr[k - i] = mr[k - i] + corr(c, i - 1, j)
            for i in range(2, k + 1):
                yr[k - i] = yr[k - i] + corr(a, i - 1, j)
        y_rows.append(yr)
        m_rows.append(mr)

    y_mat = torch.stack([torch.stack(r) for r in y_rows])
    m_mat = torch.stack([torch.stack(r) for r in m_rows])
    # to sigma space: x_k = y_k / rho_k, y_i = rho_i x_i
    rho_next = rho[1:].reshape(-1, 1)
    x_mat = y_mat * rho[:n].reshape(1, -1) / rho_next
    m_mat = m_mat / rho_next
    if denoise_last:
        x_mat = x_mat.clone()
        m_mat = m_mat.clone()
        x_mat[n - 1] = 0.0
        m_mat[n - 1] = 0.0
        m_mat[n - 1, n - 1] = 1.0
    return x_mat, m_mat
