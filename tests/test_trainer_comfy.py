"""``python -m trainer --ckpt <tiny SD1.5-shaped checkpoint> --nfe 4`` through a real ComfyUI, end to end: the
checkpoint is loaded by ComfyUI, the teacher is generated, a GAS solver is trained and evaluated, and the solver file
it writes is listed and sampled by the GAS nodes in a ComfyUI server.

Needs ``COMFYUI_PATH`` (a ComfyUI checkout whose requirements are installed in this interpreter); skipped otherwise.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

import gas
from gas.comfy_bridge import fingerprint_state_dict
from tests.conftest import REPO_ROOT
from tests.helpers.comfy_env import ComfyServer, free_port, require_comfyui
from tests.helpers.tiny_checkpoints import write_tiny_sd15

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = require_comfyui()
    work = tmp_path_factory.mktemp("trainer-comfy")
    ckpt = write_tiny_sd15(work / "tiny_sd15.safetensors")
    cmd = [sys.executable, "-m", "trainer", "--ckpt", str(ckpt), "--comfyui", str(root), "--nfe", "4",
           "--mode", "gas", "--iters", "4", "--train-size", "8", "--val-size", "4", "--width", "64", "--height", "64",
           "--teacher-steps", "8", "--batch", "2", "--disc-size", "small", "--ckpt-every", "2", "--eval-every", "2",
           "--out", str(work / "out"), "--cache-dir", str(work / "cache"), "--run-dir", str(work / "runs"), "--quiet"]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=ENV)
    assert done.returncode == 0, done.stderr[-4000:]
    return root, ckpt, work / "out" / "tiny_sd15-nfe4-gas.safetensors", cmd


def test_trainer_writes_a_solver_for_the_checkpoint(trained):
    _, ckpt, solver_path, _ = trained
    solver = gas.load_solver(solver_path)
    assert solver.nfe == 4 and not solver.is_untrained()
    meta = solver.metadata
    assert meta["mode"] == "gas" and meta["cfg"] == 7.5
    model = meta["model"]
    assert model["family"] == "SD15" and model["prediction"] == "eps" and model["file"] == ckpt.name
    assert model["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    unet = {k[len("model.diffusion_model."):]: v for k, v in load_file(str(ckpt)).items()
            if k.startswith("model.diffusion_model.")}
    assert model["fingerprint"] == fingerprint_state_dict(unet)
    assert solver.schedule.matches(gas.DiscreteVPSchedule.sd_linear())
    scores = meta["scores"]
    assert scores and "DPM-Solver++(3M)" in str(scores)
    report = list(solver_path.parent.glob("tiny_sd15-nfe4-gas*.md"))
    grid = list(solver_path.parent.glob("tiny_sd15-nfe4-gas*.png"))
    assert report and grid


def test_second_run_reuses_the_teacher_cache_and_refuses_to_overwrite(trained):
    _, _, solver_path, cmd = trained
    again = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=ENV)
    assert again.returncode == 2
    assert "already exists" in again.stderr and again.stderr.strip().count("\n") == 0
    other = [*cmd[: cmd.index("--nfe") + 1], "6", *cmd[cmd.index("--nfe") + 2:]]
    other[other.index("--quiet")] = "--no-report"
    done = subprocess.run(other, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "generating" not in done.stderr  # the teacher samples came from the cache
    assert (solver_path.parent / "tiny_sd15-nfe6-gas.safetensors").is_file()


def test_two_processes_under_torchrun_train_the_checkpoint(trained, tmp_path):
    """``torchrun --nproc_per_node=2 -m trainer --ckpt ...`` (gloo on the CPU): every process loads the checkpoint
    through ComfyUI, the teacher is generated on both, and rank 0 writes one solver the nodes can load."""
    _, _, _, cmd = trained
    argv = cmd[cmd.index("trainer") + 1:]
    for flag in ("--out", "--cache-dir", "--run-dir"):
        argv[argv.index(flag) + 1] = str(tmp_path / flag.strip("-"))
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
              f"--master_port={free_port()}"]
    done = subprocess.run([*launch, "-m", "trainer", *argv], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600, env=ENV)
    assert done.returncode == 0, done.stderr[-4000:]
    (solver_file,) = (tmp_path / "out").glob("*.safetensors")
    solver = gas.load_solver(solver_file)
    assert solver.metadata["model"]["family"] == "SD15" and not solver.is_untrained()
    shards = list((tmp_path / "cache-dir").glob("teacher-*/shard-*.safetensors"))
    assert shards, "the teacher cache is empty"


def test_bad_checkpoints_get_one_sentence(trained, tmp_path):
    root, _, _, _ = trained
    not_a_model = tmp_path / "notes.safetensors"
    not_a_model.write_bytes(b"definitely not a checkpoint")
    for target, expect in ((tmp_path / "missing.safetensors", "found neither"), (not_a_model, "not a checkpoint")):
        done = subprocess.run([sys.executable, "-m", "trainer", "--ckpt", str(target), "--comfyui", str(root),
                               "--out", str(tmp_path / "out"), "--quiet"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=300, env=ENV)
        assert done.returncode == 2, done.stderr[-2000:]
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and expect in last, done.stderr[-2000:]


def test_gas_nodes_load_and_sample_with_the_trained_solver(trained):
    root, ckpt, solver_path, _ = trained
    with ComfyServer(root, REPO_ROOT, pack_name="ComfyUI-GAS", copy_pack=True, checkpoints=[ckpt],
                     env={"OMP_NUM_THREADS": "1"}) as server:
        solvers = server.models_dir / "gas_solvers"
        solvers.mkdir(parents=True, exist_ok=True)
        shutil.copy(solver_path, solvers / solver_path.name)
        options = server.object_info("GASKSampler")["GASKSampler"]["input"]["required"]["solver"]
        assert solver_path.name in str(options)
        graph = {
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt.name}},
            "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse at dusk", "clip": ["1", 1]}},
            "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
            "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "5": {"class_type": "GASKSampler", "inputs": {
                "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
                "seed": 1, "cfg": 0.0, "solver": solver_path.name, "steps": 0, "denoise": 1.0}},
            "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
            "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "trained"}},
        }
        entry = server.run(graph, timeout=300)
        images = server.output_files(entry)
        assert images and all(Path(p).is_file() for p in images)
        assert "was trained on" not in server.log_text()  # same checkpoint: no mismatch warning
