"""The node pack inside a real ComfyUI, in process (no server): schedule bridge, float timesteps, parity.

Needs ``COMFYUI_PATH``; skipped otherwise. The checks run once, in a worker process (tests/helpers/comfy_checks.py),
because importing ComfyUI changes an interpreter for good; each test below asserts one part of its report.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest

from tests.helpers.comfy_env import require_comfyui
from tests.helpers.paths import REPO_ROOT
from tests.helpers.tiny_checkpoints import write_tiny_sd15

ENV = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run every in-process check once and return the JSON report."""
    root = require_comfyui()
    work = tmp_path_factory.mktemp("inprocess")
    ckpt = write_tiny_sd15(work / "tiny_sd15.safetensors")
    out = work / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "tests.helpers.comfy_checks", str(root), str(ckpt), str(out)],
        cwd=REPO_ROOT, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return json.loads(out.read_text())


def test_sd15_discrete_eps_schedule(report: dict[str, Any]) -> None:
    """SD1.5's ModelSamplingDiscrete(EPS) becomes the exact float64 linear-beta schedule: ComfyUI's table at the knots,
    integer network timesteps at the knots, float timesteps via the wrapper, decoupled time by timestep override."""
    sd15 = report["schedules"]["sd15"]
    assert sd15["kind"] == "discrete" and sd15["prediction"] == "eps" and sd15["learned_ok"]
    assert sd15["exact_linear"] and sd15["float_timesteps"] and sd15["decoupled"] == "timestep"
    assert sd15["knot_rel_err"] < 1e-7  # ComfyUI stores the table in float32
    assert sd15["sigma_max_rel_err"] < 1e-7
    assert sd15["network_timestep_at_knots"] < 1e-9


def test_vpred_schedule(report: dict[str, Any]) -> None:
    """ModelSamplingDiscrete with V_PREDICTION: same schedule, decoupled time by re-sigma."""
    vpred = report["schedules"]["vpred"]
    assert vpred == {"kind": "discrete", "prediction": "v", "learned_ok": True, "decoupled": "resigma"}


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_schedules_match_comfyui(report: dict[str, Any], family: str) -> None:
    """SD3-style DiscreteFlow (shift 3, multiplier 1000) and Flux (mu 1.15 -> shift e^1.15, multiplier 1): the bridge's
    sigma(t) and network timestep equal ComfyUI's own maps."""
    info = report["schedules"][family]
    assert info["kind"] == "flow" and info["prediction"] == "flow" and info["learned_ok"]
    assert not info["float_timesteps"]  # ComfyUI's flow timestep is already a float
    assert info["decoupled"] == "resigma"
    assert info["sigma_max_abs_err"] < 1e-12
    assert info["timestep_max_abs_err"] < 1e-9
    if family == "sd3":
        assert (info["shift"], info["multiplier"]) == (3.0, 1000.0)
    else:
        assert info["shift"] == pytest.approx(2.718281828459045**1.15) and info["multiplier"] == 1.0


@pytest.mark.parametrize("name", ["zsnr", "edm", "lcm"])
def test_unsupported_families_refused_with_reason(report: dict[str, Any], name: str) -> None:
    """Zero-terminal-SNR, EDM and LCM-distilled sampling: no learned solvers, with a one-sentence reason."""
    refused = report["schedules"]["refused"][name]
    assert refused["learned_ok"] is False
    assert "not supported" in refused["reason"]


def test_model_identity(report: dict[str, Any]) -> None:
    """The tiny checkpoint is SD15 / eps; its weights fingerprint is the same loaded in fp32 and fp16, and computed
    from the checkpoint file's tensors without ComfyUI."""
    fp32, fp16 = report["identity"]["fp32"], report["identity"]["fp16"]
    assert fp32["family"] == "SD15" and fp32["prediction"] == "eps"
    assert fp32["fingerprint"] and fp32["fingerprint"] == fp16["fingerprint"]
    assert report["identity"]["from_file"] == fp32["fingerprint"]  # what the trainer can compute from the file
    assert report["identity"]["fp16_dtype"] == "torch.float16"


