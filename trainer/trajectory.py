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
    kept states' sigmas, decreasing. Returns ``[B]`` float32 (zeros for a one-step solver).
    """
    points = teacher_sigmas.numel()
    if not student:
        return teacher_states.new_zeros(teacher_states.shape[0], dtype=torch.float32)
    lam_kept = schedule.lam(teacher_sigmas.to(torch.float64))
    terms = []
    for x, s in student:
        s_val = float(s.detach())
        at_or_above = (teacher_sigmas >= s_val * (1.0 - 1e-9)).nonzero()
        j = int(at_or_above.max()) if at_or_above.numel() else 0
        x32 = x.float()
        s32 = s.to(device=x32.device, dtype=torch.float32)
        s_j = teacher_sigmas[j].to(device=x32.device, dtype=torch.float32)
        y_j = schedule.rho(s_j) * teacher_states[:, j].to(x32)
        d_j = teacher_states[:, points + j].to(x32)
        r = schedule.sigma_dpm(s32) / schedule.sigma_dpm(s_j)
        h = schedule.lam(s32) - schedule.lam(s_j)
        target = r * y_j + schedule.alpha(s32) * (-torch.expm1(-h)) * d_j
        if points > 1:  # the slope of D in lambda: this segment's, or after the last kept point the one before it
            a, b = (j, j + 1) if j + 1 < points else (j - 1, j)
            slope = (teacher_states[:, points + b] - teacher_states[:, points + a]).to(x32) / float(
                lam_kept[b] - lam_kept[a])
            target = target + schedule.alpha(s32) * (h + torch.expm1(-h)) * slope  # h - 1 + e^-h
        terms.append((schedule.rho(s32) * x32 - target).abs().flatten(1).mean(1))
    return torch.stack(terms, 1).mean(1)
