"""Run in a subprocess by tests/test_comfy_peer_parity.py: compare ``gas.sample_gas(solver=None, two_m="k-diffusion")``
with ComfyUI's own ``sample_dpmpp_3m_sde(eta=0)`` on analytic Gaussian denoisers, for a flow (CONST) model and a
discrete EPS model. Prints one JSON line of max abs errors.

Usage: python tests/scripts/comfy_3m_parity.py COMFYUI_ROOT REPO_ROOT
"""

from __future__ import annotations

import json
import sys
import types

comfy_root, repo_root = sys.argv[1], sys.argv[2]
sys.path.insert(0, repo_root)
from tests.helpers.comfy_env import import_comfy_in_process  # noqa: E402

cm = import_comfy_in_process(comfy_root, cpu=True)
import comfy.k_diffusion.sampling as comfy_sampling  # noqa: E402
import torch  # noqa: E402

import gas  # noqa: E402
from tests.analytic import GaussianFlow, GaussianVE  # noqa: E402

ms_mod = cm.model_sampling


class FlowSampling(ms_mod.ModelSamplingDiscreteFlow, ms_mod.CONST):
    pass


class EpsSampling(ms_mod.ModelSamplingDiscrete, ms_mod.EPS):
    pass


def as_comfy_model(denoiser, model_sampling):
    """A callable with the attribute path ComfyUI's sampler reads model_sampling from."""
    patcher = types.SimpleNamespace(get_model_object=lambda name: model_sampling)
    wrapper = types.SimpleNamespace(inner_model=types.SimpleNamespace(model_patcher=patcher))

    class Model:
        inner_model = wrapper.inner_model

        def __call__(self, x, sigma, **kw):
            return denoiser(x, sigma, **kw)

    return Model()


def compare(denoiser, model_sampling, schedule, sigmas):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64) * float(sigmas[0])
    ours = gas.sample_gas(denoiser, x, sigmas, schedule=schedule, two_m="k-diffusion", disable=True)
    theirs = comfy_sampling.sample_dpmpp_3m_sde(as_comfy_model(denoiser, model_sampling), x, sigmas, eta=0.0,
                                                disable=True, noise_sampler=lambda *_: None)
    return (ours - theirs).abs().max().item(), theirs.abs().max().item()


results = {}
gen = torch.Generator().manual_seed(1)
mu = torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64)

flow_cfg = types.SimpleNamespace(sampling_settings={"shift": 3.0, "multiplier": 1000})
flow_ms = FlowSampling(flow_cfg)
for steps in (4, 6, 10):
    sigmas = cm.samplers.calculate_sigmas(flow_ms, "simple", steps).double()  # starts at 1.0, ends in 0
    results[f"flow_simple_{steps}"] = compare(GaussianFlow(mu, 0.5), flow_ms, gas.FlowSchedule(3.0), sigmas)
    results[f"flow_no_zero_{steps}"] = compare(GaussianFlow(mu, 0.5), flow_ms, gas.FlowSchedule(3.0), sigmas[:-1])

eps_ms = EpsSampling(None)
for steps in (4, 8):
    sigmas = cm.samplers.calculate_sigmas(eps_ms, "karras", steps).double()
    results[f"eps_karras_{steps}"] = compare(GaussianVE(mu, 0.5), eps_ms, gas.DiscreteVPSchedule.sd_linear(), sigmas)
print(json.dumps(results))
