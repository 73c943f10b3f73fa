"""The loss on intermediate states (``DistillConfig.state_loss``): the student's states against the teacher's ODE
trajectory, not only its end state.

The teacher keeps, per training sample, its state ``x_j`` and denoised output ``D_j`` at ``state_points`` of its
steps (:func:`kept_steps`: spread evenly over them, the first included). The target at a student sigma ``s`` comes
from the last kept point ``s_j >= s``, in the DPM state ``y = rho(s) x`` (``gas.schedules.NoiseSchedule``; unit
scale at every noise level), by the exact data-prediction ODE solution with the denoised output taken linear in
``lambda`` between ``D_j`` and the next kept point's ``D_{j+1}`` (DPM-Solver++'s second-order model; after the last
kept point the slope of the segment before it):

    y*(s) = r y_j + alpha(s) [(1 - e^-h) D_j + (h - 1 + e^-h) (D_{j+1} - D_j) / H],
    r = sigma_dpm(s) / sigma_dpm(s_j),  h = lambda(s) - lambda(s_j),  H = lambda(s_{j+1}) - lambda(s_j),

exact where ``s = s_j``, second-order accurate between kept points, and differentiable in ``s``, so the learned
timesteps get gradients from it too. A sample's distance is the mean ``|rho(s_k) x_k - y*(s_k)|`` over the
student's intermediate states ``x_1 .. x_{N-1}`` (:func:`state_distances`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gas.schedules import NoiseSchedule

__all__ = ["kept_steps", "state_distances", "state_weight"]


def kept_steps(steps: int, points: int) -> list[int]:
    """The teacher steps (0-based, state before the step) whose state and denoised output are kept: ``points`` of
    the ``steps``, spread evenly, step 0 (the start) included."""
    points = max(1, min(int(points), int(steps)))
    return sorted({(k * steps) // points for k in range(points)})


def state_weight(weight: float, anneal: str, step: int, iters: int) -> float:
    """The state loss's weight at iteration ``step`` (1-based) of ``iters``: ``weight`` ("none"), or decayed
    linearly from ``weight`` at the first iteration to 0 after the last ("linear")."""
    if anneal == "linear":
        return weight * (1.0 - (step - 1) / max(1, iters))
    return weight


def state_distances(schedule: NoiseSchedule, student: Sequence[tuple[torch.Tensor, torch.Tensor]],
                    teacher_states: torch.Tensor, teacher_sigmas: torch.Tensor) -> torch.Tensor:
    """Per-sample mean L1 in DPM state space between the student's intermediate states and the teacher trajectory.

    ``student``: ``(x_k, s_k)`` for k = 1 .. N-1 (``s_k`` a 0-dim tensor, differentiable); ``teacher_states``:
    ``[B, 2P, *latent]``, the P kept states then their P denoised outputs; ``teacher_sigmas``: ``[P]`` float64, the
    kept states' sigmas, decreasing. Returns ``[B]`` float32 (zeros for a one-step solver). All K states are done at
    once (no host synchronisation: the kept point of each state is found on the device).
    """
    points = teacher_sigmas.numel()
    if not student:
        return teacher_states.new_zeros(teacher_states.shape[0], dtype=torch.float32)
    x = torch.stack([xk.float() for xk, _ in student], 1)  # [B, K, *latent]
    dev = x.device
    kept = teacher_sigmas.to(device=dev, dtype=torch.float64)
    s_in = torch.stack([sk.reshape(()).to(dev) for _, sk in student])  # [K], the student's own dtype
    s = s_in.float()
    # j_k: the last kept point at or above s_k (the kept sigmas decrease), 0 above the first
    j = ((kept[None, :] >= s_in.detach().double()[:, None] * (1.0 - 1e-9)).sum(1) - 1).clamp(min=0)
    shape = (1, -1) + (1,) * (x.dim() - 2)  # a [K] vector against [B, K, *latent]

    def per_state(v: torch.Tensor) -> torch.Tensor:
        return v.reshape(shape)

    s_j = kept[j].float()
    y_j = per_state(schedule.rho(s_j)) * teacher_states[:, j].to(x)
    d_j = teacher_states[:, points + j].to(x)
    r = schedule.sigma_dpm(s) / schedule.sigma_dpm(s_j)
    h = schedule.lam(s) - schedule.lam(s_j)
    alpha = schedule.alpha(s)
    target = per_state(r) * y_j + per_state(alpha * -torch.expm1(-h)) * d_j
    if points > 1:  # the slope of D in lambda: this segment's, or after the last kept point the one before it
        a = torch.where(j + 1 < points, j, j - 1)
        lam_kept = schedule.lam(kept)
        gap = (lam_kept[a + 1] - lam_kept[a]).float()
        slope = (teacher_states[:, points + a + 1] - teacher_states[:, points + a]).to(x) / per_state(gap)
        target = target + per_state(alpha * (h + torch.expm1(-h))) * slope  # h - 1 + e^-h
    return (per_state(schedule.rho(s)) * x - target).abs().flatten(2).mean(2).mean(1)
