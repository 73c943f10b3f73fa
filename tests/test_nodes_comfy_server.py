"""The node pack in a real ComfyUI server (headless, CPU, 127.0.0.1): schemas, the solver folder, graphs through
/prompt, error messages and the example workflows.

Needs ``COMFYUI_PATH`` (a ComfyUI checkout whose requirements are installed in this interpreter); skipped otherwise.
One server for the module: the pack is copied in under the folder name ``ComfyUI-GAS`` (a name Python cannot import
directly, so only relative imports work), with an ``extra_model_paths.yaml`` that declares a ``gas_solvers`` folder.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

import gas
from gas.comfy_bridge import fingerprint_state_dict
from tests.helpers.comfy_env import ComfyServer, ComfyServerError, require_comfyui
from tests.helpers.paths import REPO_ROOT
from tests.helpers.solvers import write_solver
from tests.helpers.tiny_checkpoints import tiny_sd15_state_dict, write_tiny_sd15
from tests.helpers.workflows import to_api, validate_workflow

PACK_NAME = "ComfyUI-GAS"
CKPT = "tiny_sd15.safetensors"
SOLVER = "sd15-nfe4-gas.safetensors"
SOLVER6 = "sd15-nfe6-test.safetensors"  # in the pack's own folder
FLOW_SOLVER = "sd3-flow-nfe4-test.safetensors"  # in the extra_model_paths.yaml folder
OTHER_CKPT_SOLVER = "sd15-otherckpt-test.safetensors"
BROKEN = "broken-test.safetensors"
NO_SOLVER = "(none) DPM-Solver++(3M)"
NODE_IDS = ("GASSampler", "GASSigmas", "GASKSampler", "GASSolverInfo", "GASModelPatch")
ENV = {"OMP_NUM_THREADS": "1"}


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def fingerprint() -> str:
    """The weights fingerprint of the tiny checkpoint's UNet, computed from its tensors (no ComfyUI)."""
    prefix = "model.diffusion_model."
    state = {k[len(prefix):]: v for k, v in tiny_sd15_state_dict().items() if k.startswith(prefix)}
    value = fingerprint_state_dict(state)
    assert value is not None
    return value


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fingerprint: str):
    """One ComfyUI server for the module, with the pack, the tiny checkpoint and solver files in all three folders."""
    root = require_comfyui()
    work = tmp_path_factory.mktemp("server")
    ckpt = write_tiny_sd15(work / CKPT)
    extra = work / "extra_solvers"
    extra.mkdir()
    write_solver(extra / FLOW_SOLVER, 4, 3, schedule=gas.FlowSchedule(3.0),
                 model={"family": "SD3", "prediction": "flow"}, cfg=4.5)
    (extra / "notes.txt").write_text("not a solver")
    yaml = work / "extra_model_paths.yaml"
    yaml.write_text(f"gas_test:\n    gas_solvers: {extra}\n")
    with ComfyServer(root, REPO_ROOT, pack_name=PACK_NAME, copy_pack=True, checkpoints=[ckpt], env=ENV,
                     extra_args=["--extra-model-paths-config", str(yaml)]) as running:
        comfy_dir = running.models_dir / "gas_solvers"
        comfy_dir.mkdir(parents=True, exist_ok=True)
        model = {"family": "SD15", "prediction": "eps", "file": CKPT, "fingerprint": fingerprint}
        write_solver(comfy_dir / SOLVER, 4, 0, model=model)
        other = {**model, "file": "some-finetune.safetensors", "fingerprint": "w16s-0123456789abcdef01234567"}
        write_solver(comfy_dir / OTHER_CKPT_SOLVER, 4, 5, model=other)
        (comfy_dir / BROKEN).write_bytes(b"\x00" * 64)
        write_solver(running.base_dir / "custom_nodes" / PACK_NAME / "models" / "gas_solvers" / SOLVER6, 6, 2,
                     model=model)
        yield running


