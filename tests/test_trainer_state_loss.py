"""The loss on intermediate states (trainer/trajectory.py, ``DistillConfig.state_loss``): the kept teacher steps, the
transported targets against the teacher's own states, the trajectory cache beside the end states, and training with
the loss on (GS, GAS, resume)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from gas import sample_gas
from tests.trainer_helpers import tiny_config, tiny_problem
from trainer.config import DistillConfig
from trainer.distill import distill
from trainer.errors import ConfigError, ResumeError, TrainingInterruptedError
from trainer.runtime import resolve_amp
from trainer.teacher import (
    SHARD_SIZE,
    kept_sigmas,
    make_teacher_spec,
    run_teacher,
    run_teacher_trajectory,
    sample_noise,
)
from trainer.teacher_data import load_teacher
from trainer.trajectory import kept_steps, state_distances, state_weight


def test_kept_steps_spread_evenly_from_the_start():
    assert kept_steps(64, 8) == [0, 8, 16, 24, 32, 40, 48, 56]
    assert kept_steps(5, 2) == [0, 2]
    assert kept_steps(3, 10) == [0, 1, 2]  # no more points than steps
    assert kept_steps(64, 1) == [0]


def test_state_weight_anneal():
    assert state_weight(0.5, "none", 700, 1000) == 0.5
    assert state_weight(2.0, "linear", 1, 100) == 2.0
    assert state_weight(2.0, "linear", 51, 100) == pytest.approx(1.0)
    assert state_weight(2.0, "linear", 100, 100) == pytest.approx(0.02)


def _trajectory(p, steps=48, points=8, n=6):
    cfg = DistillConfig(teacher_steps=steps, state_points=points, state_loss=1.0)
    spec = make_teacher_spec(p, cfg)
    idx = list(range(n))
    noise = sample_noise(idx, p.latent_shape, 42)
    keep = kept_steps(steps, points)
    traj = run_teacher_trajectory(p, spec, noise, p.conditions(idx), keep)
    return spec, noise, idx, keep, traj


def test_trajectory_end_equals_the_plain_teacher_and_states_sit_on_its_grid():
    p = tiny_problem()
    spec, noise, idx, keep, traj = _trajectory(p)
    assert traj.shape == (len(idx), 1 + 2 * len(keep), *p.latent_shape)
    torch.testing.assert_close(traj[:, 0], run_teacher(p, spec, noise, p.conditions(idx)), rtol=0, atol=0)
    # the first kept state is the start state; the state kept at step k is the teacher run for k steps
    s = torch.tensor(spec.sigmas, dtype=torch.float64)
    torch.testing.assert_close(traj[:, 1], p.schedule.initial_state(noise, s[0]).float())
    k = keep[3]
    part = sample_gas(p.denoiser, p.schedule.initial_state(noise, s[0]), s[:k + 1], extra_args=p.conditions(idx),
                      disable=True, schedule=p.schedule).float()
    torch.testing.assert_close(traj[:, 1 + 3], part, rtol=1e-5, atol=1e-5)
    assert torch.equal(kept_sigmas(p, spec, keep), s[keep])


def test_targets_match_the_teacher_between_kept_points():
    """At a kept sigma the distance to the kept state itself is 0; between kept points the transported target is
    much closer to the teacher's true state there than the nearest kept state is."""
    p = tiny_problem()
    spec, noise, idx, keep, traj = _trajectory(p, steps=48, points=8)
    sig = kept_sigmas(p, spec, keep)
    states = traj[:, 1:]
    on_grid = [(traj[:, 1 + 4].clone(), sig[4].clone())]
    assert float(state_distances(p.schedule, on_grid, states, sig).abs().max()) < 1e-6
    s = torch.tensor(spec.sigmas, dtype=torch.float64)
    mid = keep[4] + 3  # three teacher steps past kept point 4 (kept points are 6 steps apart)
    truth = sample_gas(p.denoiser, p.schedule.initial_state(noise, s[0]), s[:mid + 1], extra_args=p.conditions(idx),
                       disable=True, schedule=p.schedule).float()
    err = state_distances(p.schedule, [(truth, s[mid].clone())], states, sig)
    rho_mid, rho_4 = p.schedule.rho(s[mid]), p.schedule.rho(sig[4])
    nearest = (rho_mid * truth - rho_4 * traj[:, 1 + 4]).abs().flatten(1).mean(1)
    assert bool((err < 0.05 * nearest).all()), (err, nearest)


