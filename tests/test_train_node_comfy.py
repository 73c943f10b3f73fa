"""GAS Train Solver in a real ComfyUI server (headless, CPU, the tiny SD1.5 checkpoint at 64x64, GS, few iterations).

Needs ``COMFYUI_PATH``; skipped otherwise. One server for the module (the pack copied in as ``ComfyUI-GAS``), with
the tiny checkpoint and a tiny random LoRA for it. The tests share the teacher cache, so only the first run and the
LoRA run generate teacher samples.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.comfy_env import ComfyServer, ComfyServerError, require_comfyui
from tests.helpers.paths import REPO_ROOT
from tests.helpers.tiny_checkpoints import write_tiny_lora, write_tiny_sd15
from tests.helpers.workflows import to_api, validate_workflow

PACK_NAME = "ComfyUI-GAS"
CKPT = "tiny_sd15.safetensors"
LORA = "tiny_lora.safetensors"
ITERS = 20
TRAIN = {"prompts": "", "negative": "", "cfg": 7.5, "width": 64, "height": 64, "nfe": "4", "mode": "gs",
         "iterations": ITERS, "seed": 7, "overwrite": False, "teacher_steps": 8, "batch": 2, "learning_rate": 1e-3,
         "train_size": 8, "val_size": 4, "checkpoint_every": 100}
ENV = {"OMP_NUM_THREADS": "1"}


class Listener:
    """Collects the JSON messages of ComfyUI's websocket for one client id (a background thread)."""

    def __init__(self, server: ComfyServer) -> None:
        import websocket

        self.client_id = uuid.uuid4().hex
        self.messages: list[dict[str, Any]] = []
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws?clientId={self.client_id}",
                                              timeout=600)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                frame = self.ws.recv()
            except Exception:
                return
            if isinstance(frame, str) and frame.startswith("{"):  # JSON events; skip binary previews, close frames
                self.messages.append(json.loads(frame))

    def progress(self, node: str) -> list[tuple[int, int]]:
        return [(m["data"]["value"], m["data"]["max"]) for m in list(self.messages)
                if m.get("type") == "progress" and m["data"].get("node") == node]

    def close(self) -> None:
        self.ws.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = require_comfyui()
    work = tmp_path_factory.mktemp("train-node")
    ckpt = write_tiny_sd15(work / CKPT)
    with ComfyServer(root, REPO_ROOT, pack_name=PACK_NAME, copy_pack=True, checkpoints=[ckpt], env=ENV) as running:
        loras = running.models_dir / "loras"
        loras.mkdir(parents=True, exist_ok=True)
        write_tiny_lora(loras / LORA)
        yield running


def test_schema_help_page_and_template(server: ComfyServer) -> None:
    """In sampling/custom_sampling/gas, a tooltip on every input and output, its help page served, its example
    workflow in the template browser."""
    node = server.object_info("GASTrainSolver")["GASTrainSolver"]
    assert node["category"] == "sampling/custom_sampling/gas" and node["output_node"]
    for section in ("required", "optional"):
        for name, spec in node["input"][section].items():
            assert spec[1].get("tooltip"), name
    assert all(node["output_tooltips"]) and node["output"][0] == "COMBO"
    # the defaults the tooltips name are the recipes' (the schema cannot import the trainer at ComfyUI's start)
    from trainer.config import RECIPES

    inputs = {**node["input"]["required"], **node["input"]["optional"]}
    for name, key in (("learning_rate", "lr"), ("teacher_steps", "dpmpp3m_steps"), ("iterations", "iters")):
        assert inputs[name][1]["default"] == 0, name  # 0: the recipe's
        tip = inputs[name][1]["tooltip"]
        assert all(f"{RECIPES[r][key]:g} {r}" in tip for r in RECIPES), (name, tip)
    status, text = server.get_text(f"/extensions/{PACK_NAME}/docs/GASTrainSolver/en.md")
    assert status == 200 and text.startswith("# GAS Train Solver")
    status, text = server.get_text("/workflow_templates")
    assert status == 200 and "GAS Train Solver" in text


def solver_path(server: ComfyServer, name: str) -> Path:
    return server.models_dir / "gas_solvers" / f"{name}-nfe4-gs.safetensors"


def pack_dir(server: ComfyServer) -> Path:
    assert server.base_dir is not None
    return server.base_dir / "custom_nodes" / PACK_NAME


def train_graph(name: str, *, lora: bool = False, sample: bool = False, **changes: Any) -> dict[str, Any]:
    """Loader ("c"), optional LoRA ("l"), GAS Train Solver ("t"); ``sample``: its solver output drives GAS Sampler
    + GAS Sigmas + SamplerCustomAdvanced in the same graph."""
    graph: dict[str, Any] = {"c": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}}}
    model = ["c", 0]
    if lora:
        graph["l"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": model, "lora_name": LORA,
                                                                       "strength_model": 1.0}}
        model = ["l", 0]
    graph["t"] = {"class_type": "GASTrainSolver", "inputs": {
        **TRAIN, "solver_name": name, "model": model, "clip": ["c", 1], "vae": ["c", 2], **changes}}
    if sample:
        graph.update(sampling_nodes(["t", 0], model))
    return graph