def text_graph() -> dict[str, dict[str, Any]]:
    """Loader ("t1"), positive ("t2"), empty negative ("t3"), 64x64 latent ("t4")."""
    return {
        "t1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "t2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a fox", "clip": ["t1", 1]}},
        "t3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["t1", 1]}},
        "t4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }


def save(graph: dict[str, Any], node: str, latent: list[Any], name: str) -> None:
    """Decode ``latent`` and save it as ``name``."""
    graph[f"{node}d"] = {"class_type": "VAEDecode", "inputs": {"samples": latent, "vae": ["t1", 2]}}
    graph[f"{node}s"] = {"class_type": "SaveImage", "inputs": {"images": [f"{node}d", 0], "filename_prefix": name}}


def custom_graph(solver: str, sigmas_solver: str | None = None, *, cfg: float = 7.5, scheduler: bool = False,
                 prefix: str = "custom") -> dict[str, Any]:
    """SamplerCustom with GAS Sampler and GAS Sigmas (or BasicScheduler): output and denoised_output saved."""
    graph = text_graph()
    graph["s"] = {"class_type": "GASSampler", "inputs": {"solver": solver}}
    if scheduler:
        graph["g"] = {"class_type": "BasicScheduler",
                      "inputs": {"model": ["t1", 0], "scheduler": "karras", "steps": 4, "denoise": 1.0}}
    else:
        graph["g"] = {"class_type": "GASSigmas", "inputs": {"model": ["t1", 0], "solver": sigmas_solver or solver,
                                                            "steps": 0, "denoise": 1.0}}
    graph["k"] = {"class_type": "SamplerCustom", "inputs": {
        "model": ["t1", 0], "add_noise": True, "noise_seed": 1, "cfg": cfg, "positive": ["t2", 0],
        "negative": ["t3", 0], "sampler": ["s", 0], "sigmas": ["g", 0], "latent_image": ["t4", 0]}}
    save(graph, "out", ["k", 0], f"{prefix}_output")
    save(graph, "den", ["k", 1], f"{prefix}_denoised")
    return graph


def advanced_graph(solver: str) -> dict[str, Any]:
    """SamplerCustomAdvanced with RandomNoise, CFGGuider, GAS Sampler and GAS Sigmas."""
    graph = text_graph()
    graph["n"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}}
    graph["c"] = {"class_type": "CFGGuider", "inputs": {"model": ["t1", 0], "positive": ["t2", 0],
                                                        "negative": ["t3", 0], "cfg": 7.5}}
    graph["s"] = {"class_type": "GASSampler", "inputs": {"solver": solver}}
    graph["g"] = {"class_type": "GASSigmas", "inputs": {"model": ["t1", 0], "solver": solver, "steps": 0,
                                                        "denoise": 1.0}}
    graph["k"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["n", 0], "guider": ["c", 0], "sampler": ["s", 0], "sigmas": ["g", 0], "latent_image": ["t4", 0]}}
    save(graph, "out", ["k", 0], "advanced")
    return graph


def ksampler_graph(solver: str, *, denoise: float = 1.0, cfg: float = 0.0, steps: int = 0) -> dict[str, Any]:
    """GAS KSampler, decoded and saved."""
    graph = text_graph()
    graph["k"] = {"class_type": "GASKSampler", "inputs": {
        "model": ["t1", 0], "positive": ["t2", 0], "negative": ["t3", 0], "latent_image": ["t4", 0], "seed": 5,
        "cfg": cfg, "solver": solver, "steps": steps, "denoise": denoise}}
    save(graph, "out", ["k", 0], "gas_ksampler")
    return graph


def run_images(server: ComfyServer, graph: dict[str, Any]) -> list[Path]:
    entry = server.run(graph, timeout=300)
    images = server.output_files(entry)
    assert images and all(p.is_file() and png_size(p) == (64, 64) for p in images)
    return images


