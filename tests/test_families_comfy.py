"""Every model family through ComfyUI's own detection: SD2.x-v, SDXL, SD3.x, Flux dev, Wan 2.1 and Wan 2.2 (5B).

Tiny random diffusion models (tests/helpers/tiny_families.py) that ComfyUI 0.3.64 classifies as each family are
loaded through UNETLoader's code path (``comfy.sd.load_diffusion_model``); the conditioning is built in the worker as
random tensors of each family's shapes (text context, pooled output / SDXL's ADM inputs, Flux's guidance), because
ComfyUI's text encoders for these families are fixed full-size models (OpenCLIP-H, CLIP-G, T5-XXL, umT5-XXL) that a
test cannot build. GAS Sigmas and GAS Sampler run through ComfyUI's RandomNoise, CFGGuider and
SamplerCustomAdvanced nodes, GAS Model Patch through ComfyUI's KSampler, GAS Train Solver with the conditioning
connected, in one worker process (tests/helpers/family_checks.py), since importing ComfyUI changes
an interpreter for good.

Cost (2-core CPU): the files are written once per test session into pytest's temporary folder, about 1.2 GB in all
(fp16: Flux 808 MB, the smallest model ComfyUI still calls Flux; SDXL 263 MB; SD2-v 146 MB; SD3 4 MB; Wan 2 MB
each), in about 10 s; loading takes 0.1-4 s a family. The worker (sampling, the stock path, the refusals and eight
tiny GAS Train Solver runs) takes 45-130 s on two shared cores, depending on the load.

The 5-D tests at the end need no ComfyUI: ``gas.sample_gas`` on video latents (B, C, T, H, W).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import gas
from tests.helpers.comfy_env import require_comfyui
from tests.helpers.family_checks import OTHER_FAMILY
from tests.helpers.paths import REPO_ROOT
from tests.helpers.solvers import perturbed_solver
from tests.helpers.tiny_families import FAMILIES, write_tiny_family

ENV = {"OMP_NUM_THREADS": "2"}
NAMES = list(FAMILIES)
#: Families GAS Train Solver distils in these tests (tiny configuration), and the modes tried.
TRAIN = {"sd2v": ["gs"], "sdxl": ["gs"], "sd3": ["gs", "gas"], "flux": ["gs"], "wan21": ["gs", "gas"],
         "wan22": ["gs"]}
FLOW_SCHEDULES = {"sd3": (3.0, 1000.0), "flux": (math.exp(1.15), 1.0), "wan21": (8.0, 1000.0),
                  "wan22": (8.0, 1000.0)}


@pytest.fixture(scope="session")
def family_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny diffusion-model files, written once per test session (only where ComfyUI can load them)."""
    require_comfyui()
    folder = tmp_path_factory.getbasetemp() / "tiny_families"
    return {name: write_tiny_family(name, folder) for name in NAMES}


