"""Learned solvers in ComfyUI's stock sampling path, in a real ComfyUI server (headless, CPU): GAS Model Patch, the
sampler ``gas`` and the scheduler ``gas`` in KSampler / KSamplerAdvanced / KSamplerSelect + BasicScheduler.

Every parity check runs both graphs in one prompt and compares the saved latents (SaveLatent, float32): the stock
path must give what GAS Sampler + GAS Sigmas + SamplerCustomAdvanced give with the same seed, cfg and solver. That
also proves the float-timestep treatment applies on the stock path (the GAS path has it, see
test_nodes_comfy_inprocess.py). Needs ``COMFYUI_PATH``; skipped otherwise.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import gas
from tests.helpers.comfy_env import ComfyServer, require_comfyui
from tests.helpers.paths import REPO_ROOT
from tests.helpers.solvers import write_solver
from tests.helpers.tiny_checkpoints import TINY_TIME_EMBED_LORA_LAYERS, write_tiny_lora, write_tiny_sd15
from tests.test_nodes_comfy_server import expect_execution_error

PACK_NAME = "ComfyUI-GAS"
CKPT = "tiny_sd15.safetensors"
SOLVER = "sd15-nfe4-stock.safetensors"
MULTI = "sd15-nfe4-6-stock.safetensors"
LORA = "tiny-lora.safetensors"
NO_SOLVER = "(none) DPM-Solver++(3M)"
SEED, CFG = 11, 7.5
TOL = 1e-5
ENV = {"OMP_NUM_THREADS": "1"}
_ids = itertools.count()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """One server with the pack, the tiny checkpoint, a LoRA, a 4-step solver and a {4, 6}-step solver file."""
    root = require_comfyui()
    work = tmp_path_factory.mktemp("stock")
    ckpt = write_tiny_sd15(work / CKPT)
    with ComfyServer(root, REPO_ROOT, pack_name=PACK_NAME, copy_pack=True, checkpoints=[ckpt], env=ENV) as running:
        solvers = running.models_dir / "gas_solvers"
        solvers.mkdir(parents=True, exist_ok=True)
        write_solver(solvers / SOLVER, 4, 21)
        write_solver(work / "six.safetensors", 6, 22)
        gas.combine_solver_files([solvers / SOLVER, work / "six.safetensors"], solvers / MULTI)
        (running.models_dir / "loras").mkdir(parents=True, exist_ok=True)
        write_tiny_lora(running.models_dir / "loras" / LORA, TINY_TIME_EMBED_LORA_LAYERS, seed=7, scale=0.3)
        yield running


# ----- graph pieces (API format) --------------------------------------------------------------------------------------


def base_graph() -> dict[str, Any]:
    """Loader "t1", positive "t2", empty negative "t3", 64x64 empty latent "t4"."""
    return {
        "t1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "t2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox in snow", "clip": ["t1", 1]}},
        "t3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["t1", 1]}},
        "t4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }


def add(graph: dict[str, Any], class_type: str, **inputs: Any) -> list[Any]:
    """Add a node; return its first output as a link."""
    node = f"n{next(_ids)}"
    graph[node] = {"class_type": class_type, "inputs": inputs}
    return [node, 0]


def patched(graph: dict[str, Any], model: list[Any] | None = None, solver: str = SOLVER) -> list[Any]:
    return add(graph, "GASModelPatch", model=model or ["t1", 0], solver=solver)


def ksampler(graph: dict[str, Any], model: list[Any], sampler: str = "gas", scheduler: str = "gas", steps: int = 4,
             denoise: float = 1.0, latent: list[Any] | None = None) -> list[Any]:
    return add(graph, "KSampler", model=model, seed=SEED, steps=steps, cfg=CFG, sampler_name=sampler,
               scheduler=scheduler, positive=["t2", 0], negative=["t3", 0], latent_image=latent or ["t4", 0],
               denoise=denoise)


def ksampler_advanced(graph: dict[str, Any], model: list[Any], *, add_noise: bool = True, start: int = 0,
                      end: int = 10000, leftover: bool = False, latent: list[Any] | None = None) -> list[Any]:
    return add(graph, "KSamplerAdvanced", model=model, add_noise="enable" if add_noise else "disable",
               noise_seed=SEED, steps=4, cfg=CFG, sampler_name="gas", scheduler="gas", positive=["t2", 0],
               negative=["t3", 0], latent_image=latent or ["t4", 0], start_at_step=start, end_at_step=end,
               return_with_leftover_noise="enable" if leftover else "disable")


def gas_sigmas(graph: dict[str, Any], solver: str = SOLVER, steps: int = 0, denoise: float = 1.0) -> list[Any]:
    return add(graph, "GASSigmas", model=["t1", 0], solver=solver, steps=steps, denoise=denoise)


def custom_advanced(graph: dict[str, Any], sigmas: list[Any], *, solver: str = SOLVER, model: list[Any] | None = None,
                    add_noise: bool = True, latent: list[Any] | None = None,
                    sampler: list[Any] | None = None) -> list[Any]:
    """SamplerCustomAdvanced with RandomNoise(SEED) (or DisableNoise), CFGGuider(CFG) and GAS Sampler(solver)."""
    noise = add(graph, "RandomNoise", noise_seed=SEED) if add_noise else add(graph, "DisableNoise")
    guider = add(graph, "CFGGuider", model=model or ["t1", 0], positive=["t2", 0], negative=["t3", 0], cfg=CFG)
    sampler = sampler or add(graph, "GASSampler", solver=solver)
    return add(graph, "SamplerCustomAdvanced", noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
               latent_image=latent or ["t4", 0])


def run_latents(server: ComfyServer, graph: dict[str, Any], *outputs: list[Any]) -> list[torch.Tensor]:
    """Save each output with SaveLatent, run the graph, and return the saved latents in order."""
    saves = [add(graph, "SaveLatent", samples=out, filename_prefix=f"latents/stock{next(_ids)}")[0] for out in outputs]
    entry = server.run(graph, timeout=300)
    latents = []
    for node in saves:
        item = entry["outputs"][node]["latents"][0]
        latents.append(load_file(str(server.output_dir / item["subfolder"] / item["filename"]))["latent_tensor"])
    return latents


def failing(server: ComfyServer, graph: dict[str, Any], out: list[Any]) -> dict[str, Any]:
    """Save ``out`` with SaveLatent and expect the run to fail with our one-sentence error (no torch frames)."""
    add(graph, "SaveLatent", samples=out, filename_prefix=f"latents/failing{next(_ids)}")
    error = expect_execution_error(server, graph)
    assert "\n" not in error["exception_message"].strip()
    return error


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape and a.dtype == torch.float32
    return float((a - b).abs().max())


# ----- registration ---------------------------------------------------------------------------------------------------


def test_gas_is_listed_once_for_every_stock_node(server: ComfyServer) -> None:
    """/object_info: 'gas' in the sampler lists of KSampler, KSamplerAdvanced and KSamplerSelect and in the scheduler
    lists of KSampler, KSamplerAdvanced and BasicScheduler, once each, after ComfyUI's own names."""
    info = server.object_info()
    lists = {
        "KSampler.sampler_name": info["KSampler"]["input"]["required"]["sampler_name"][0],
        "KSamplerAdvanced.sampler_name": info["KSamplerAdvanced"]["input"]["required"]["sampler_name"][0],
        "KSamplerSelect.sampler_name": info["KSamplerSelect"]["input"]["required"]["sampler_name"][0],
        "KSampler.scheduler": info["KSampler"]["input"]["required"]["scheduler"][0],
        "KSamplerAdvanced.scheduler": info["KSamplerAdvanced"]["input"]["required"]["scheduler"][0],
        "BasicScheduler.scheduler": info["BasicScheduler"]["input"]["required"]["scheduler"][0],
    }
    for where, names in lists.items():
        assert names.count("gas") == 1 and names[-1] == "gas", where
        assert "euler" in names or "karras" in names, where
    assert info["GASModelPatch"]["output"] == ["MODEL"]