def test_state_distance_has_gradients_in_states_and_sigmas():
    p = tiny_problem()
    spec, _, idx, keep, traj = _trajectory(p)
    sig = kept_sigmas(p, spec, keep)
    s = (sig[2] * 0.8).clone().requires_grad_(True)
    x = (traj[:, 1 + 2] * 1.01).clone().requires_grad_(True)
    d = state_distances(p.schedule, [(x, s)], traj[:, 1:], sig)
    d.sum().backward()
    assert d.shape == (len(idx),) and bool((d > 0).all())
    assert float(x.grad.abs().sum()) > 0 and float(s.grad.abs()) > 0


def test_trajectory_cache_is_its_own_and_keeps_the_end_states(tmp_path):
    p = tiny_problem()
    amp = resolve_amp("off", p.device)
    plain = load_teacher(p, tiny_config(tmp_path), amp, progress=False)
    with_states = load_teacher(p, tiny_config(tmp_path, state_loss=1.0, state_points=4), amp, progress=False)
    assert plain.train_states is None and plain.state_sigmas is None
    assert with_states.cache.dir != plain.cache.dir
    assert torch.equal(with_states.train_lat, plain.train_lat) and torch.equal(with_states.val_lat, plain.val_lat)
    # the held-out samples need no trajectory: they are read from the plain cache, not generated again with one
    assert not with_states.cache.read_shard(with_states.val_idx[0] // SHARD_SIZE)
    assert plain.cache.read_shard(with_states.val_idx[0] // SHARD_SIZE)
    assert with_states.train_states.shape == (32, 8, *p.latent_shape)
    assert with_states.state_sigmas.shape == (4,)
    again = load_teacher(p, tiny_config(tmp_path, state_loss=0.5, state_points=4), amp, progress=False)
    assert again.cache.dir == with_states.cache.dir  # the weight does not change the samples
    assert torch.equal(again.train_states, with_states.train_states)


def test_a_trajectory_cache_over_the_memory_budget_is_read_from_its_shards(tmp_path, monkeypatch):
    """Above ``TRAJECTORY_MEMORY_BYTES`` the kept trajectory stays in the cache's shards (read a batch at a time):
    the same end states, the same batches and a bit-identical trained solver as with the trajectory in memory."""
    import trainer.teacher_data as teacher_data
    from trainer.batches import training_batch
    from trainer.shard_rows import ShardRows

    p = tiny_problem()
    amp = resolve_amp("off", p.device)
    cfg = tiny_config(tmp_path, train_size=100, state_loss=1.0, state_points=4, iters=12, lr=3e-3)  # two shards
    held = load_teacher(p, cfg, amp, progress=False)
    assert torch.is_tensor(held.train_states)
    monkeypatch.setattr(teacher_data, "TRAJECTORY_MEMORY_BYTES", 0)
    read = load_teacher(p, cfg, amp, progress=False)
    assert isinstance(read.train_states, ShardRows) and read.train_states.shape == held.train_states.shape
    assert torch.equal(read.train_lat, held.train_lat) and torch.equal(read.train_noise, held.train_noise)
    assert torch.equal(read.train_states[[99, 0, 64, 63]], held.train_states[[99, 0, 64, 63]])
    for step in (1, 7, 30):
        a = training_batch(p, cfg, step, read.train_noise, read.train_lat, train_states=read.train_states)
        b = training_batch(p, cfg, step, held.train_noise, held.train_lat, train_states=held.train_states)
        assert torch.equal(a.states, b.states) and torch.equal(a.real, b.real)
    on_disk = distill(p, replace(cfg, out_dir=str(tmp_path / "a"), run_dir=str(tmp_path / "ra")), progress=False)
    monkeypatch.setattr(teacher_data, "TRAJECTORY_MEMORY_BYTES", 1 << 40)
    in_memory = distill(p, replace(cfg, out_dir=str(tmp_path / "b"), run_dir=str(tmp_path / "rb")), progress=False)
    for x, y in zip(on_disk.solver.parameters(), in_memory.solver.parameters(), strict=True):
        assert torch.equal(x, y)
    # a fresh cache generated straight into the shards (nothing held in memory) holds the same samples
    monkeypatch.setattr(teacher_data, "TRAJECTORY_MEMORY_BYTES", 0)
    fresh = load_teacher(p, replace(cfg, cache_dir=str(tmp_path / "fresh")), amp, progress=False)
    assert torch.equal(fresh.train_states[list(range(100))], held.train_states)


@pytest.mark.parametrize("mode", ["gs", "gas"])
def test_training_with_the_state_loss(tmp_path, mode):
    p = tiny_problem()
    seen = []
    res = distill(p, tiny_config(tmp_path, mode=mode, state_loss=1.0, state_points=6, log_every=1,
                                 state_anneal="linear"), progress=False,
                  callback=lambda step, stats: seen.append(stats))
    assert all("state" in s and s["state"] > 0 for s in seen if "loss" in s)
    assert all("adv" in s for s in seen if "loss" in s) == (mode == "gas")
    assert res.solver_path.is_file()


def test_state_loss_moves_the_solver_and_lowers_the_state_distance(tmp_path):
    """Same seed, same batches: the state loss changes the trained solver, and its states end closer to the
    teacher's trajectory than without it."""
    p = tiny_problem()
    runs = {}
    for w in (0.0, 2.0):
        cfg = tiny_config(tmp_path / str(w), iters=60, state_loss=w, lr=3e-3)
        res = distill(p, cfg, progress=False)
        runs[w] = res.solver
    amp = resolve_amp("off", p.device)
    data = load_teacher(p, tiny_config(tmp_path / "eval", state_loss=1.0), amp, progress=False)
    from trainer.runtime import run_student, start_state
    from trainer.teacher import end_sigmas

    s0 = end_sigmas(p, DistillConfig().t_eps)[0]
    dists = {}
    for w, solver in runs.items():
        states: list = []
        run_student(p, solver, start_state(p, data.train_noise, s0), p.conditions(list(range(32))),
                    autocast=amp, differentiable=False, states=states)
        assert len(states) == 3  # NFE 4: states 1..3
        dists[w] = float(state_distances(p.schedule, states, data.train_states, data.state_sigmas).mean())
    assert dists[2.0] < dists[0.0], dists
    assert not torch.equal(runs[2.0].sigmas(p.schedule), runs[0.0].sigmas(p.schedule))


@pytest.mark.parametrize(("change", "message"), [
    ({"state_loss": -1.0}, "state_loss must be a finite weight"),
    ({"state_loss": float("nan")}, "state_loss must be a finite weight"),
    ({"state_points": 0}, "state_points must be at least 1"),
    ({"state_anneal": "cosine"}, "state_anneal must be one of none, linear"),
])
def test_bad_state_loss_values_are_one_sentence(change, message):
    with pytest.raises(ConfigError, match=message):
        DistillConfig(**change).validate()


def test_resume_with_the_state_loss_is_exact_and_refuses_another_weight(tmp_path):
    from tests.test_trainer_recipe import assert_resume_is_exact

    assert_resume_is_exact(tmp_path / "exact", 4, iters=10, ckpt_every=100, state_loss=1.0, state_anneal="linear",
                           report=False)
    cfg = tiny_config(tmp_path / "other", iters=10, ckpt_every=100, report=False, state_loss=1.0)
    steps: list[int] = []
    with pytest.raises(TrainingInterruptedError):
        distill(tiny_problem(), cfg, progress=False, callback=lambda step, _: steps.append(step),
                should_stop=lambda: len(steps) >= 2)
    with pytest.raises(ResumeError, match=r"state_loss=1\.0 but this run has state_loss=0\.5"):
        distill(tiny_problem(), tiny_config(tmp_path / "other", iters=10, resume=True, report=False, state_loss=0.5),
                progress=False)


def test_cli_state_loss_options():
    from trainer import cli

    args = cli.build_parser().parse_args(["--ckpt", "x", "--state-loss", "0.5", "--state-points", "16",
                                          "--state-anneal", "linear"])
    cfg = cli.config_from_args(args)
    assert (cfg.state_loss, cfg.state_points, cfg.state_anneal) == (0.5, 16, "linear")
    paper = cli.config_from_args(cli.build_parser().parse_args(["--ckpt", "x", "--recipe", "paper"]))
    assert paper.state_loss == 0.0


def test_target_is_the_exact_ode_solution_when_the_denoiser_is_linear_in_lambda():
    """VE sigma space, D(lambda) linear between two kept points: the target equals an RK4 integration of the
    data-prediction ODE dy/dlambda = -alpha^2 y + alpha D (y = rho x, alpha = rho = 1/sqrt(1+s^2))."""
    from gas.schedules import VESigmaSpace

    sched = VESigmaSpace()
    gen = torch.Generator().manual_seed(0)
    x0, d0, d1 = (torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    sig = torch.tensor([8.0, 2.0], dtype=torch.float64)
    lam = -torch.log(sig)
    kept = torch.stack([x0, torch.zeros_like(x0), d0, d1], 1)  # states (only the first is read), then denoised
    s_target = torch.tensor(3.5, dtype=torch.float64)

    def denoised(lm):
        return d0 + (lm - lam[0]) / (lam[1] - lam[0]) * (d1 - d0)

    def slope(lm, y):
        a = 1.0 / torch.sqrt(1.0 + torch.exp(-2.0 * lm))
        return -a * a * y + a * denoised(lm)

    y = x0 / torch.sqrt(1.0 + sig[0] ** 2)
    lm, end, n = lam[0].clone(), -torch.log(s_target), 2000
    h = (end - lm) / n
    for _ in range(n):
        k1 = slope(lm, y)
        k2 = slope(lm + h / 2, y + h / 2 * k1)
        k3 = slope(lm + h / 2, y + h / 2 * k2)
        k4 = slope(lm + h, y + h * k3)
        y, lm = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), lm + h
    x_true = y * torch.sqrt(1.0 + s_target ** 2)
    dist = state_distances(sched, [(x_true, s_target)], kept, sig)
    assert float(dist.max()) < 1e-6, dist
    moved = state_distances(sched, [(x_true * 1.001, s_target)], kept, sig)
    assert float(moved.min()) > 1e-5


def test_ipndm_gits_teacher_keeps_its_trajectory_too(tmp_path):
    p = tiny_problem()
    amp = resolve_amp("off", p.device)
    kw = {"teacher": "ipndm-gits", "nfe": 4, "teacher_steps": 5}
    plain = load_teacher(p, tiny_config(tmp_path, **kw), amp, progress=False)
    with_states = load_teacher(p, tiny_config(tmp_path, state_loss=1.0, **kw), amp, progress=False)
    assert torch.equal(with_states.train_lat, plain.train_lat)
    steps = with_states.spec.steps  # NFE + 1 = 5: every step is kept (fewer steps than state_points)
    assert with_states.train_states.shape[1] == 2 * steps
    start = p.schedule.initial_state(plain.train_noise, with_states.spec.sigmas[0]).float()
    torch.testing.assert_close(with_states.train_states[:, 0], start)
