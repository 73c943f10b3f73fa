"""Losses of GS/GAS training (docs/method.md section 9); every function returns per-sample values ``[B]``.

* distillation: ``l1_latents = mean |student - teacher|`` over a sample's latent entries; ``lpips`` = LPIPS-VGG
  between the decoded images, resized bilinearly to 224x224 and clipped to [-1, 1].
* batch reduction (``reduce_distances``): "mean" of the per-sample distances ``d_i`` (the paper), "log":
  ``log(d_i + LOG_EPS)``, whose gradient ``grad d_i / (d_i + LOG_EPS)`` weighs every sample by its relative error,
  or "cauchy": ``c log(1 + d_i / c)``, ``c`` a number of batch medians (``cauchy_scale``, default 3): L1 for typical
  samples, robust to outliers.
* discriminator (relativistic pairing, R3GAN): ``softplus(D(fake) - D(real)) + gamma/2 (R1 + R2)`` with
  ``R1 = |grad_real D(real)|^2`` and ``R2 = |grad_fake D(fake)|^2`` (summed over the sample, ``create_graph`` so the
  penalties are trained).
* solver (generator): ``softplus(D(real) - D(fake))`` with gradients through ``D`` into the fake latents only.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import Dist, mark_on_every_rank
from .errors import ConfigError, LPIPSUnavailableError
from .problem import DistillProblem

__all__ = [
    "discriminator_loss",
    "generator_adversarial_loss",
    "l1_latents",
    "load_lpips",
    "lpips_images",
    "lpips_weights_cached",
    "reduce_distances",
    "resolve_lpips",
]

#: Floor of the "log" reduction: distances far below it (a solver already exact on a sample) stop counting.
LOG_EPS = 1e-6
#: Default scale of the "cauchy" reduction in batch medians (``DistillConfig.cauchy_scale``): a sample at CAUCHY_K
#: medians counts half of what L1 would.
CAUCHY_K = 3.0

#: torchvision's file name of the VGG16 ImageNet weights that LPIPS-VGG builds on.
VGG16_FILE = "vgg16-397923af.pth"


def l1_latents(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference per sample."""
    return (student.float() - teacher.float()).abs().flatten(1).mean(1)


def reduce_distances(distances: torch.Tensor, how: str, scale: torch.Tensor | None = None,
                     medians: float = CAUCHY_K) -> torch.Tensor:
    """Per-sample loss terms ``[B]`` from per-sample distances ``d`` ``[B]``; the batch loss is their mean.

    "mean": ``d``. "log": ``log(d + LOG_EPS)``. "cauchy": ``c log(1 + d / c)`` with ``c = medians * scale``
    (``scale``: the median distance of the whole batch, detached), i.e. ``d`` weighted ``1 / (1 + d / c)``: about
    L1 for typical samples, the log's robustness for samples far above the batch's median.
    """
    if how == "mean":
        return distances
    if how == "log":
        return torch.log(distances + LOG_EPS)
    if how == "cauchy":
        if scale is None:
            scale = distances.detach().median()
        c = medians * scale.detach().clamp_min(LOG_EPS)
        return c * torch.log1p(distances / c)
    raise ValueError(f"unknown loss reduction {how!r}")


def _to_lpips_input(images: torch.Tensor) -> torch.Tensor:
    images = images.float()
    if images.shape[-2:] != (224, 224):
        images = F.interpolate(images, size=(224, 224), mode="bilinear", align_corners=False)
    return images.clamp(-1.0, 1.0)


def lpips_images(model: nn.Module, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """LPIPS per sample between two image batches in ``[-1, 1]`` (``[B, 3, H, W]``)."""
    return model(_to_lpips_input(student), _to_lpips_input(teacher)).flatten(1).mean(1)


def lpips_weights_cached() -> bool:
    """Whether torchvision's VGG16 weights (LPIPS-VGG's backbone) are in the torch hub cache (no download needed)."""
    return os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", VGG16_FILE))


def load_lpips(device: torch.device | str = "cpu") -> nn.Module:
    """LPIPS-VGG (frozen, eval mode), or :class:`~trainer.errors.LPIPSUnavailableError` with one clear sentence."""
    try:
        import lpips
    except ImportError:
        raise LPIPSUnavailableError("the LPIPS loss needs the 'lpips' package: pip install lpips") from None
    cached = lpips_weights_cached()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            model = lpips.LPIPS(net="vgg", verbose=False)
    except Exception as exc:  # URLError, HTTPError, OSError, RuntimeError from a truncated file, ...
        where = os.path.join(torch.hub.get_dir(), "checkpoints", VGG16_FILE)
        if cached:
            raise LPIPSUnavailableError(f"the LPIPS weights at {where} could not be loaded ({type(exc).__name__}); "
                                        "delete the file so it is downloaded again, or use `loss` l1") from None
        raise LPIPSUnavailableError(
            f"LPIPS-VGG needs torchvision's VGG16 weights, which are not in {where} and could not be downloaded "
            f"({type(exc).__name__}): connect to the internet once, copy the file there, or use `loss` l1") from None
    model.eval().requires_grad_(False)
    return model.to(device)


def resolve_lpips(problem: DistillProblem, loss: str, given: nn.Module | None, dist: Dist | None = None
                  ) -> nn.Module | None:
    """The LPIPS model of a run: ``given``, else LPIPS-VGG when ``loss`` is "lpips" (every rank loads it; an error
    if it cannot be had), else, for the held-out metric only, LPIPS-VGG on rank 0 when its weights are cached."""
    dist = dist or Dist()
    if loss == "lpips":
        if problem.decode is None:
            raise mark_on_every_rank(ConfigError("`loss` lpips needs a model that can decode its latents to images"))
        return given if given is not None else dist.agree(lambda: load_lpips(problem.device))
    if given is None and problem.decode is not None and dist.is_main and lpips_weights_cached():
        with contextlib.suppress(Exception):
            return load_lpips(problem.device)
    return given


def discriminator_loss(disc: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor,
                       gamma: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-sample relativistic discriminator loss with R1/R2, and its parts (detached) for logging."""
    real = real.detach().float().requires_grad_(True)
    fake = fake.detach().float().requires_grad_(True)
    d_real, d_fake = disc(real), disc(fake)
    adv = F.softplus(d_fake - d_real)
    if gamma > 0:
        g_real, g_fake = torch.autograd.grad((d_real.sum(), d_fake.sum()), (real, fake), create_graph=True)
        r1 = g_real.square().flatten(1).sum(1)
        r2 = g_fake.square().flatten(1).sum(1)
        loss = adv + (gamma / 2.0) * (r1 + r2)
    else:
        r1 = r2 = torch.zeros_like(adv)
        loss = adv
    parts = {"d_adv": adv.detach(), "r1": r1.detach(), "r2": r2.detach(),
             "d_real": d_real.detach(), "d_fake": d_fake.detach()}
    return loss, parts


def generator_adversarial_loss(disc: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor,
                               fake: torch.Tensor) -> torch.Tensor:
    """Per-sample ``softplus(D(real) - D(fake))``; keep the discriminator's parameters frozen around this call."""
    with torch.no_grad():
        d_real = disc(real.float())
    return F.softplus(d_real - disc(fake.float()))