def expect_execution_error(server: ComfyServer, graph: dict[str, Any]) -> dict[str, Any]:
    """The execution error of a graph that must fail while running: our exception, no frame from inside torch."""
    error = server.wait_for_error(server.post_prompt(graph), timeout=300)
    assert error["exception_type"].endswith("GASNodeError"), error
    frames = [line.split("\n")[0] for line in error["traceback"]]
    assert not any("site-packages/torch/" in line for line in frames), "\n".join(error["traceback"])
    return error


def expect_rejected(server: ComfyServer, graph: dict[str, Any]) -> str:
    """The validation error text of a graph /prompt refuses."""
    with pytest.raises(ComfyServerError) as caught:
        server.post_prompt(graph)
    return str(caught.value)


# ----- loading, schemas, the folder ----------------------------------------------------------------------------------


def test_pack_loads_cleanly(server: ComfyServer) -> None:
    """The pack imports under a non-identifier folder name without errors or warnings of its own."""
    log = server.log_text()
    lines = [line for line in log.splitlines() if PACK_NAME in line]
    assert any("custom_nodes" in line and "seconds" in line for line in lines), log[-3000:]
    assert not any("IMPORT FAILED" in line or "Cannot import" in line for line in lines)
    assert "[GAS]" not in log.split("Starting server")[0]
    assert "Traceback" not in "\n".join(line for line in log.splitlines() if "gas" in line.lower())


def test_object_info_has_nodes_with_tooltips(server: ComfyServer) -> None:
    """The four nodes, in sampling/custom_sampling/..., from this pack, with a tooltip on every input and output."""
    info = server.object_info()
    for node_id in NODE_IDS:
        node = info[node_id]
        assert node["category"].startswith("sampling/custom_sampling/")
        assert node["python_module"] == f"custom_nodes.{PACK_NAME}"
        assert node["display_name"].startswith("GAS ")
        assert node["description"]
        for name, spec in {**node["input"]["required"], **node["input"].get("optional", {})}.items():
            assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert all(node["output_tooltips"])
    assert info["GASSampler"]["output"] == ["SAMPLER"]
    assert info["GASSigmas"]["output"] == ["SIGMAS"]
    assert info["GASKSampler"]["output"] == ["LATENT"]
    assert info["GASSolverInfo"]["output"] == ["STRING"] and info["GASSolverInfo"]["output_node"]


def solver_options(server: ComfyServer, node_id: str = "GASSampler") -> list[str]:
    return server.object_info(node_id)[node_id]["input"]["required"]["solver"][1]["options"]


def test_dropdown_lists_safetensors_from_every_folder(server: ComfyServer) -> None:
    """ComfyUI's models/gas_solvers, the pack's own folder and the extra_model_paths.yaml folder; only .safetensors;
    the no-solver entry first."""
    options = solver_options(server)
    assert options[0] == NO_SOLVER
    assert {SOLVER, SOLVER6, FLOW_SOLVER, OTHER_CKPT_SOLVER, BROKEN} <= set(options)
    assert all(o == NO_SOLVER or o.endswith(".safetensors") for o in options)
    assert options[1:] == sorted(options[1:])
    for node_id in NODE_IDS:
        assert solver_options(server, node_id) == options


def test_dropdown_refreshes_without_restart(server: ComfyServer) -> None:
    """A solver file added while the server runs is listed by the next /object_info."""
    name = "added-later-test.safetensors"
    assert name not in solver_options(server)
    write_solver(server.models_dir / "gas_solvers" / name, 4, 9)
    assert name in solver_options(server)


def test_help_pages_are_served(server: ComfyServer) -> None:
    """web/docs/<NodeId>/en.md, where this frontend first looks for a custom node's help page (English locale)."""
    for node_id in NODE_IDS:
        status, text = server.get_text(f"/extensions/{PACK_NAME}/docs/{node_id}/en.md")
        assert status == 200 and text.startswith("# ")


def test_example_workflows_are_listed(server: ComfyServer) -> None:
    """The template browser lists the example workflows."""
    status, text = server.get_text("/workflow_templates")
    assert status == 200
    listed = set(json.loads(text).get(PACK_NAME, []))
    assert {p.stem for p in (REPO_ROOT / "example_workflows").glob("*.json")} <= listed


