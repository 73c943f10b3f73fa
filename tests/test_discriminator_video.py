"""The GAS discriminator on video latents (B, C, T, H, W), the image network left as it was, and a GAS run on an
exact Gaussian denoiser of video latents (CPU, no ComfyUI)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import gas
from tests.trainer_helpers import tiny_config
from trainer.config import DISC_PRESETS, DistillConfig
from trainer.discriminator import LatentDiscriminator, stage_count
from trainer.distill import distill_denoiser
from trainer.errors import ConfigError
from trainer.losses import discriminator_loss, generator_adversarial_loss
from trainer.problem import DistillProblem
from trainer.run_state import RunState

SMALL = {"widths": DISC_PRESETS["small"][0], "groups": DISC_PRESETS["small"][1]}


def _perturb(d: torch.nn.Module, seed: int) -> None:
    """Nonzero values in every parameter (the residual branches start as the identity), from a fixed seed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in d.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize(("shape", "basis"), [((2, 4, 3, 8, 8), (3, 4, 4)), ((1, 16, 5, 16, 16), (3, 4, 4)),
                                              ((2, 2, 9, 4, 12), (3, 4, 3))])
def test_video_discriminator_gives_one_finite_logit_per_sample(shape: tuple[int, ...], basis: tuple[int, ...]):
    """3-D convs throughout; axes larger than 4 are halved at each transition, the others kept, so the basis spans
    what remains (e.g. T 9 -> 5 -> 3, W 12 -> 6 -> 3, H 4 kept)."""
    torch.manual_seed(0)
    d = LatentDiscriminator(*shape[1:], **SMALL)
    _perturb(d, 1)
    y = d(torch.randn(shape))
    assert y.shape == (shape[0],) and torch.isfinite(y).all()
    assert isinstance(d.input, torch.nn.Conv3d) and tuple(d.basis.kernel_size) == basis
    assert not any(isinstance(m, torch.nn.Conv2d) for m in d.modules())
    assert len([m for m in d.body if type(m).__name__ == "_ResidualBlock"]) == 2 * stage_count(*shape[2:])
    with pytest.raises(ValueError, match="built for"):
        d(torch.randn(1, shape[1], shape[2] + 1, *shape[3:]))


def test_video_discriminator_size_of_the_docstring_example():
    """16x5x16x16: three stages, (5, 16, 16) -> (3, 8, 8) -> (3, 4, 4); 0.36 M parameters small, 14.3 M paper."""
    sizes = {}
    for preset, (widths, groups) in DISC_PRESETS.items():
        with torch.device("meta"):
            d = LatentDiscriminator(16, 5, 16, 16, widths=widths, groups=groups)
        sizes[preset] = sum(p.numel() for p in d.parameters())
    assert sizes == {"small": 357_184, "paper": 14_288_640}