@pytest.mark.parametrize("case", ["timesteps_eps_solver", "timesteps_no_solver", "timesteps_v_solver",
                                  "timesteps_flow_solver"])
def test_unet_sees_float_timesteps(report: dict[str, Any], case: str) -> None:
    """The time embedding the UNet computes in every call (cond + uncond batched) is exactly the embedding of the
    float timestep of the solver's (shifted) time, not of a rounded integer: 1000*t - 1 for the discrete schedule
    (eps: the shifted time at the state sigma; v: the shifted sigma's time; no solver: the time of each sigma), and
    ComfyUI's own 1000*sigma at the shifted sigma for a flow model (no override needed there)."""
    seen = report[case]
    steps = report["solver_nfe"] if case != "timesteps_no_solver" else 5
    assert seen["calls"] == steps and set(seen["batch"]) == {2}
    assert seen["embedding_err_vs_float"] < 1e-6
    assert seen["embedding_err_vs_rounded"] > 1e-2
    assert any(abs(ts - round(ts)) > 0.01 for ts in seen["expected_timesteps"])


@pytest.mark.parametrize("case", ["parity_eps_solver", "parity_no_solver", "parity_v_solver", "parity_flow_solver"])
def test_parity_through_comfyui(report: dict[str, Any], case: str) -> None:
    """A solver run through ComfyUI's sampling path (CFGGuider + the pack's KSAMPLER, cfg 7.5) gives the latent
    gas.sample_gas gives outside ComfyUI with an independent CFG denoiser around the same UNet (float32): eps with a
    learned solver, no solver on karras sigmas, V-prediction and a flow (CONST, shift 3) model with learned solvers."""
    parity = report[case]
    assert parity["max_abs_diff"] <= 1e-5 * max(1.0, parity["max_abs"])


def test_wrapper_bypass_falls_back_with_one_warning(report: dict[str, Any]) -> None:
    """A network that ignores ComfyUI's diffusion-model wrappers keeps ComfyUI's integer timesteps; one warning."""
    seen = report["timesteps_bypassed"]
    assert seen["calls"] == report["solver_nfe"]
    assert seen["embedding_err_vs_float"] < 1e-6  # the integers ComfyUI computed for the state sigmas
    assert len(report["fallback_warnings"]) == 1


def test_trainer_can_pass_a_differentiable_time(report: dict[str, Any]) -> None:
    """``FloatTimestepOverride.patch`` + ``override.at(t)`` with ``t`` requiring grad, through ComfyUI's CFGGuider:
    the gradient reaches ``t``, identically with ``torch.utils.checkpoint`` (the recomputed call sees the same time);
    the original model's options stay untouched."""
    diff = report["differentiable"]
    assert diff["original_untouched"] and not diff["fallback"]
    assert diff["invocations"] >= 3  # plain, checkpointed forward, recomputation
    assert diff["plain"] != 0.0 and diff["checkpoint"] == pytest.approx(diff["plain"], rel=1e-6)


def test_callback_sees_every_step(report: dict[str, Any]) -> None:
    """Progress/preview callback: steps 0..N-1 of N, each with a finite denoised prediction."""
    nfe = report["solver_nfe"]
    assert report["callback"] == {"steps": list(range(nfe)), "total": nfe, "x0_finite": True}


def test_comfyui_satisfies_the_declared_requirement(report: dict[str, Any]) -> None:
    """The ComfyUI these checks ran against satisfies pyproject's ``requires-comfyui``."""
    declared = re.search(r'requires-comfyui\s*=\s*">=([0-9.]+)"', (REPO_ROOT / "pyproject.toml").read_text())
    assert declared is not None

    def version(text: str) -> tuple[int, ...]:
        return tuple(int(part) for part in text.split("."))

    assert version(report["comfyui_version"]) >= version(declared.group(1))
