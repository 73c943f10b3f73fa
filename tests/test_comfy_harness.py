"""The real-ComfyUI test harness itself: tiny checkpoint detection, server start, a KSampler graph end to end.

Needs ``COMFYUI_PATH`` (a ComfyUI checkout whose requirements are installed in this interpreter); skipped otherwise.
The history-parsing and checkpoint-layout tests at the bottom need nothing.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.helpers.comfy_env import ComfyServer, ComfyServerError, history_error, require_comfyui, txt2img_graph
from tests.helpers.paths import REPO_ROOT
from tests.helpers.tiny_checkpoints import tiny_sd15_specs, tiny_sd15_state_dict, write_tiny_sd15

CKPT_NAME = "tiny_sd15.safetensors"
# One intra-op thread: the tiny model gains nothing from more, and 2-thread OpenMP stalls badly (10x) when other
# processes share this 2-core machine.
SERVER_ENV = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def comfy_root() -> Path:
    """The ComfyUI checkout named by COMFYUI_PATH (skips the module's ComfyUI tests without it)."""
    return require_comfyui()


@pytest.fixture(scope="module")
def tiny_ckpt(comfy_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD1.5 checkpoint, written once for this module."""
    return write_tiny_sd15(tmp_path_factory.mktemp("ckpt") / CKPT_NAME)


@pytest.fixture(scope="module")
def empty_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A node pack that registers no nodes."""
    pack = tmp_path_factory.mktemp("packs") / "gas_empty_pack"
    pack.mkdir()
    (pack / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\nNODE_DISPLAY_NAME_MAPPINGS = {}\n")
    return pack


@pytest.fixture(scope="module")
def server(comfy_root: Path, tiny_ckpt: Path, empty_pack: Path):
    """One ComfyUI server for the module, with the empty pack and the tiny checkpoint."""
    with ComfyServer(comfy_root, empty_pack, checkpoints=[tiny_ckpt], env=SERVER_ENV) as running:
        yield running


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_tiny_checkpoint_detected_in_process(comfy_root: Path, tiny_ckpt: Path) -> None:
    """ComfyUI loads the tiny checkpoint as SD15 / EPS / ModelSamplingDiscrete without missing keys; CLIP encodes and
    the VAE decodes. Runs in a subprocess because importing ComfyUI changes the interpreter for good."""
    script = textwrap.dedent(
        """
        import json, logging, sys, torch
        from tests.helpers.comfy_env import import_comfy_in_process

        LOAD_WARNINGS = ("unet missing", "unet unexpected", "clip missing", "Missing VAE keys", "no CLIP")
        warnings = []
        class Collect(logging.Handler):
            def emit(self, record):
                warnings.append(record.getMessage())
        logging.getLogger().addHandler(Collect(level=logging.WARNING))

        comfy = import_comfy_in_process(sys.argv[1], cpu=True)
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(sys.argv[2], output_vae=True, output_clip=True)
        ms = model.get_model_object("model_sampling")
        cond = clip.encode_from_tokens_scheduled(clip.tokenize("a cat"))
        image = vae.decode(torch.randn(1, 4, 8, 8))
        print(json.dumps({
            "config": type(model.model.model_config).__name__,
            "eps": isinstance(ms, comfy.model_sampling.EPS),
            "discrete": isinstance(ms, comfy.model_sampling.ModelSamplingDiscrete),
            "sigma_max": float(ms.sigma_max),
            "cond_shape": list(cond[0][0].shape),
            "image_shape": list(image.shape),
            "image_finite": bool(torch.isfinite(image).all()),
            "warnings": [w for w in warnings if w.startswith(LOAD_WARNINGS)],
        }))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(comfy_root), str(tiny_ckpt)],
        cwd=REPO_ROOT,
        env={**os.environ, **SERVER_ENV},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["config"] == "SD15"
    assert report["eps"] and report["discrete"]
    assert report["sigma_max"] == pytest.approx(14.6146, rel=1e-4)
    assert report["cond_shape"] == [1, 77, 768]
    assert report["image_shape"] == [1, 64, 64, 3]
    assert report["image_finite"]
    assert report["warnings"] == []


def test_server_lists_core_nodes(server: ComfyServer) -> None:
    """The server answers /object_info, loads the pack, and lists the tiny checkpoint."""
    info = server.object_info()
    for node in ("CheckpointLoaderSimple", "KSampler", "SamplerCustom", "SamplerCustomAdvanced", "SaveImage"):
        assert node in info
    ckpt_options = info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    assert CKPT_NAME in ckpt_options
    assert "gas_empty_pack" in server.log_text()
    assert "IMPORT FAILED" not in "\n".join(line for line in server.log_text().splitlines() if "gas_empty" in line)


def test_ksampler_graph_writes_image(server: ComfyServer) -> None:
    """CheckpointLoaderSimple -> CLIPTextEncode x2 -> EmptyLatentImage 64x64 -> KSampler 2 steps -> VAEDecode ->
    SaveImage runs and writes a 64x64 PNG into the server's output directory."""
    entry = server.run(txt2img_graph(CKPT_NAME, steps=2, filename_prefix="harness"), timeout=180)
    assert entry["status"]["status_str"] == "success"
    images = server.output_files(entry)
    assert len(images) == 1
    assert images[0].is_file()
    assert images[0].parent == server.output_dir
    assert png_size(images[0]) == (64, 64)


def test_invalid_prompt_is_rejected(server: ComfyServer) -> None:
    """A graph naming a checkpoint that does not exist fails validation with ComfyUI's reason."""
    with pytest.raises(ComfyServerError, match=r"value_not_in_list|not in list"):
        server.post_prompt(txt2img_graph("no_such_checkpoint.safetensors"))


def test_history_error_formats_execution_error() -> None:
    """history_error() turns an execution_error status into readable text."""
    entry = {
        "status": {
            "status_str": "error",
            "completed": False,
            "messages": [
                ["execution_start", {"prompt_id": "p"}],
                [
                    "execution_error",
                    {
                        "node_id": "5",
                        "node_type": "KSampler",
                        "exception_type": "RuntimeError",
                        "exception_message": "boom",
                        "traceback": ["  File x, line 1\n"],
                    },
                ],
            ],
        }
    }
    text = history_error(entry)
    assert text is not None
    assert "node 5 (KSampler): RuntimeError: boom" in text
    assert "File x, line 1" in text


def test_history_error_none_on_success() -> None:
    """A successful entry has no error text."""
    assert history_error({"status": {"status_str": "success", "completed": True, "messages": []}}) is None


def test_tiny_checkpoint_layout_matches_notes() -> None:
    """Parameter counts of the three parts (COMFYUI_NOTES.md 2.2): UNet 13.6M, full CLIP-L, TAESD."""
    counts: dict[str, int] = {}
    for spec in tiny_sd15_specs():
        part = spec.name.split(".", 1)[0]
        counts[part] = counts.get(part, 0) + math.prod(spec.shape)
    assert counts == {"model": 13_640_644, "cond_stage_model": 123_060_480, "first_stage_model": 2_445_065}


def test_tiny_checkpoint_is_deterministic() -> None:
    """The same seed gives the same tensors; the output conv is small (std 0.01)."""
    first = tiny_sd15_state_dict(seed=0)
    second = tiny_sd15_state_dict(seed=0)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    out_conv = first["model.diffusion_model.out.2.weight"].float()
    assert float(out_conv.std()) == pytest.approx(0.01, rel=0.1)