def test_video_network_on_one_frame_is_the_image_network():
    """A (C, 1, H, W) video network whose weights are the image network's (each kernel the middle time slice; the
    zero-padded neighbour slices see only zeros) gives the image network's logits: the same architecture in 3-D."""
    torch.manual_seed(0)
    image = LatentDiscriminator(3, 16, 16, widths=(8, 16, 16), groups=(2, 4, 4))
    video = LatentDiscriminator(3, 1, 16, 16, widths=(8, 16, 16), groups=(2, 4, 4))
    _perturb(image, 2)
    state = {}
    for name, w3 in video.state_dict().items():
        w2 = image.state_dict()[name]
        if w3.ndim == 5:
            w3 = torch.randn(w3.shape)  # the neighbour slices must not matter
            w3[:, :, w3.shape[2] // 2] = w2
            w2 = w3
        state[name] = w2
    video.load_state_dict(state)
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(video(x.unsqueeze(2)), image(x), rtol=1e-5, atol=1e-5)


def test_image_network_is_unchanged():
    """The (C, H, W) network keeps its parameters, initialisation (seeded weights) and outputs: the values below
    were recorded with the image-only network before video latents were supported."""
    torch.manual_seed(0)
    d = LatentDiscriminator(2, 8, 8, widths=(8, 16), groups=(2, 4), blocks=1)
    state = d.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "input.weight": (8, 2, 1, 1),
        "body.0.expand.weight": (16, 8, 1, 1), "body.0.act1.bias": (16,), "body.0.spatial.weight": (16, 8, 3, 3),
        "body.0.act2.bias": (16,), "body.0.project.weight": (8, 16, 1, 1),
        "body.2.weight": (16, 8, 1, 1),
        "body.3.expand.weight": (32, 16, 1, 1), "body.3.act1.bias": (32,), "body.3.spatial.weight": (32, 8, 3, 3),
        "body.3.act2.bias": (32,), "body.3.project.weight": (16, 32, 1, 1),
        "basis.weight": (16, 1, 4, 4), "head.weight": (1, 16),
    }
    assert list(state) == list(dict(d.named_parameters()))  # no persistent buffers
    sums = {k: float(v.double().sum()) for k, v in state.items() if v.abs().sum() > 0}
    assert sums == pytest.approx({
        "input.weight": 1.4991083145141602, "body.0.expand.weight": 0.5135047347284853,
        "body.0.spatial.weight": -7.724804793411749, "body.2.weight": -4.119637805735692,
        "body.3.expand.weight": 9.813646163907833, "body.3.spatial.weight": -4.842804346870253,
        "basis.weight": -2.7042448181309737, "head.weight": 1.2549733892083168}, rel=1e-12)
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(d(x), torch.tensor([-0.42191389203071594, 0.6268669366836548, -0.13855916261672974]),
                               rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        for p in d.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    torch.testing.assert_close(d(x), torch.tensor([1.1129319667816162, 0.6366199851036072, 0.5791603326797485]),
                               rtol=1e-5, atol=1e-6)
    assert isinstance(d.input, torch.nn.Conv2d) and tuple(d.basis.kernel_size) == (4, 4)


def test_r1_r2_penalties_flow_through_the_video_network():
    """R1/R2 on 5-D latents: the penalty is the squared input gradient summed over the sample, and the penalised
    loss backpropagates into every discriminator parameter (create_graph)."""
    torch.manual_seed(0)
    d = LatentDiscriminator(4, 3, 8, 8, **SMALL)
    _perturb(d, 3)
    real, fake = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 4, 3, 8, 8)
    loss, parts = discriminator_loss(d, real, fake, gamma=0.2)
    r = real.clone().requires_grad_(True)
    g = torch.autograd.grad(d(r).sum(), r)[0]
    assert g.shape == real.shape and g.abs().sum() > 0
    torch.testing.assert_close(parts["r1"], g.square().sum((1, 2, 3, 4)))
    assert (parts["r1"] > 0).all() and (parts["r2"] > 0).all()
    loss.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
               for p in d.parameters())
    fake_p = fake.clone().requires_grad_(True)
    generator_adversarial_loss(d, real, fake_p).sum().backward()
    assert fake_p.grad is not None and fake_p.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_video_discriminator_follows_the_input_dtype(dtype: torch.dtype):
    """In bf16/fp16 (the low-pass kernel cast to the input's dtype) the logits match float32 to the dtype's
    precision."""
    torch.manual_seed(0)
    d = LatentDiscriminator(4, 3, 8, 8, **SMALL)
    _perturb(d, 4)
    x = torch.randn(2, 4, 3, 8, 8)
    ref = d(x)
    low = d.to(dtype)
    try:
        y = low(x.to(dtype))
    except (RuntimeError, NotImplementedError) as exc:  # a build without CPU kernels for this dtype
        pytest.skip(f"conv3d in {dtype} is not available on this CPU build: {exc}")
    assert y.dtype == dtype and torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), ref, rtol=0.05, atol=0.05 * float(ref.detach().abs().max()))


@pytest.mark.parametrize("shape", [(4, 8), (2, 3, 4, 8, 8)])
def test_gas_mode_refuses_other_latent_ranks_with_one_sentence(tmp_path, shape: tuple[int, ...]):
    problem = DistillProblem(denoiser=lambda x, sigma, **_: x, schedule=gas.DiscreteVPSchedule.sd_linear(),
                             latent_shape=shape, conditions=lambda indices: {})
    with pytest.raises(ConfigError) as info:
        RunState(problem, tiny_config(tmp_path, mode="gas"))
    message = str(info.value)
    assert "(C, H, W)" in message and "(C, T, H, W)" in message and "use mode gs" in message
    assert str(list(shape)) in message and "\n" not in message


# ----- a GAS run on video latents -------------------------------------------------------------------------------------

VIDEO = (4, 3, 8, 8)