def test_registration_is_idempotent_and_replaces_nothing() -> None:
    """The pack loaded twice into one ComfyUI (two package names): every list holds 'gas' once, ComfyUI's own sampler
    functions and scheduler handlers are the same objects as before, and only the 'gas' entries are new."""
    root = require_comfyui()
    done = subprocess.run([sys.executable, "-m", "tests.scripts.stock_registration", str(root)], cwd=REPO_ROOT,
                          env={**os.environ, **ENV}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    assert done.stdout.strip().splitlines()[-1] == "OK"


# ----- parity with the GAS Sampler path -------------------------------------------------------------------------------


def test_ksampler_equals_the_gas_sampler_path(server: ComfyServer) -> None:
    """KSampler(patched, gas, gas, steps = NFE) == GAS Sampler + GAS Sigmas + SamplerCustomAdvanced; the learned
    solver matters (the no-solver run on the same sigmas differs); the patch left the unpatched model alone."""
    graph = base_graph()
    stock = ksampler(graph, patched(graph))
    reference = custom_advanced(graph, gas_sigmas(graph))
    untrained = custom_advanced(graph, gas_sigmas(graph), solver=NO_SOLVER)
    a, b, c = run_latents(server, graph, stock, reference, untrained)
    assert max_diff(a, b) <= TOL
    assert max_diff(a, c) > 1e-3


def test_ksampler_advanced_full_and_without_noise(server: ComfyServer) -> None:
    """KSamplerAdvanced over all steps == KSampler; with add_noise off == SamplerCustomAdvanced with DisableNoise
    (on a non-empty latent)."""
    graph = base_graph()
    model = patched(graph)
    first = ksampler(graph, model)
    full = ksampler_advanced(graph, model)
    quiet = ksampler_advanced(graph, model, add_noise=False, latent=first)
    reference = custom_advanced(graph, gas_sigmas(graph), add_noise=False, latent=first)
    a, b, c, d = run_latents(server, graph, first, full, quiet, reference)
    assert max_diff(a, b) <= TOL
    assert max_diff(c, d) <= TOL and max_diff(c, a) > 1e-3


def test_ksampler_advanced_start_and_end_steps(server: ComfyServer) -> None:
    """Steps 0..2 with leftover noise, then 2..4 without new noise (the refiner pattern) == SplitSigmas halves of
    GAS Sigmas through GAS Sampler; both parts run as plain DPM-Solver++(3M) on the learned timesteps (logged). End at
    step 2 with a full denoise runs too (a final step to 0)."""
    graph = base_graph()
    model = patched(graph)
    head = ksampler_advanced(graph, model, end=2, leftover=True)
    tail = ksampler_advanced(graph, model, start=2, add_noise=False, latent=head)
    split = add(graph, "SplitSigmas", sigmas=gas_sigmas(graph), step=2)
    ref_head = custom_advanced(graph, split)
    ref_tail = custom_advanced(graph, [split[0], 1], add_noise=False, latent=ref_head)
    early = ksampler_advanced(graph, model, end=2)
    a, b, c, d, e = run_latents(server, graph, head, tail, ref_head, ref_tail, early)
    assert max_diff(a, c) <= TOL and max_diff(b, d) <= TOL
    assert torch.isfinite(e).all() and max_diff(e, a) > 1e-3
    log = server.log_text()
    assert "steps 0..2 of the 4-step grid" in log and "steps 2..4 of the 4-step grid" in log
    assert "plus a final denoise to 0" in log


def test_basic_scheduler_and_ksampler_select(server: ComfyServer) -> None:
    """BasicScheduler('gas') + KSamplerSelect('gas') in SamplerCustomAdvanced == the GAS Sampler path."""
    graph = base_graph()
    model = patched(graph)
    sigmas = add(graph, "BasicScheduler", model=model, scheduler="gas", steps=4, denoise=1.0)
    select = add(graph, "KSamplerSelect", sampler_name="gas")
    stock = custom_advanced(graph, sigmas, model=model, sampler=select)
    reference = custom_advanced(graph, gas_sigmas(graph))
    a, b = run_latents(server, graph, stock, reference)
    assert max_diff(a, b) <= TOL


@pytest.mark.parametrize("denoise", [0.5, 0.6])
def test_denoise_matches_gas_sigmas(server: ComfyServer, denoise: float) -> None:
    """img2img: KSampler(denoise) on a latent == GAS Sigmas(denoise) + GAS Sampler on it (both: ComfyUI's rule, the
    last 4 steps of the int(4/denoise)-step grid); BasicScheduler('gas', denoise) gives the same sigmas too."""
    graph = base_graph()
    model = patched(graph)
    start = ksampler(graph, model)
    stock = ksampler(graph, model, denoise=denoise, latent=start)
    reference = custom_advanced(graph, gas_sigmas(graph, denoise=denoise), latent=start)
    basic = add(graph, "BasicScheduler", model=model, scheduler="gas", steps=4, denoise=denoise)
    via_basic = custom_advanced(graph, basic, model=model, latent=start)
    a, b, c, d = run_latents(server, graph, start, stock, reference, via_basic)
    assert max_diff(b, c) <= TOL and max_diff(b, d) <= TOL
    assert max_diff(a, b) > 1e-3


def test_steps_choose_the_nfe_on_every_path(server: ComfyServer) -> None:
    """A {4, 6}-step file: steps 6 through KSampler, GAS KSampler and GAS Sigmas + GAS Sampler agree (the 6-step
    learned solver); steps 5, which the file does not hold, runs on every path (the resampled grid, as 3M) with a
    console warning, and the paths agree again."""
    graph = base_graph()
    model = patched(graph, solver=MULTI)
    outs = []
    for steps in (6, 5):
        outs.append(ksampler(graph, model, steps=steps))
        outs.append(add(graph, "GASKSampler", model=["t1", 0], positive=["t2", 0], negative=["t3", 0],
                        latent_image=["t4", 0], seed=SEED, cfg=CFG, solver=MULTI, steps=steps, denoise=1.0))
        outs.append(custom_advanced(graph, gas_sigmas(graph, MULTI, steps=steps), solver=MULTI))
    outs.append(custom_advanced(graph, gas_sigmas(graph, MULTI, steps=6), solver=NO_SOLVER))
    six_stock, six_gas_k, six_ref, five_stock, five_gas_k, five_ref, six_untrained = run_latents(server, graph, *outs)
    assert max_diff(six_stock, six_ref) <= TOL and max_diff(six_gas_k, six_ref) <= TOL
    assert max_diff(six_stock, six_untrained) > 1e-3  # the 6-step learned solver ran, not 3M
    assert max_diff(five_stock, five_ref) <= TOL and max_diff(five_gas_k, five_ref) <= TOL
    assert f"GAS solver '{MULTI}' holds learned solvers for 4, 6 steps, not 5" in server.log_text()


def test_solver_info_lists_every_nfe(server: ComfyServer) -> None:
    entry = server.run({"i": {"class_type": "GASSolverInfo", "inputs": {"solver": MULTI}}})
    text = entry["outputs"]["i"]["text"][0]
    assert "learned NFEs: 4, 6" in text
    assert "--- NFE 4 ---" in text and "--- NFE 6 ---" in text and text.count("lpips_vs_teacher") == 2


# ----- other schedulers, unpatched models, model nodes around the patch -----------------------------------------------


def test_sampler_gas_without_patch_is_dpmpp_3m_on_any_sigmas(server: ComfyServer) -> None:
    """Unpatched model, sampler 'gas' with karras == GAS Sampler's no-solver entry on BasicScheduler(karras) sigmas."""
    graph = base_graph()
    stock = ksampler(graph, ["t1", 0], scheduler="karras", steps=5)
    karras = add(graph, "BasicScheduler", model=["t1", 0], scheduler="karras", steps=5, denoise=1.0)
    reference = custom_advanced(graph, karras, solver=NO_SOLVER)
    a, b = run_latents(server, graph, stock, reference)
    assert max_diff(a, b) <= TOL


def test_sampler_gas_with_another_scheduler_on_a_patched_model(server: ComfyServer) -> None:
    """Patched model, scheduler karras: one sentence asking for scheduler 'gas'."""
    graph = base_graph()
    error = failing(server, graph, ksampler(graph, patched(graph), scheduler="karras"))
    assert error["node_type"] == "KSampler" and "choose scheduler 'gas'" in error["exception_message"]


def test_scheduler_gas_on_an_unpatched_model(server: ComfyServer) -> None:
    """Scheduler 'gas' without GAS Model Patch, in KSampler and in BasicScheduler: one sentence saying to add it."""
    for node in ("KSampler", "BasicScheduler"):
        graph = base_graph()
        if node == "KSampler":
            out = ksampler(graph, ["t1", 0], sampler="euler")
        else:
            out = custom_advanced(graph, add(graph, "BasicScheduler", model=["t1", 0], scheduler="gas", steps=4,
                                             denoise=1.0), solver=NO_SOLVER)
        error = failing(server, graph, out)
        assert error["node_type"] == node
        assert error["exception_message"].startswith(
            "Scheduler 'gas' found no learned solver on this model: add a GAS Model Patch node")


def test_model_sampling_node_before_works_after_is_explained(server: ComfyServer) -> None:
    """ModelSamplingDiscrete(eps) before the patch: same latent as without it; after the patch: a message saying to
    place it before."""
    graph = base_graph()
    before = add(graph, "ModelSamplingDiscrete", model=["t1", 0], sampling="eps", zsnr=False)
    stock = ksampler(graph, patched(graph, before))
    reference = custom_advanced(graph, gas_sigmas(graph))
    a, b = run_latents(server, graph, stock, reference)
    assert max_diff(a, b) <= TOL

    graph = base_graph()
    after = add(graph, "ModelSamplingDiscrete", model=patched(graph), sampling="eps", zsnr=False)
    message = failing(server, graph, ksampler(graph, after))["exception_message"]
    assert "GAS Model Patch" in message and "after any ModelSampling node" in message


def test_composes_with_lora_and_other_patches(server: ComfyServer) -> None:
    """LoraLoaderModelOnly and RescaleCFG before or after GAS Model Patch: the same latent in either order, equal to
    the GAS Sampler path on the LoRA'd model, and different from the model without LoRA."""
    graph = base_graph()
    lora = add(graph, "LoraLoaderModelOnly", model=["t1", 0], lora_name=LORA, strength_model=1.0)
    lora_then_patch = ksampler(graph, patched(graph, lora))
    patch_then_lora = ksampler(graph, add(graph, "LoraLoaderModelOnly", model=patched(graph), lora_name=LORA,
                                          strength_model=1.0))
    reference = custom_advanced(graph, gas_sigmas(graph), model=lora)
    plain = ksampler(graph, patched(graph))
    rescale_then_patch = ksampler(graph, patched(graph, add(graph, "RescaleCFG", model=["t1", 0], multiplier=0.7)))
    patch_then_rescale = ksampler(graph, add(graph, "RescaleCFG", model=patched(graph), multiplier=0.7))
    a, b, c, d, e, f = run_latents(server, graph, lora_then_patch, patch_then_lora, reference, plain,
                                   rescale_then_patch, patch_then_rescale)
    assert max_diff(a, b) <= TOL and max_diff(a, c) <= TOL
    assert max_diff(a, d) > 1e-3  # the LoRA was applied
    assert max_diff(e, f) <= TOL and max_diff(e, d) > 1e-4  # RescaleCFG was applied in both orders