# ----- graphs -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", [SOLVER, NO_SOLVER])
def test_sampler_custom(server: ComfyServer, solver: str) -> None:
    """GAS Sampler + GAS Sigmas in SamplerCustom: output and denoised_output (filled by the sampler callback: the
    last x0 prediction, not a copy of the output) both decode to images."""
    images = run_images(server, custom_graph(solver, prefix=f"custom_{len(solver)}"))
    assert len(images) == 2
    output, denoised = sorted(images, key=lambda p: "denoised" in p.name)
    assert "denoised" in denoised.name and output.read_bytes() != denoised.read_bytes()


def test_sampler_custom_no_solver_any_scheduler(server: ComfyServer) -> None:
    """The no-solver entry runs on a ComfyUI scheduler's sigmas (karras, trailing 0)."""
    assert len(run_images(server, custom_graph(NO_SOLVER, scheduler=True, prefix="karras"))) == 2


@pytest.mark.parametrize("solver", [SOLVER, NO_SOLVER])
def test_sampler_custom_advanced(server: ComfyServer, solver: str) -> None:
    """GAS Sampler + GAS Sigmas in SamplerCustomAdvanced (RandomNoise, CFGGuider)."""
    assert len(run_images(server, advanced_graph(solver))) == 1


@pytest.mark.parametrize("solver", [SOLVER, NO_SOLVER])
def test_gas_ksampler(server: ComfyServer, solver: str) -> None:
    """The one-node path, cfg 0 (the solver's)."""
    assert len(run_images(server, ksampler_graph(solver))) == 1


def test_gas_ksampler_denoise_below_one(server: ComfyServer) -> None:
    """denoise 0.5: as ComfyUI's schedulers, the last 4 of the 8-step grid run (as DPM-Solver++(3M)), with a warning
    saying so."""
    assert len(run_images(server, ksampler_graph(SOLVER, denoise=0.5))) == 1
    log = server.log_text()
    assert f"denoise 0.5: running the last 4 of the 8 steps of GAS solver '{SOLVER}''s grid" in log
    assert "learned steps of the solver with" not in log  # the core's own SigmasTailWarning is filtered by class


def test_solver_info_node(server: ComfyServer) -> None:
    """GAS Solver Info returns what the file was trained for."""
    entry = server.run({"i": {"class_type": "GASSolverInfo", "inputs": {"solver": SOLVER}}})
    text = entry["outputs"]["i"]["text"][0]
    for expected in ("steps (NFE): 4", "SD15", "eps prediction", "cfg: 7.5", "mode: gas", "lpips_vs_teacher",
                     "linear betas", CKPT):
        assert expected in text


def test_cfg_and_checkpoint_mismatch_only_warn(server: ComfyServer) -> None:
    """Another cfg than the solver's, and weights other than the recorded checkpoint's: the run succeeds, the log
    says why the result may be worse."""
    run_images(server, custom_graph(OTHER_CKPT_SOLVER, cfg=3.0, prefix="warn"))
    log = server.log_text()
    assert f"GAS solver '{OTHER_CKPT_SOLVER}' was trained for cfg 7.5, but cfg is 3" in log
    assert f"GAS solver '{OTHER_CKPT_SOLVER}' was trained on checkpoint 'some-finetune.safetensors'" in log
    assert f"GAS solver '{SOLVER}' was trained on checkpoint" not in log  # its recorded fingerprint matches


# ----- errors -------------------------------------------------------------------------------------------------------


def test_wrong_family_is_one_clear_error(server: ComfyServer) -> None:
    """A flow-model solver on SD1.5: GAS Sigmas refuses, naming both sides."""
    error = expect_execution_error(server, custom_graph(FLOW_SOLVER))
    assert error["node_type"] == "GASSigmas"
    message = error["exception_message"]
    assert f"GAS solver '{FLOW_SOLVER}' was trained for SD3 models (flow-matching noise schedule)" in message
    assert "SD15" in message and "\n" not in message.strip()


