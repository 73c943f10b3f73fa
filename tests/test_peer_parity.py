"""Peer parity: ``sample_gas(solver=None, two_m="k-diffusion")`` is k-diffusion's ``sample_dpmpp_3m_sde(eta=0)``."""

from __future__ import annotations

import warnings

import pytest
import torch

import gas
from tests.analytic import GaussianVE

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    k_sampling = pytest.importorskip("k_diffusion.sampling", reason="PyPI k-diffusion is a test dependency")


def make_case(steps: int, trailing_zero: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(3, 4, 8, 8, generator=gen, dtype=torch.float64)
    model = GaussianVE(mu, s0=0.7)
    sigmas = k_sampling.get_sigmas_karras(steps, 0.0292, 14.6146, rho=7.0, device="cpu").double()
    if not trailing_zero:
        sigmas = sigmas[:-1]
    x = torch.randn(3, 4, 8, 8, generator=gen, dtype=torch.float64) * sigmas[0]
    return model, x, sigmas


def kdiff_3m(model, x, sigmas):
    def no_noise(*_):
        raise AssertionError("eta=0 must not draw noise")
    return k_sampling.sample_dpmpp_3m_sde(model, x, sigmas, disable=True, eta=0.0, noise_sampler=no_noise)


@pytest.mark.parametrize("steps", [2, 3, 4, 6, 10])
@pytest.mark.parametrize("trailing_zero", [True, False])
def test_matches_k_diffusion_3m(steps, trailing_zero):
    """Karras sigmas; without the trailing 0 the last step is a 3M step to sigma_min (``steps - 1`` steps)."""
    model, x, sigmas = make_case(steps, trailing_zero)
    ours = gas.sample_gas(model, x, sigmas, two_m="k-diffusion", disable=True)
    ref = kdiff_3m(model, x, sigmas)
    assert (ours - ref).abs().max().item() < 1e-10


def test_authors_form_differs_only_from_step_two():
    """The authors' 2M coefficient differs from k-diffusion's; before step 2 both agree (so the test can fail)."""
    model, x, sigmas = make_case(6, False)
    one_step = gas.sample_gas(model, x, sigmas[:2], disable=True)
    assert (one_step - kdiff_3m(model, x, sigmas[:2])).abs().max().item() < 1e-12
    ours = gas.sample_gas(model, x, sigmas, disable=True)
    assert (ours - kdiff_3m(model, x, sigmas)).abs().max().item() > 1e-4


def test_callback_dict_matches_k_diffusion():
    model, x, sigmas = make_case(4, True)
    seen_ours, seen_ref = [], []
    gas.sample_gas(model, x, sigmas, two_m="k-diffusion", disable=True, callback=seen_ours.append)
    k_sampling.sample_dpmpp_3m_sde(model, x, sigmas, disable=True, eta=0.0, callback=seen_ref.append,
                                   noise_sampler=lambda *_: None)
    assert len(seen_ours) == len(seen_ref) == 4
    for a, b in zip(seen_ours, seen_ref, strict=True):
        assert set(a) == set(b) == {"x", "i", "sigma", "sigma_hat", "denoised"}
        assert a["i"] == b["i"] and float(a["sigma"]) == float(b["sigma"])
        assert torch.allclose(a["denoised"], b["denoised"], atol=1e-10)
        assert torch.allclose(a["x"], b["x"], atol=1e-10)