@pytest.fixture(scope="module")
def report(family_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run every per-family check once, in a worker process, and return its JSON report."""
    root = require_comfyui()
    out = tmp_path_factory.mktemp("families") / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "tests.helpers.family_checks", str(root), str(out),
         *(f"{name}={path}" for name, path in family_files.items()),
         *(f"--train={name}:{','.join(modes)}" for name, modes in TRAIN.items())],
        cwd=REPO_ROOT, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", NAMES)
def test_comfyui_detects_the_family(report: dict[str, Any], name: str) -> None:
    """ComfyUI's own detection names the family (model config class, model type, model_sampling classes), every
    tensor of the file is a weight of the network it builds (and none is left uninitialised), and the pack's bridge
    classifies the schedule: SD2-v and SDXL on SD's discrete linear-beta schedule, SD3 / Wan with a fixed shift,
    Flux with ModelSamplingFlux's default (mu 1.15, i.e. shift e^1.15, timestep = sigma)."""
    family, detected = FAMILIES[name], report[name]["detected"]
    assert detected["config"] == family.config and detected["identity_family"] == family.config
    assert detected["model_type"] == family.model_type
    assert detected["sampling"] == list(family.sampling)
    assert detected["missing"] == [] and detected["unexpected"] == [] and detected["wrong_shape"] == []
    assert detected["learned_ok"]
    if name in FLOW_SCHEDULES:
        shift, multiplier = FLOW_SCHEDULES[name]
        assert (detected["kind"], detected["prediction"], detected["float_timesteps"]) == ("flow", "flow", False)
        assert detected["schedule"]["shift"] == pytest.approx(shift, rel=1e-6)
        assert detected["schedule"]["multiplier"] == multiplier
    else:
        assert (detected["kind"], detected["float_timesteps"]) == ("discrete", True)
        assert detected["prediction"] == ("v" if name == "sd2v" else "eps")
        assert detected["schedule"] == gas.DiscreteVPSchedule.sd_linear().to_metadata()


@pytest.mark.parametrize("name", NAMES)
def test_gas_nodes_sample_with_a_solver_for_the_family(report: dict[str, Any], name: str) -> None:
    """GAS Sigmas + GAS Sampler with a random nonzero 4-step solver made for the family's schedule, through
    SamplerCustomAdvanced: finite latents of the family's shape (5-D for Wan), on the solver's learned grid, and not
    the "(none)" result (the learned corrections act)."""
    sampled = report[name]["sampling"]["random"]
    assert sampled["shape"] == list(FAMILIES[name].latent) and sampled["finite"]
    sigmas = sampled["sigmas"]
    assert len(sigmas) == 5 and all(a > b > 0 for a, b in itertools.pairwise(sigmas))
    assert report[name]["sampling"]["zero_vs_none"]["random_vs_none_rel"] > 1e-2


@pytest.mark.parametrize("name", NAMES)
def test_untrained_solver_equals_none(report: dict[str, Any], name: str) -> None:
    """An untrained (all-zero) solver file and "(none) DPM-Solver++(3M)" on the same GAS Sigmas grid give the same
    latent to 1e-5 relative (float32 sigmas)."""
    check = report[name]["sampling"]["zero_vs_none"]
    assert check["rel_diff"] < 1e-5
    assert check["max_abs"] > 0 and len(check["zero_sigmas"]) == 5


REFUSALS = {
    "other_kind": "noise schedule) and does not fit",
    "other_family": "was trained for {other} models, but this is a {config} model",
    "other_prediction": "-prediction model, but this model predicts {prediction}",
}


@pytest.mark.parametrize("role", list(REFUSALS))
@pytest.mark.parametrize("name", NAMES)
def test_refuses_a_solver_made_for_something_else(report: dict[str, Any], name: str, role: str) -> None:
    """A solver made for the other schedule kind (flow vs discrete), for another family, or for another prediction
    type is refused by GAS Sigmas and, given that solver's own grid, by GAS Sampler before any model call, each
    with one sentence that names the solver and the mismatch."""
    refused = report[name]["sampling"]["refusals"][role]
    want = REFUSALS[role].format(other=OTHER_FAMILY[name], config=FAMILIES[name].config,
                                 prediction=report[name]["detected"]["prediction"])
    for node in ("sigmas_node", "sampler_node", "stock"):
        message = refused[node]
        assert message is not None, f"{node} accepted the {role} solver"
        assert want in message and f"'{name}-{role}.safetensors'" in message
    assert refused["one_sentence"]


@pytest.mark.parametrize("name", NAMES)
def test_stock_ksampler_samples_like_the_gas_nodes(report: dict[str, Any], name: str) -> None:
    """GAS Model Patch + ComfyUI's own KSampler (sampler "gas", scheduler "gas") with the random 4-step solver gives
    the GAS Sigmas + GAS Sampler latent (same seed) to 1e-5 relative."""
    stock = report[name]["sampling"]["stock"]
    assert stock["shape"] == list(FAMILIES[name].latent)
    assert stock["rel_diff"] < 1e-5


@pytest.mark.parametrize(("name", "mode"), [(n, m) for n, modes in TRAIN.items() for m in modes])
def test_train_node_distils_a_solver_that_samples(report: dict[str, Any], name: str, mode: str) -> None:
    """GAS Train Solver (the node's own ``execute``) distils a 4-step solver for the UNETLoader-loaded model from a
    connected conditioning (2 iterations, tiny teacher) into models/gas_solvers; the file records the detected family
    and prediction, and samples through GAS Sigmas + GAS Sampler: V-prediction (SD2-v) and ADM conditioning (SDXL)
    on the discrete schedule, a flow model in GS and GAS mode (SD3), a guidance-distilled flow model at cfg 1 trained
    for the conditioning's guidance value, recorded in the file (Flux dev, FluxGuidance 2.5), and 5-D video latents
    with the frame count recorded (Wan 2.1 in GS and GAS mode, the discriminator in 3-D; Wan 2.2)."""
    from tests.helpers.family_checks import TRAIN_GUIDANCE

    trained = report[name]["training"][mode]
    assert "error" not in trained, trained.get("error")
    assert trained["file_in_folder"] and trained["mode"] == mode and trained["iterations"] == 2
    assert trained["model"]["family"] == FAMILIES[name].config
    assert trained["model"]["prediction"] == report[name]["detected"]["prediction"]
    assert trained["shape"] == list(FAMILIES[name].latent) and trained["finite"]
    assert trained["guidance"] == (TRAIN_GUIDANCE if FAMILIES[name].guidance is not None else None)
    latent = FAMILIES[name].latent
    assert trained["frames"] == (4 * (latent[2] - 1) + 1 if len(latent) == 5 else None)
    assert len(trained["preview"]) == 4 and trained["preview"][-1] == 3


@pytest.mark.parametrize(("role", "message"), [
    ("no_conditioning", "no CLIP and no conditioning is connected"),
    ("combined", "holds 2 conditionings (combined or concatenated)"),
    ("guidance_on_cfg_model", "guidance applies to guidance-distilled models (Flux dev style)"),
])
def test_train_node_refuses_unusable_conditioning_with_one_sentence(report: dict[str, Any], role: str,
                                                                    message: str) -> None:
    """GAS Train Solver on SD3 refuses, before any training, a graph with neither CLIP nor conditioning, a combined
    conditioning, and a guidance value for a model guided by cfg, each with one sentence."""
    refused = report["sd3"]["training"]["refusals"][role]
    assert refused is not None and message in refused and "\n" not in refused


def test_train_node_guidance_input_wins_over_the_conditioning(report: dict[str, Any]) -> None:
    """GAS Train Solver's ``guidance`` input (3.0) replaces the connected conditioning's FluxGuidance value (2.5) in
    the training and in the file."""
    from tests.helpers.family_checks import OVERRIDE_GUIDANCE

    assert report["flux"]["training"]["guidance_input"]["guidance"] == OVERRIDE_GUIDANCE


# ----- 5-D latents, no ComfyUI ----------------------------------------------------------------------------------------


def _gaussian_denoiser(schedule: gas.NoiseSchedule):
    """The exact denoiser of unit-Gaussian data, elementwise: VE-scaled ``x = x0 + s eps`` (discrete VP, in
    k-diffusion's sigma space) gives ``x / (1 + s^2)``; flow ``x = (1 - s) x0 + s eps`` gives
    ``(1 - s) x / ((1 - s)^2 + s^2)``. Broadcasts sigma over any latent rank."""
    flow = schedule.space == "flow"

    def denoiser(x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        return (1 - s) * x / ((1 - s) ** 2 + s**2) if flow else x / (1 + s**2)

    return denoiser


@pytest.mark.parametrize("kind", ["discrete", "flow"])
@pytest.mark.parametrize("learned", [True, False])
def test_sample_gas_accepts_video_latents(kind: str, learned: bool) -> None:
    """``gas.sample_gas`` on (B, C, T, H, W) latents equals the same run on the frames laid out as a 4-D image
    (B, C, T*H, W) for an elementwise denoiser, with a learned solver or without; the callback sees 5-D states."""
    schedule = gas.DiscreteVPSchedule.sd_linear() if kind == "discrete" else gas.FlowSchedule(8.0)
    solver = perturbed_solver(seed=3, schedule=schedule, gas=gas) if learned else None
    sigmas = solver.sigmas().float() if solver is not None else schedule.sigma_of_time(
        torch.linspace(1.0, 1e-3, 5, dtype=torch.float64)).float()
    noise = torch.randn(2, 16, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    x = schedule.initial_state(noise, sigmas[0])
    denoiser = _gaussian_denoiser(schedule)
    seen: list[tuple[int, ...]] = []
    video = gas.sample_gas(denoiser, x, sigmas, solver=solver, schedule=schedule,
                           callback=lambda info: seen.append(tuple(info["denoised"].shape)))
    frames = gas.sample_gas(denoiser, x.reshape(2, 16, 12, 5), sigmas, solver=solver, schedule=schedule)
    assert video.shape == x.shape and torch.isfinite(video).all()
    assert seen == [tuple(x.shape)] * 4
    torch.testing.assert_close(video.reshape(2, 16, 12, 5), frames, rtol=1e-6, atol=1e-6)