def test_wrong_family_in_the_sampler(server: ComfyServer) -> None:
    """The same solver in GAS Sampler with other sigmas: the sampler refuses before any network call."""
    error = expect_execution_error(server, custom_graph(FLOW_SOLVER, scheduler=True))
    assert error["node_type"] == "SamplerCustom"
    assert "(flow-matching noise schedule) and does not fit SD15" in error["exception_message"]


def test_sigmas_not_the_grid(server: ComfyServer) -> None:
    """BasicScheduler sigmas with a learned solver: refused, pointing to GAS Sigmas."""
    error = expect_execution_error(server, custom_graph(SOLVER, scheduler=True))
    message = error["exception_message"]
    assert "are not the learned grid of GAS solver" in message and "GAS Sigmas" in message


def test_nfe_mismatch(server: ComfyServer) -> None:
    """GAS Sigmas of a 6-step solver with a 4-step GAS Sampler: refused; steps the solver file does not hold: the
    resampled grid runs (as DPM-Solver++(3M)), with a warning."""
    error = expect_execution_error(server, custom_graph(SOLVER, sigmas_solver=SOLVER6))
    assert error["exception_message"].startswith("NFE mismatch: the sigmas have 6 steps but GAS solver")
    assert len(run_images(server, ksampler_graph(SOLVER, steps=6))) == 1
    assert f"GAS solver '{SOLVER}' holds learned solvers for 4 steps, not 6" in server.log_text()


def test_missing_solver_file_rejected(server: ComfyServer) -> None:
    """A name that is not in the folders: /prompt refuses the graph with our sentence (ComfyUI does not check V3
    dropdown values itself)."""
    text = expect_rejected(server, custom_graph("no-such-solver.safetensors"))
    assert "GAS solver 'no-such-solver.safetensors' was not found in the solver folders" in text


def test_invalid_solver_file_rejected(server: ComfyServer) -> None:
    """A damaged file: refused at validation with the loader's reason."""
    text = expect_rejected(server, ksampler_graph(BROKEN))
    assert f"GAS solver '{BROKEN}' cannot be used:" in text and "safetensors" in text


# ----- example workflows --------------------------------------------------------------------------------------------


WORKFLOWS = sorted((REPO_ROOT / "example_workflows").glob("*.json"))
#: The training workflow runs with small settings in tests/test_train_node_comfy.py.
SAMPLING_WORKFLOWS = [p for p in WORKFLOWS if "GASTrainSolver" not in p.read_text()]


def test_there_are_four_example_workflows() -> None:
    assert len(WORKFLOWS) == 5 and len(SAMPLING_WORKFLOWS) == 4
    assert all(p.with_suffix(".jpg").is_file() for p in WORKFLOWS)


@pytest.mark.parametrize("solver", [None, SOLVER], ids=["as-shipped", "trained-solver"])
@pytest.mark.parametrize("path", SAMPLING_WORKFLOWS, ids=lambda p: p.stem)
def test_example_workflow_runs(server: ComfyServer, path: Path, solver: str | None) -> None:
    """Every node type and link type exists in /object_info; the workflow, converted to API format with the tiny
    checkpoint and 64x64 latents, runs and writes its images: as shipped (no learned solver), and with a 4-step
    solver picked in every solver dropdown (what a user does after training one)."""
    workflow = json.loads(path.read_text())
    info = server.object_info()
    assert validate_workflow(workflow, info) == []
    prompt = to_api(workflow, info)
    saves = 0
    for node in prompt.values():
        if node["class_type"] == "CheckpointLoaderSimple":
            node["inputs"]["ckpt_name"] = CKPT
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=64, height=64)
        if solver and node["class_type"] in NODE_IDS:
            node["inputs"]["solver"] = solver
        saves += node["class_type"] == "SaveImage"
    entry = server.run(prompt, timeout=300)
    images = server.output_files(entry)
    assert len(images) == saves and all(png_size(p) == (64, 64) for p in images)