def _gaussian_video_denoiser() -> tuple[Any, dict[str, Any]]:
    """The exact denoiser of independent Gaussian video entries ``x0 ~ N(mu, v)`` (mean a smooth moving pattern,
    variances in [0.05, 1]) in sigma space ``x = x0 + s eps``: ``E[x0 | x] = mu + v / (v + s^2) (x - mu)``."""
    c, t, h, w = VIDEO
    tt, yy, xx = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    mu = torch.stack([torch.sin(0.7 * (xx - tt) + k) * torch.cos(0.5 * yy) for k in range(c)]).float()
    v = 0.05 + 0.95 * torch.rand(VIDEO, generator=torch.Generator().manual_seed(5))

    def denoiser(x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        s2 = sigma.reshape(-1, 1, 1, 1, 1).to(x.dtype) ** 2
        return mu + v / (v + s2) * (x - mu)

    return denoiser, {"family": "test-gaussian-video", "shape": list(VIDEO)}


def _video_run(tmp_path, callback: Any = None, **kw: Any) -> tuple[Any, list[dict[str, float]], DistillConfig]:
    """A 6-iteration GAS run on :data:`VIDEO` latents below ``tmp_path`` (checkpoint every 3); its stats per step."""
    denoiser, identity = _gaussian_video_denoiser()
    config = tiny_config(tmp_path, mode="gas", iters=6, train_size=8, val_size=4, batch=2, teacher_steps=12,
                         ckpt_every=3, grid_samples=2, **kw)
    stats: list[dict[str, float]] = []

    def record(step: int, s: dict[str, float]) -> None:
        stats.append(dict(s))
        if callback is not None:
            callback(step, s)

    result = distill_denoiser(denoiser, gas.DiscreteVPSchedule.sd_linear(), lambda indices: {}, VIDEO, config,
                              progress=False, name="video", identity=identity, callback=record)
    return result, stats, config


def test_gas_mode_distils_a_solver_for_video_latents(tmp_path):
    """A short GAS run on 5-D latents trains the 3-D discriminator (finite losses and penalties every iteration),
    writes a solver file that loads and samples 5-D latents, and a report with a first-frame image grid."""
    result, stats, config = _video_run(tmp_path)
    assert len(stats) == config.iters
    for s in stats:
        assert all(k in s for k in ("d_loss", "r1", "r2", "adv", "loss"))
        assert all(torch.isfinite(torch.tensor(s[k])) for k in ("d_loss", "r1", "r2", "adv", "loss"))
    assert any(s["r1"] > 0 for s in stats)
    loaded = gas.load_solver(result.solver_path)
    assert loaded.metadata["mode"] == "gas" and loaded.metadata["iterations"] == config.iters
    assert "latent discriminator" in loaded.metadata["loss"]
    for k, v in result.solver.state_dict().items():
        torch.testing.assert_close(getattr(loaded, k), v)
    assert result.samples["GAS"].shape == (2, *VIDEO)
    assert result.report_path.read_text().count("|") > 20 and result.grid_path.stat().st_size > 0
    schedule = gas.DiscreteVPSchedule.sd_linear()
    sigmas = loaded.sigmas().float()
    x = schedule.initial_state(torch.randn(2, *VIDEO), sigmas[0])
    out = gas.sample_gas(_gaussian_video_denoiser()[0], x, sigmas, solver=loaded, schedule=schedule)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_gas_video_run_resumes_to_the_same_solver(tmp_path):
    """The 3-D discriminator and its Adam state are part of the checkpoint: a run killed after the checkpoint at
    iteration 3 and resumed ends with the uninterrupted run's solver."""
    full, _, _ = _video_run(tmp_path / "a")

    def crash(step: int, stats: dict[str, float]) -> None:
        if step == 4:
            raise RuntimeError("simulated kill")

    with pytest.raises(RuntimeError, match="simulated kill"):
        _video_run(tmp_path / "b", crash)
    resumed, stats, _ = _video_run(tmp_path / "b", resume=True)
    assert len(stats) == 3  # iterations 4..6 after the checkpoint at 3
    for k, v in full.solver.state_dict().items():
        assert torch.equal(resumed.solver.state_dict()[k], v), k


def test_first_frame_images_of_video_latents():
    """The report's images of video latents are the first frame's first three channels (the image rule)."""
    from trainer.report import latents_to_images

    lat = torch.randn(2, 4, 3, 8, 8)
    torch.testing.assert_close(latents_to_images(lat), latents_to_images(lat[:, :, 0]))
    assert latents_to_images(lat).shape == (2, 3, 8, 8)