def sampling_nodes(solver: Any, model: list[Any]) -> dict[str, Any]:
    return {
        "p": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["c", 1]}},
        "n": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["c", 1]}},
        "e": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "r": {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}},
        "g": {"class_type": "CFGGuider", "inputs": {"model": model, "positive": ["p", 0], "negative": ["n", 0],
                                                    "cfg": 7.5}},
        "s": {"class_type": "GASSampler", "inputs": {"solver": solver}},
        "z": {"class_type": "GASSigmas", "inputs": {"model": model, "solver": solver, "steps": 0, "denoise": 1.0}},
        "k": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["r", 0], "guider": ["g", 0],
                                                                "sampler": ["s", 0], "sigmas": ["z", 0],
                                                                "latent_image": ["e", 0]}},
        "d": {"class_type": "VAEDecode", "inputs": {"samples": ["k", 0], "vae": ["c", 2]}},
        "w": {"class_type": "SaveImage", "inputs": {"images": ["d", 0], "filename_prefix": "trained"}},
    }


def png_size(path: Path) -> tuple[int, int]:
    import struct

    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def preview_file(server: ComfyServer, entry: dict[str, Any]) -> Path:
    item = entry["outputs"]["t"]["images"][0]
    assert server.base_dir is not None
    return server.base_dir / item["type"] / item.get("subfolder", "") / item["filename"]


def post(server: ComfyServer, path: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(server.url + path, data=json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    urllib.request.urlopen(request, timeout=30).read()


@pytest.fixture(scope="module")
def first_run(server: ComfyServer) -> dict[str, Any]:
    """An uninterrupted run ("tiny-a") whose solver drives sampling in the same graph; websocket messages kept."""
    listener = Listener(server)
    try:
        prompt_id = server.post_prompt(train_graph("tiny-a", sample=True), client_id=listener.client_id)
        entry = server.wait(prompt_id, timeout=400)
        time.sleep(0.5)
        return {"entry": entry, "progress": listener.progress("t")}
    finally:
        listener.close()


def test_queued_training_writes_the_solver_and_samples_with_it(server: ComfyServer, first_run: dict[str, Any]):
    import gas

    path = solver_path(server, "tiny-a")
    solver = gas.load_solver(path)
    assert solver.nfe == 4 and not solver.is_untrained()
    meta = solver.metadata
    assert meta["mode"] == "gs" and meta["iterations"] == ITERS and meta["cfg"] == 7.5
    assert meta["model"]["family"] == "SD15" and meta["model"]["file"] == CKPT and len(meta["model"]["sha256"]) == 64
    assert meta["model"]["fingerprint"].startswith("w16s-") and "patches" not in meta["model"]
    images = server.output_files(first_run["entry"])
    assert len(images) == 1 and png_size(images[0]) == (64, 64)  # sampled in the same graph, through the link
    # rows: teacher, GS, DPM-Solver++(3M); columns: the 4 held-out samples; 64x64 each
    assert png_size(preview_file(server, first_run["entry"])) == (4 * 64, 3 * 64)
    assert (path.parent / "tiny-a-nfe4-gs.md").is_file() and (path.parent / "tiny-a-nfe4-gs.png").is_file()


def test_a_second_graph_samples_with_the_new_file(server: ComfyServer, first_run: dict[str, Any]):
    info = server.object_info("GASSampler")["GASSampler"]["input"]["required"]["solver"]
    assert "tiny-a-nfe4-gs.safetensors" in json.dumps(info)  # in the dropdown without a restart
    graph = {"c": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
             **sampling_nodes("tiny-a-nfe4-gs.safetensors", ["c", 0])}
    entry = server.run(graph, timeout=120)
    images = server.output_files(entry)
    assert len(images) == 1 and png_size(images[0]) == (64, 64)
    assert "weights differ" not in server.log_text()  # the trained model is the sampled one


def test_progress_reaches_the_websocket(first_run: dict[str, Any]):
    progress = first_run["progress"]
    assert (0, ITERS) in progress and (ITERS, ITERS) in progress  # the training phase, start to end
    assert (8, 8) in progress and (4, 4) in progress  # teacher: 8 training and 4 held-out samples


def test_interrupt_then_requeue_resumes_to_the_same_solver(server: ComfyServer, first_run: dict[str, Any]):
    listener = Listener(server)
    try:
        prompt_id = server.post_prompt(train_graph("tiny-b"), client_id=listener.client_id)
        deadline = time.monotonic() + 300
        while not any(m == ITERS and v >= 3 for v, m in listener.progress("t")):
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.05)
        asked = time.monotonic()
        post(server, "/interrupt", {})
        with pytest.raises(ComfyServerError, match="interrupted"):
            server.wait(prompt_id, timeout=60)
        assert time.monotonic() - asked < 10  # stops within a few seconds
        stopped_at = max(v for v, m in listener.progress("t") if m == ITERS)
    finally:
        listener.close()
    state = pack_dir(server) / "runs" / "tiny-b-nfe4-gs" / "state.pt"
    assert state.is_file() and not solver_path(server, "tiny-b").exists()
    assert stopped_at < ITERS
    server.run(train_graph("tiny-b"), timeout=300)
    assert "resuming" in server.log_text()
    a, b = load_file(str(solver_path(server, "tiny-a"))), load_file(str(solver_path(server, "tiny-b")))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=0, atol=1e-6), key
    assert not state.exists()


