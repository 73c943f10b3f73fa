"""Trainer building blocks: the demo teacher, baselines, discriminator, losses, EMA, data order, metrics, report."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import gas
from tests.trainer_helpers import tiny_config, tiny_problem
from trainer.baselines import dpmpp_2m, dpmpp_3m, ipndm
from trainer.batches import batch_indices
from trainer.config import DistillConfig
from trainer.demo import GaussianMixtureDenoiser
from trainer.discriminator import LatentDiscriminator, stage_count
from trainer.ema import EMA
from trainer.errors import ConfigError
from trainer.evaluate import sliced_wasserstein
from trainer.gits import comfyui_gits_sigmas, logsnr_grid, search_gits_sigmas
from trainer.losses import discriminator_loss, generator_adversarial_loss, l1_latents
from trainer.report import save_grid, scores_table
from trainer.runtime import Autocast, run_student

SCHED = gas.DiscreteVPSchedule.sd_linear()


def test_mixture_denoiser_matches_dense_gaussian_algebra():
    den = GaussianMixtureDenoiser(channels=2, size=4, classes=3, components=2, rank=3, tau=0.1, cfg=2.5)
    dim = den.dim
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64) * 2
    s = torch.tensor([0.3, 1.0, 3.0], dtype=torch.float64)
    cls = torch.tensor([0, 2, 1])
    out = den(x, s, cond=cls)
    eye = torch.eye(dim, dtype=torch.float64)
    for b in range(3):
        logs, means = [], []
        for k in range(den.means.shape[0]):
            sig = den.bases[k] @ torch.diag(den.eigs[k]) @ den.bases[k].T + den.tau2 * eye
            cov = sig + s[b] ** 2 * eye
            v = x[b].reshape(-1) - den.means[k]
            logs.append(torch.distributions.MultivariateNormal(den.means[k], cov).log_prob(x[b].reshape(-1)))
            means.append(den.means[k] + sig @ torch.linalg.solve(cov, v))
        logs_t, means_t = torch.stack(logs), torch.stack(means)
        d_u = torch.softmax(logs_t, 0) @ means_t
        d_c = torch.softmax(logs_t.masked_fill(den.labels != cls[b], -math.inf), 0) @ means_t
        torch.testing.assert_close(out[b].reshape(-1), d_u + 2.5 * (d_c - d_u), rtol=1e-10, atol=1e-10)


def test_mixture_nll_matches_dense_gaussian_algebra():
    den = GaussianMixtureDenoiser(channels=1, size=3, classes=2, components=2, rank=2, tau=0.1)
    x = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    cls = torch.tensor([1, 0])
    out = den.nll(x, 0.5, cls)
    eye = torch.eye(den.dim, dtype=torch.float64)
    for b in range(2):
        logs = [torch.distributions.MultivariateNormal(
            den.means[k], den.bases[k] @ torch.diag(den.eigs[k]) @ den.bases[k].T + (den.tau2 + 0.25) * eye
        ).log_prob(x[b].reshape(-1)) for k in range(4) if den.labels[k] == cls[b]]
        ref = -(torch.logsumexp(torch.stack(logs), 0) - math.log(2)) / den.dim
        torch.testing.assert_close(out[b], ref)


def test_mixture_denoiser_limits():
    den = GaussianMixtureDenoiser(channels=2, size=4, classes=2, components=1, rank=2, tau=0.05, cfg=0.0)
    x = den.sample_data(torch.tensor([0, 1]), torch.Generator().manual_seed(0)).double()
    # tiny sigma: the denoiser is (nearly) the identity on data; huge sigma: the data mean
    torch.testing.assert_close(den(x, torch.tensor(1e-4)), x, atol=1e-4, rtol=0)
    far = den(torch.zeros_like(x), torch.tensor(1e4))
    torch.testing.assert_close(far[0], den.means.mean(0).reshape(2, 4, 4), atol=1e-3, rtol=0)


def _ve_problem():
    p = tiny_problem()
    s = logsnr_grid(SCHED, 14.6146, 0.0292, 5)
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64) * 14.6
    return p, s, x, p.conditions([0, 1, 2])


def test_dpmpp_2m_matches_k_diffusion():
    kd = pytest.importorskip("k_diffusion")
    p, s, x, cond = _ve_problem()
    ours = dpmpp_2m(p.denoiser, x, s, cond, schedule=SCHED)
    ref = kd.sampling.sample_dpmpp_2m(p.denoiser, x, s, extra_args=cond, disable=True)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_dpmpp_3m_is_the_untrained_solver_and_ipndm_order_one_is_euler():
    p, s, x, cond = _ve_problem()
    torch.testing.assert_close(dpmpp_3m(p.denoiser, x, s, cond, schedule=SCHED),
                               gas.sample_gas(p.denoiser, x, s, extra_args=cond, disable=True, schedule=SCHED))
    y = x.clone()
    for k in range(len(s) - 1):
        y = y + (s[k + 1] - s[k]) * (y - p.denoiser(y, s[k].expand(3), **cond)) / s[k]
    torch.testing.assert_close(ipndm(p.denoiser, x, s, cond, order=1), y.float().double(), rtol=1e-5, atol=1e-5)


def test_ipndm_converges_with_its_order():
    p, _, x, cond = _ve_problem()
    ref = dpmpp_3m(p.denoiser, x, logsnr_grid(SCHED, 14.6146, 0.0292, 160), cond, schedule=SCHED)
    errs = {}
    for order in (1, 2):
        errs[order] = [float((ipndm(p.denoiser, x, logsnr_grid(SCHED, 14.6146, 0.0292, n), cond, order=order)
                              - ref).abs().mean()) for n in (16, 32)]
    assert errs[1][1] < errs[1][0] and errs[2][1] < errs[2][0]
    assert errs[2][1] < errs[1][1] / 3  # second order beats first order clearly


def test_discriminator_any_size_and_paper_size():
    assert [stage_count(s, s) for s in (3, 4, 8, 16, 64, 128)] == [1, 1, 2, 3, 5, 6]
    for shape in ((4, 8, 8), (3, 5, 7), (4, 3, 3), (2, 24, 16)):
        d = LatentDiscriminator(*shape, widths=(16, 32), groups=(2, 4))
        assert d(torch.randn(2, *shape)).shape == (2,)
    paper = LatentDiscriminator(4, 64, 64)
    assert abs(sum(p.numel() for p in paper.parameters()) - 22.38e6) < 0.01e6  # R3GAN latent_4: 22.38 M
    with pytest.raises(ValueError, match="built for"):
        paper(torch.randn(1, 4, 32, 32))


def test_relativistic_losses_and_penalties():
    torch.manual_seed(0)
    d = LatentDiscriminator(2, 8, 8, widths=(8, 16), groups=(2, 4))
    real, fake = torch.randn(3, 2, 8, 8), torch.randn(3, 2, 8, 8)
    loss, parts = discriminator_loss(d, real, fake, gamma=0.2)
    r = real.clone().requires_grad_(True)
    g = torch.autograd.grad(d(r).sum(), r)[0]
    torch.testing.assert_close(parts["r1"], g.square().flatten(1).sum(1))
    expected = torch.nn.functional.softplus(d(fake) - d(real)) + 0.1 * (parts["r1"] + parts["r2"])
    torch.testing.assert_close(loss, expected)
    loss.mean().backward()  # penalties are differentiable (create_graph)
    assert all(p.grad is not None for p in d.parameters() if p.requires_grad)
    fake_p = fake.clone().requires_grad_(True)
    adv = generator_adversarial_loss(d, real, fake_p)
    torch.testing.assert_close(adv, torch.nn.functional.softplus(d(real) - d(fake)))
    adv.sum().backward()
    assert fake_p.grad is not None and fake_p.grad.abs().sum() > 0


def test_l1_and_swd():
    a, b = torch.zeros(4, 2, 3), torch.ones(4, 2, 3)
    torch.testing.assert_close(l1_latents(a, b), torch.ones(4))
    x = torch.randn(200, 10)
    assert sliced_wasserstein(x, x[torch.randperm(200)]) < 1e-12  # a set distance: order does not matter
    assert sliced_wasserstein(x, x + 1.0) > sliced_wasserstein(x, x + 0.1) > 0


def test_ema_warmup_matches_torch_ema_formula():
    p = torch.nn.Parameter(torch.zeros(2))
    ema = EMA([p], decay=0.999)
    shadow = torch.zeros(2)
    for n in range(1, 30):
        with torch.no_grad():
            p.add_(1.0)
        ema.update([p])
        d = min(0.999, (1 + n) / (10 + n))
        shadow = shadow - (1 - d) * (shadow - p.detach())
        torch.testing.assert_close(ema.shadow[0], shadow)


def test_data_order_is_a_pure_function_of_seed_and_step():
    cfg = DistillConfig(train_size=10, batch=3)
    epoch0 = [i for step in (1, 2, 3) for i in batch_indices(cfg, step)]
    assert len(set(epoch0)) == 9  # one permutation, remainder dropped
    assert batch_indices(cfg, 2) == batch_indices(cfg, 2)
    assert batch_indices(cfg, 4) != batch_indices(DistillConfig(train_size=10, batch=3, seed=1), 4)


def test_config_rejects_bad_values():
    """The library's messages name the parameter (the CLI's name the option, see test_trainer_cli)."""
    for kw, word in (({"nfe": 0}, "nfe must"), ({"nfe": 17}, "nfe must"), ({"batch": 8, "train_size": 4}, "batch \\("),
                     ({"lr": -1.0}, "lr must"), ({"mode": "x"}, "mode must"), ({"name": "a/b"}, "name 'a/b'"),
                     ({"disc_widths": (30,), "disc_groups": (7,)}, "divisible")):
        with pytest.raises(ConfigError, match=f"^{word}" if word != "divisible" else word) as info:
            DistillConfig(**kw).validate()
        assert "--" not in str(info.value) and "`" not in str(info.value)


def test_student_gradients_reach_every_used_parameter_and_checkpointing_is_transparent(tmp_path):
    p = tiny_problem()
    grads = {}
    for ckpt in (True, False):
        solver = gas.GeneralizedSolver(4, schedule=p.schedule)  # untrained: t_couple exactly 0
        x = p.schedule.initial_state(torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(0)), 14.6146)
        out = run_student(p, solver, x, p.conditions([0, 1]), autocast=Autocast(torch.device("cpu"), None),
                          differentiable=True, grad_checkpoint=ckpt)
        out.square().mean().backward()
        grads[ckpt] = {n: q.grad.clone() for n, q in solver.named_parameters()}
    for name in ("mu_logit", "t_couple", "a", "c"):
        torch.testing.assert_close(grads[True][name], grads[False][name])
    mask = gas.GeneralizedSolver(4).used_mask()
    assert (grads[True]["t_couple"] != 0).all() and (grads[True]["mu_logit"] != 0).all()
    assert (grads[True]["a"][mask] != 0).all() and (grads[True]["a"][~mask] == 0).all()


def test_timestep_hook_sees_the_right_time_during_recomputation():
    p = tiny_problem()
    base = p.denoiser
    seen: list[float] = []
    current = {}

    def hook(t):
        current["t"] = t

    def den(x, sigma, **cond):
        seen.append(float(current["t"].detach()))
        return base(x, sigma, **cond) * (1 + 0.01 * current["t"])

    p.denoiser, p.timestep_hook, p.decoupled = den, hook, "timestep"
    solver = gas.GeneralizedSolver(3, schedule=p.schedule)
    x = p.schedule.initial_state(torch.randn(1, 2, 8, 8), 14.6146)
    out = run_student(p, solver, x, p.conditions([0]), autocast=Autocast(torch.device("cpu"), None),
                      differentiable=True, grad_checkpoint=True)
    out.sum().backward()
    forward, recompute = seen[:3], seen[3:]
    assert sorted(recompute) == sorted(forward)  # each recomputed call saw its own time, not the last one
    assert len(set(forward)) == 3


def test_gits_grids():
    p = tiny_problem()
    x = p.schedule.initial_state(torch.randn(4, 2, 8, 8, generator=torch.Generator().manual_seed(0)), 14.6146)
    s = search_gits_sigmas(p.denoiser, p.schedule, x, p.conditions([0, 1, 2, 3]), 14.6146, 0.0292, 5, fine=40)
    assert len(s) == 6 and s[0] == pytest.approx(14.6146) and s[-1] == pytest.approx(0.0292)
    assert all(a > b for a, b in itertools.pairwise(s))
    assert comfyui_gits_sigmas("/nonexistent", 5) is None


def test_report_table_and_grid(tmp_path):
    table = scores_table({"GS": {"l1": 0.05, "swd": 0.01}, "DPM-Solver++(3M)": {"l1": 0.2, "swd": 0.1}}, 4)
    assert "| GS | 4 | 0.05 | 0.01 | 0.250 |" in table
    path = save_grid(tmp_path / "g.png", [("teacher", torch.zeros(3, 3, 8, 8)), ("GS", torch.ones(2, 3, 8, 8))])
    from PIL import Image

    with Image.open(path) as im:
        assert im.size[0] > 3 * 128 and im.size[1] > 2 * 128


def test_tiny_config_is_valid(tmp_path):
    tiny_config(tmp_path).validate()
