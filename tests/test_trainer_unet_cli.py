"""``python -m trainer --unet <diffusion model> --clip <text encoder>`` through a real ComfyUI: the layout SD3.5, Flux
and Wan are released in (a diffusion-model-only file plus separate text encoders), loaded with ComfyUI's own
UNETLoader / CLIPLoader code paths.

The model is the tiny SD3 of tests/helpers/tiny_families.py (ComfyUI detects SD3, ModelSamplingDiscreteFlow shift 3);
its text encoder is a random full-size CLIP-L file (``text_model.*``, 246 MB in fp16, written once per test session),
loaded as ComfyUI's ``sd3`` type with CLIP-L alone, which pads the context to SD3's 4096 and the pooled output to
2048. The tiny SDXL UNet trains with CLIP-L plus a random full-size CLIP-G (DualCLIPLoader's "sdxl" pair). The other
families' encoders (OpenCLIP-H, T5-XXL, umT5-XXL) are too large for a test; GAS Train Solver covers them with a
connected conditioning (tests/test_families_comfy.py). Cost: about 30 s to write the files (1.6 GB), 5-8 s per
trainer run on two CPU cores, about a minute for SDXL (CLIP-G encodes the prompts on the CPU).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from tests.helpers.comfy_env import require_comfyui
from tests.helpers.paths import REPO_ROOT
from tests.helpers.tiny_checkpoints import write_clip_l, write_text_encoder
from tests.helpers.tiny_families import write_tiny_family

ENV = {"OMP_NUM_THREADS": "2", "PYTHONDONTWRITEBYTECODE": "1"}
TINY = ["--nfe", "4", "--mode", "gs", "--iters", "2", "--train-size", "4", "--val-size", "2", "--teacher-steps", "4",
        "--batch", "2", "--width", "64", "--height", "64", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = require_comfyui()
    folder = tmp_path_factory.getbasetemp() / "tiny_families"
    work = tmp_path_factory.mktemp("unet-cli")
    return {"root": root, "unet": write_tiny_family("sd3", folder), "clip": write_clip_l(folder / "clip_l.safetensors"),
            "work": work}


def run_trainer(files: dict[str, Path], *extra: str) -> subprocess.CompletedProcess[str]:
    import os

    work = files["work"]
    cmd = [sys.executable, "-m", "trainer", "--comfyui", str(files["root"]), *TINY, "--out", str(work / "out"),
           "--cache-dir", str(work / "cache"), "--run-dir", str(work / "runs"), *extra]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **ENV})


def metadata(path: Path) -> dict[str, object]:
    with safe_open(str(path), "pt") as f:
        return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}


def test_unet_and_clip_train_a_solver_for_the_detected_family(files: dict[str, Path]) -> None:
    """The solver file records the family ComfyUI detected (SD3, flow prediction), the model's own shift 3, and the
    text encoder it was trained with; the report names the model."""
    done = run_trainer(files, "--unet", str(files["unet"]), "--clip", str(files["clip"]), "--name", "sd3-own")
    assert done.returncode == 0, done.stderr[-3000:]
    meta = metadata(files["work"] / "out" / "sd3-own-nfe4-gs.safetensors")
    assert meta["model"]["family"] == "SD3" and meta["model"]["prediction"] == "flow"
    assert meta["schedule"] == {"kind": "flow", "shift": 3.0, "multiplier": 1000.0}
    assert meta["text_encoders"] == files["clip"].name
    assert [e["file"] for e in meta["model"]["text_encoders"]] == [files["clip"].name]
    assert "shift" not in meta
    report = (files["work"] / "out" / "sd3-own-nfe4-gs.md").read_text()
    assert f"{files['unet'].name} (SD3, flow-prediction" in report


def test_sdxl_with_clip_l_and_clip_g_as_dualcliploader_loads_them(files: dict[str, Path]) -> None:
    """The tiny SDXL UNet with random full-size CLIP-L and CLIP-G files (1.39 GB in fp16, written once per session)
    as DualCLIPLoader's "sdxl" type: ComfyUI's SDXL text encoder (context 768 + 1280 = 2048, pooled CLIP-G output
    into the ADM input with the image size); the file records SDXL, eps prediction and both text encoders."""
    folder = files["unet"].parent
    sdxl = write_tiny_family("sdxl", folder)
    clip_g = write_text_encoder(folder / "clip_g.safetensors", "clip_g")
    done = run_trainer(files, "--unet", str(sdxl), "--clip", str(files["clip"]), "--clip", str(clip_g),
                       "--clip-type", "sdxl", "--name", "sdxl", "--width", "32", "--height", "32")
    assert done.returncode == 0, done.stderr[-3000:]
    meta = metadata(files["work"] / "out" / "sdxl-nfe4-gs.safetensors")
    assert meta["model"]["family"] == "SDXL" and meta["model"]["prediction"] == "eps"
    assert meta["text_encoders"] == f"{files['clip'].name}, {clip_g.name}"
    assert meta["cfg"] == 7.0 and meta["model"]["width"] == 32


def test_shift_option_sets_the_flow_shift_trained_with(files: dict[str, Path]) -> None:
    """``--shift 2`` trains on ModelSamplingSD3(shift 2): the file's schedule says 2, so sampling the model at its
    own shift 3 is a recorded mismatch (the nodes warn), not a silent one."""
    done = run_trainer(files, "--unet", str(files["unet"]), "--clip", str(files["clip"]), "--shift", "2",
                       "--name", "sd3-shift2")
    assert done.returncode == 0, done.stderr[-3000:]
    meta = metadata(files["work"] / "out" / "sd3-shift2-nfe4-gs.safetensors")
    assert meta["schedule"] == {"kind": "flow", "shift": 2.0, "multiplier": 1000.0}
    assert meta["shift"] == "2"


@pytest.mark.parametrize(("extra", "message"), [
    ([], "holds no text encoder; give its text-encoder files as --clip"),
    (["--clip", "{clip}", "--guidance", "3"], "--guidance applies to guidance-distilled models"),
    (["--clip", "{clip}", "--frames", "9"], "--frames applies to video models only; this SD3 model makes images"),
    (["--clip", "{clip}", "--clip-type", "nonsense"], "--clip-type must be one of ComfyUI's text-encoder types"),
    (["--clip", "{clip}", "--shift", "-1"], "--shift must be a positive number or 'auto'"),
    (["--clip", "{unet}"], "(--clip) is not a text encoder ComfyUI can load as type 'sd3'"),
    (["--clip", "missing.safetensors"], "the text encoder 'missing.safetensors' (--clip) was found neither"),
    (["--clip", "{clip}", "--vae", "{clip}"], "(--vae) is not a VAE ComfyUI can load"),
])
def test_bad_options_get_one_sentence(files: dict[str, Path], extra: list[str], message: str) -> None:
    """Each wrong combination ends with exit status 2 and one line naming the option, before any training."""
    args = [a.format(clip=files["clip"], unet=files["unet"]) for a in extra]
    done = run_trainer(files, "--unet", str(files["unet"]), *args, "--name", "bad")
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(errors) == 1 and message in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not (files["work"] / "out" / "bad-nfe4-gs.safetensors").exists()


def test_a_text_encoder_file_is_not_a_diffusion_model(files: dict[str, Path]) -> None:
    done = run_trainer(files, "--unet", str(files["clip"]), "--clip", str(files["clip"]), "--name", "bad")
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1
    assert f"'{files['clip'].name}' (--unet) is not a diffusion model ComfyUI can load" in errors[0]