def teacher_latents(server: ComfyServer, fingerprint: str) -> torch.Tensor:
    for key_file in (pack_dir(server) / "gas_cache").glob("teacher-*/key.json"):
        if json.loads(key_file.read_text())["identity"].get("fingerprint") == fingerprint:
            shards = sorted(key_file.parent.glob("shard-*.safetensors"))
            return load_file(str(shards[0]))["latents"]
    raise AssertionError(f"no teacher cache for fingerprint {fingerprint}")


def test_a_lora_model_trains_for_the_patched_weights(server: ComfyServer, first_run: dict[str, Any]):
    import gas

    server.run(train_graph("tiny-lora", lora=True, iterations=2), timeout=300)
    plain = gas.load_solver(solver_path(server, "tiny-a")).metadata["model"]
    patched = gas.load_solver(solver_path(server, "tiny-lora")).metadata["model"]
    assert patched["fingerprint"] != plain["fingerprint"]
    assert patched["file"] == CKPT and patched["patches"][0]["lora_name"] == LORA
    lat_plain, lat_lora = teacher_latents(server, plain["fingerprint"]), teacher_latents(server, patched["fingerprint"])
    assert lat_plain.shape == lat_lora.shape
    assert (lat_plain - lat_lora).abs().mean() > 1e-3 * lat_plain.abs().mean()
    # sampling the unpatched model with the LoRA solver warns that the weights differ
    graph = {"c": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
             **sampling_nodes("tiny-lora-nfe4-gs.safetensors", ["c", 0])}
    server.run(graph, timeout=120)
    assert "weights differ" in server.log_text()


def expect_error(server: ComfyServer, graph: dict[str, Any]) -> str:
    error = server.wait_for_error(server.post_prompt(graph), timeout=300)
    assert error["exception_type"].endswith("GASNodeError"), error
    message = error["exception_message"]
    assert message.count(". ") == 0 and "\n" not in message.strip(), message
    return message


def test_bad_inputs_get_one_sentence(server: ComfyServer, first_run: dict[str, Any]):
    with pytest.raises(ComfyServerError, match="nfe '40' is not a number of steps"):
        server.post_prompt(train_graph("x", nfe="40"))
    assert "already exists" in expect_error(server, train_graph("tiny-a", iterations=3))
    assert "holds no prompt" in expect_error(server, train_graph("y", prompts="# only a comment\n"))
    lcm = train_graph("z")
    lcm["m"] = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["c", 0], "sampling": "lcm",
                                                                  "zsnr": False}}
    lcm["t"]["inputs"]["model"] = ["m", 0]
    assert "the connected model is a SD15 model" in expect_error(server, lcm)


def test_example_workflow_trains_and_samples(server: ComfyServer, first_run: dict[str, Any]):
    workflow = json.loads((REPO_ROOT / "example_workflows" / "GAS Train Solver.json").read_text())
    info = server.object_info()
    assert validate_workflow(workflow, info) == []
    for node in workflow["nodes"]:  # the LoRA loader ships bypassed: enable it, as the workflow's note says
        if node["type"] == "LoraLoader":
            assert node["mode"] == 4
            node["mode"] = 0
    prompt = to_api(workflow, info)
    kinds = {node["class_type"] for node in prompt.values()}
    assert {"LoraLoader", "GASTrainSolver", "GASModelPatch", "KSampler"} <= kinds
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = CKPT
        if node["class_type"] == "LoraLoader":
            inputs["lora_name"] = LORA
        if node["class_type"] == "EmptyLatentImage":
            inputs.update(width=64, height=64)
        if node["class_type"] == "GASTrainSolver":
            inputs.update({k: v for k, v in TRAIN.items() if k not in ("prompts", "negative")}, iterations=2,
                          solver_name="example")
    entry = server.run(prompt, timeout=300)
    assert any(png_size(p) == (64, 64) for p in server.output_files(entry))
    assert solver_path(server, "example").is_file()
