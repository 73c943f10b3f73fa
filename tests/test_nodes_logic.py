"""The node pack without ComfyUI (CI): solver folder, solver files, grids, compatibility, messages, node schemas
(against stand-ins for ComfyUI's modules), the float-timestep override, the example workflows and the entry point."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import gas
from gas.comfy_bridge import FloatTimestepOverride, SamplingInfo, decoupled_mode, fingerprint_state_dict
from nodes import errors as node_errors
from nodes import logic
from tests.helpers.fake_comfy import fake_comfy
from tests.helpers.paths import REPO_ROOT
from tests.helpers.solvers import perturbed_solver
from tests.helpers.workflows import NODE_GAP, node_box, overlapping_nodes

SD = gas.DiscreteVPSchedule.sd_linear()
NODE_IDS = ("GASSampler", "GASSigmas", "GASKSampler", "GASSolverInfo", "GASModelPatch", "GASTrainSolver")


def trained(nfe: int = 4, seed: int = 0, schedule: gas.NoiseSchedule | None = None, **meta: Any
            ) -> gas.GeneralizedSolver:
    """The shared test solver on SD1.5's schedule, with ``meta`` merged into its metadata."""
    return perturbed_solver(nfe, seed, schedule=schedule or SD, metadata=meta)


def sd15_info(**kw: Any) -> SamplingInfo:
    values = {"schedule": SD, "prediction": "eps", "kind": "discrete", "learned_ok": True, "float_timesteps": True,
              "description": SD.describe()}
    values.update(kw)
    return SamplingInfo(**values)


def flow_info(shift: float = 1.15) -> SamplingInfo:
    sched = gas.FlowSchedule(shift)
    return SamplingInfo(sched, "flow", "flow", True, description=sched.describe())


SD15_ID = {"family": "SD15", "prediction": "eps", "fingerprint": "w16-aaa"}


# ----- the solver folder --------------------------------------------------------------------------------------------


def test_dropdown_options() -> None:
    names = ["b.safetensors", "a.SAFETENSORS", "notes.txt", "sub/c.safetensors", "b.safetensors", "model.ckpt"]
    assert logic.dropdown_options(names) == [logic.NO_SOLVER, "a.SAFETENSORS", "b.safetensors", "sub/c.safetensors"]
    assert logic.dropdown_options([]) == [logic.NO_SOLVER]


def test_register_folder_new_and_existing_entries(tmp_path: Path) -> None:
    """A fresh entry; an entry extra_model_paths.yaml created first (no extension filter) keeps its folders first."""
    table: dict[str, Any] = {}
    assert logic.register_folder(table, ["/m/gas_solvers", "/pack/models/gas_solvers"]) == [
        "/m/gas_solvers", "/pack/models/gas_solvers"]
    assert table["gas_solvers"][1] == {".safetensors"}
    table = {"gas_solvers": (["/extra/solvers"], set()), "checkpoints": (["/m/ckpt"], {".safetensors"})}
    folders = logic.register_folder(table, ["/m/gas_solvers", "/extra/solvers/", "/pack/models/gas_solvers"])
    assert folders == ["/extra/solvers", "/m/gas_solvers", "/pack/models/gas_solvers"]
    assert table["gas_solvers"] == (folders, {".safetensors"})
    assert logic.register_folder(table, ["/m/gas_solvers"]) == folders  # idempotent
    assert table["checkpoints"] == (["/m/ckpt"], {".safetensors"})


def test_check_solver_name() -> None:
    assert logic.check_solver_name(logic.NO_SOLVER, None, []) is None
    assert logic.check_solver_name("x.safetensors", "/s/x.safetensors", ["/s"]) is None
    assert "from the dropdown" in logic.check_solver_name(None, None, [])
    assert "is not a .safetensors file" in logic.check_solver_name("x.ckpt", "/s/x.ckpt", ["/s"])
    message = logic.check_solver_name("x.safetensors", None, ["/a", "/b"])
    assert message.startswith("GAS solver 'x.safetensors' was not found in the solver folders (/a, /b)")


def test_solver_cache_reloads_changed_files(tmp_path: Path) -> None:
    path = tmp_path / "s.safetensors"
    gas.save_solver(trained(seed=1), path)
    calls: list[str] = []

    def loader(p: str) -> gas.GeneralizedSolver:
        calls.append(p)
        return gas.load_solver(p)

    cache = logic.SolverCache(loader=loader)
    first = cache.load(str(path))
    assert cache.load(str(path)) is first and len(calls) == 1
    gas.save_solver(trained(nfe=5, seed=2), path, overwrite=True)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert cache.load(str(path)).nfe == 5 and len(calls) == 2
    with pytest.raises(gas.SolverFileError, match="no such file"):
        cache.load(str(tmp_path / "missing.safetensors"))
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(gas.SolverFileError) as caught:
        cache.load(str(tmp_path / "bad.safetensors"))
    assert logic.solver_file_message("bad.safetensors", caught.value).startswith(
        "GAS solver 'bad.safetensors' cannot be used: is not a readable safetensors file")


# ----- grids --------------------------------------------------------------------------------------------------------


def test_resolve_steps() -> None:
    assert logic.resolve_steps(0) == logic.DEFAULT_NO_SOLVER_STEPS
    assert logic.resolve_steps(12) == 12
    with pytest.raises(logic.GASNodeError):
        logic.resolve_steps(logic.MAX_NO_SOLVER_STEPS + 1)


def test_grids() -> None:
    solver = trained()
    assert torch.equal(logic.solver_grid(solver, SD, 4), solver.sigmas(SD).detach())
    # no solver: the grid of an untrained solver (uniform GAS times; it stores them as float32 logits)
    untrained = gas.GeneralizedSolver(6).sigmas(SD).detach()
    assert torch.allclose(logic.solver_grid(None, SD, 6), untrained, rtol=1e-6, atol=0)
    with pytest.raises(logic.GASNodeError, match="has no GAS time grid"):
        logic.solver_grid(None, gas.VESigmaSpace(), 4)


def test_effective_schedule() -> None:
    flow_solver = trained(schedule=gas.FlowSchedule(3.0), model={"family": "SD3", "prediction": "flow"})
    # flow: the solver's own schedule (a flow network sees sigma; the model's shift does not move the trained sigmas)
    assert logic.effective_schedule(flow_solver, flow_info(1.15)) is flow_solver.schedule
    assert logic.effective_schedule(None, flow_info(1.15)).shift == 1.15
    assert logic.effective_schedule(trained(), sd15_info()) is SD


def test_check_sigmas_acts_on_the_cores_answer_in_the_nodes_words() -> None:
    solver = trained()
    grid = solver.sigmas(SD).detach()
    as_float32 = grid.float()
    assert logic.check_sigmas(as_float32, solver, SD, "s").kind is gas.FitKind.FULL
    tail = logic.check_sigmas(as_float32[2:], solver, SD, "s")
    assert tail.is_tail and tail.steps == 2
    assert tail.tail_message(logic.solver_label("s")).startswith(
        "denoise < 1: running the last 2 of the 4 learned steps of GAS solver 's' with plain DPM-Solver++(3M)")
    with pytest.raises(logic.GASNodeError) as trailing:
        logic.check_sigmas(torch.cat([as_float32, torch.zeros(1)]), solver, SD, "s")
    assert str(trailing.value).startswith("The sigmas end in 0, but GAS solver 's' stops at its last learned sigma")
    with pytest.raises(logic.GASNodeError) as six:
        logic.check_sigmas(trained(nfe=6).sigmas(SD).detach(), solver, SD, "s")
    assert str(six.value).startswith("NFE mismatch: the sigmas have 6 steps but GAS solver 's' was trained for 4")
    karras = torch.tensor([14.6146, 3.17, 0.447, 0.0292, 0.0])
    with pytest.raises(logic.GASNodeError) as other:
        logic.check_sigmas(karras, solver, SD, "s")
    message = str(other.value)
    assert message.startswith("These sigmas (4 steps: 14.61, 3.17, 0.447, 0.0292, 0) are not the learned grid")
    assert "GAS Sigmas" in message and logic.NO_SOLVER in message
    assert logic.GASNodeError is node_errors.GASNodeError


def test_the_cores_tail_warning_is_filtered_by_class_only() -> None:
    """The core warns about a tail with SigmasTailWarning (a GASWarning); a host filters it by class, others pass."""
    solver = trained()
    tail = solver.sigmas(SD).detach()[2:]
    x = torch.randn(1, 4, 8, 8)

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x / (1 + sigma.reshape(-1, 1, 1, 1) ** 2)

    with pytest.warns(gas.SigmasTailWarning):
        gas.sample_gas(denoiser, x, tail, solver=solver, disable=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=gas.SigmasTailWarning)
        gas.sample_gas(denoiser, x, tail, solver=solver, disable=True)
        with pytest.warns(gas.GASWarning, match="another"):
            warnings.warn("another core warning", gas.GASWarning, stacklevel=1)


# ----- compatibility ------------------------------------------------------------------------------------------------


def test_compatible_solver() -> None:
    assert logic.compatibility(trained(), "s", sd15_info(), SD15_ID) == logic.Verdict(None, ())


@pytest.mark.parametrize(("solver", "info", "identity", "expected"), [
    (trained(schedule=gas.FlowSchedule(3.0), model={"family": "SD3", "prediction": "flow"}), sd15_info(), SD15_ID,
     "was trained for SD3 models (flow-matching noise schedule) and does not fit SD15 (eps prediction"),
    (trained(), flow_info(), {"family": "Flux", "prediction": "flow"},
     "was trained for SD15 models (discrete SD noise schedule) and does not fit Flux (flow prediction"),
    (trained(), sd15_info(schedule=gas.DiscreteVPSchedule.sd_linear(0.0001, 0.02)), SD15_ID,
     "was trained on another noise schedule (discrete VP, linear betas 0.00085..0.012, T=1000)"),
    (trained(), sd15_info(), {"family": "SDXL", "prediction": "eps"},
     "was trained for SD15 models, but this is a SDXL model"),
    (trained(), sd15_info(prediction="v"), {"family": "SD15", "prediction": "v"},
     "was trained for an eps-prediction model, but this model predicts v"),
    (trained(), sd15_info(learned_ok=False, reason="this model uses a zero-terminal-SNR schedule (zsnr)"), SD15_ID,
     "cannot run on SD15 (eps prediction, discrete VP, linear betas 0.00085..0.012, T=1000): this model uses a "
     "zero-terminal-SNR schedule (zsnr); choose '(none) DPM-Solver++(3M)'"),
])
def test_incompatible_solvers(solver: gas.GeneralizedSolver, info: SamplingInfo, identity: dict[str, Any],
                              expected: str) -> None:
    verdict = logic.compatibility(solver, "s", info, identity)
    assert verdict.error is not None and expected in verdict.error
    assert verdict.error.startswith("GAS solver 's' ") and "\n" not in verdict.error


def test_other_checkpoint_only_warns() -> None:
    solver = trained(model={"family": "SD15", "prediction": "eps", "file": "v1-5.safetensors", "fingerprint": "w16-b"})
    verdict = logic.compatibility(solver, "s", sd15_info(), SD15_ID)
    assert verdict.error is None and len(verdict.warnings) == 1
    assert "was trained on checkpoint 'v1-5.safetensors'; this model's weights differ" in verdict.warnings[0]
    same = trained(model={"family": "SD15", "prediction": "eps", "fingerprint": "w16-aaa"})
    assert logic.compatibility(same, "s", sd15_info(), SD15_ID).warnings == ()


def test_flow_solver_runs_on_any_shift() -> None:
    solver = trained(schedule=gas.FlowSchedule(3.0), model={"family": "Flux", "prediction": "flow"})
    assert logic.compatibility(solver, "s", flow_info(1.15), {"family": "Flux", "prediction": "flow"}).error is None


def test_cfg_rules() -> None:
    solver = trained()
    assert logic.trained_cfg(solver) == 7.5 and logic.trained_cfg(None) is None
    assert logic.cfg_warning(solver, "s", 7.5) is None and logic.cfg_warning(solver, "s", None) is None
    assert logic.cfg_warning(solver, "s", 4.0) == (
        "GAS solver 's' was trained for cfg 7.5, but cfg is 4; it will run, but the learned steps fit cfg 7.5 best.")
    assert logic.resolve_cfg(0.0, solver) == 7.5 and logic.resolve_cfg(3.0, solver) == 3.0
    assert logic.resolve_cfg(0.0, None) == logic.DEFAULT_CFG
    assert logic.resolve_cfg(0.0, trained(cfg=None)) == logic.DEFAULT_CFG


def test_describe_solver() -> None:
    solver = trained(scores={"fid": 12.5, "vs_teacher": {"lpips": 0.2}}, teacher="iPNDM 25 steps", iterations=3000,
                     model={"family": "SD15", "prediction": "eps", "file": "v1-5.safetensors", "sha256": "ab" * 32})
    text = logic.describe_solver(solver, "sd15.safetensors")
    for expected in ("GAS solver: sd15.safetensors", "steps (NFE): 4", "trained for: SD15, eps prediction, "
                     "checkpoint v1-5.safetensors, sha256 abababababab", "schedule: discrete VP", "cfg: 7.5",
                     "mode: gas", "teacher: iPNDM 25 steps", "iterations: 3000", "  fid: 12.5",
                     "  vs_teacher.lpips: 0.2", "learned sigmas: 14.61", "decoupled time shifts:"):
        assert expected in text
    untrained = gas.GeneralizedSolver(4, schedule=SD)
    assert "(all corrections zero: plain DPM-Solver++(3M))" in logic.describe_solver(untrained, "u")
    assert "held-out scores: (not recorded)" in logic.describe_solver(untrained, "u")
    assert logic.describe_solver(None, logic.NO_SOLVER).startswith(logic.NO_SOLVER)


# ----- the bridge without ComfyUI -----------------------------------------------------------------------------------


def test_bridge_imports_without_comfy() -> None:
    code = "import sys, gas.comfy_bridge; print(any(m == 'comfy' or m.startswith('comfy.') for m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr


def test_decoupled_mode() -> None:
    assert decoupled_mode(sd15_info()) == "timestep"
    assert decoupled_mode(sd15_info(prediction="v")) == "resigma"
    assert decoupled_mode(flow_info()) == "resigma"


def test_fingerprint_is_dtype_stable() -> None:
    state = {"a.weight": torch.randn(8, 8), "b.bias": torch.randn(8), "c.weight": torch.randn(4), "d": torch.ones(2)}
    half = {k: v.half() for k, v in state.items()}
    assert fingerprint_state_dict(state) == fingerprint_state_dict(half) is not None
    changed = dict(state, **{"d": torch.zeros(2)})
    assert fingerprint_state_dict(changed) != fingerprint_state_dict(state)


def _executor(seen: list[torch.Tensor]):
    def run(x: torch.Tensor, timesteps: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        seen.append(timesteps)
        return x * timesteps.reshape(-1, 1).to(x.dtype)
    return run


def test_override_replaces_timesteps_in_every_chunk() -> None:
    override = FloatTimestepOverride(SD)
    seen: list[torch.Tensor] = []
    override.hook(torch.tensor(0.75025, dtype=torch.float64))
    for batch in (2, 4):  # cond+uncond batched, then a bigger chunk
        override.wrapper(_executor(seen), torch.ones(batch, 1), torch.full((batch,), 750, dtype=torch.long), None)
    assert [t.dtype for t in seen] == [torch.float32, torch.float32]
    assert all(torch.allclose(t, torch.tensor(749.25)) for t in seen)
    with override.at(torch.tensor([0.5, 0.25], dtype=torch.float64)):  # per-sample times repeat over CFG chunks
        override.wrapper(_executor(seen), torch.ones(4, 1), torch.zeros(4), None)
    assert seen[-1].tolist() == [499.0, 249.0, 499.0, 249.0]
    override.wrapper(_executor(seen), torch.ones(2, 1), torch.zeros(2), None)
    assert torch.allclose(seen[-1], torch.tensor(749.25))  # the previous time is back after at()
    override.clear()
    original = torch.tensor([3.0, 3.0])
    override.wrapper(_executor(seen), torch.ones(2, 1), original, None)
    assert seen[-1] is original
    assert not override.fallback


def test_override_is_differentiable() -> None:
    override = FloatTimestepOverride(SD)
    t = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    with override.at(t):
        out = override.wrapper(_executor([]), torch.ones(2, 1), torch.zeros(2), None)
    out.sum().backward()
    assert t.grad is not None and float(t.grad) == pytest.approx(2 * 1000.0)


def test_override_warns_once_when_bypassed(caplog: pytest.LogCaptureFixture) -> None:
    override = FloatTimestepOverride(SD, label="GAS test")
    with caplog.at_level(logging.WARNING):
        for t in (1.0, 0.7, 0.4):  # three calls that never reach the wrapper
            override.hook(torch.tensor(t, dtype=torch.float64))
        override.finish()
    warnings = [r for r in caplog.records if "does not accept ComfyUI diffusion-model wrappers" in r.getMessage()]
    assert len(warnings) == 1 and override.fallback


def test_override_needs_a_time_map() -> None:
    with pytest.raises(gas.ScheduleError):
        FloatTimestepOverride(gas.VESigmaSpace())


# ----- the nodes against ComfyUI stand-ins --------------------------------------------------------------------------


@pytest.fixture
def fake(tmp_path: Path):
    with fake_comfy(str(tmp_path / "models")) as modules:
        yield modules


def _schemas(fake: dict[str, Any]) -> dict[str, Any]:
    return {cls.__name__: cls.define_schema() for cls in fake["nodes.extension"].NODES}


def test_node_schemas(fake: dict[str, Any]) -> None:
    """The nodes with ids, display names, categories under sampling/custom_sampling/, a description, a tooltip on
    every input and output, and the solver dropdown on each that samples."""
    schemas = _schemas(fake)
    assert sorted(s.node_id for s in schemas.values()) == sorted(NODE_IDS)
    for schema in schemas.values():
        assert schema.display_name.startswith("GAS ") and schema.description
        assert schema.category.startswith("sampling/custom_sampling/")
        for item in [*schema.inputs, *schema.outputs]:
            assert item.tooltip, f"{schema.node_id}.{item.id} has no tooltip"
        if schema.node_id == "GASTrainSolver":  # makes solvers: no solver dropdown
            continue
        solver = next(i for i in schema.inputs if i.id == "solver")
        assert solver.kwargs["options"][0] == logic.NO_SOLVER and solver.kwargs["default"] == logic.NO_SOLVER
    assert [o.io_type for o in schemas["GASSampler"].outputs] == ["SAMPLER"]
    assert [o.io_type for o in schemas["GASSigmas"].outputs] == ["SIGMAS"]
    assert [o.io_type for o in schemas["GASKSampler"].outputs] == ["LATENT"]
    assert schemas["GASSolverInfo"].is_output_node
    assert [o.io_type for o in schemas["GASModelPatch"].outputs] == ["MODEL"]
    ks = [i.id for i in schemas["GASKSampler"].inputs]
    assert ks == ["model", "positive", "negative", "latent_image", "seed", "cfg", "solver", "steps", "denoise"]
    seed = schemas["GASKSampler"].inputs[4]
    assert seed.kwargs["control_after_generate"] is True


def test_solver_folder_with_stand_ins(fake: dict[str, Any], tmp_path: Path) -> None:
    """Registration (ComfyUI's models dir + the pack's folder), listing, validation, loading and fingerprints."""
    folder = fake["nodes.solver_folder"]
    fp = fake["folder_paths"]
    searched = folder.register()
    comfy_dir = tmp_path / "models" / "gas_solvers"
    assert searched[0] == str(comfy_dir) and searched[1] == folder.PACK_SOLVER_DIR
    assert folder.PACK_SOLVER_DIR == str(REPO_ROOT / "models" / "gas_solvers")
    comfy_dir.mkdir(parents=True)
    gas.save_solver(trained(), comfy_dir / "good.safetensors")
    (comfy_dir / "bad.safetensors").write_bytes(b"junk")
    (comfy_dir / "readme.txt").write_text("x")
    options = folder.options()
    assert {"good.safetensors", "bad.safetensors"} <= set(options) and "readme.txt" not in options
    assert fp.folder_names_and_paths["gas_solvers"][1] == {".safetensors"}
    assert folder.check("good.safetensors") is None and folder.check(logic.NO_SOLVER) is None
    assert folder.check("bad.safetensors").startswith("GAS solver 'bad.safetensors' cannot be used:")
    assert "was not found" in folder.check("gone.safetensors")
    assert folder.load(logic.NO_SOLVER) is None and folder.load("good.safetensors").nfes == (4,)
    with pytest.raises(logic.GASNodeError, match="cannot be used"):
        folder.load("bad.safetensors")
    before = folder.fingerprint("good.safetensors")
    gas.save_solver(trained(seed=3), comfy_dir / "good.safetensors", overwrite=True)
    os.utime(comfy_dir / "good.safetensors", ns=(time.time_ns(), time.time_ns() + 10**9))
    assert folder.fingerprint("good.safetensors") != before
    assert folder.fingerprint(logic.NO_SOLVER) == logic.NO_SOLVER


def test_validate_inputs_returns_the_message(fake: dict[str, Any]) -> None:
    sampler = fake["nodes.sampler_node"].GASSampler
    assert sampler.validate_inputs(logic.NO_SOLVER) is True
    assert "was not found" in sampler.validate_inputs("missing.safetensors")
    assert sampler.validate_inputs(None) is True  # a linked input: checked when the node runs


def test_sampler_node_builds_a_ksampler(fake: dict[str, Any]) -> None:
    output = fake["nodes.sampler_node"].GASSampler.execute(logic.NO_SOLVER)
    ksampler = output.args[0]
    assert ksampler.args[0] is fake["nodes.sampler_function"].sample_gas_in_comfy
    spec = ksampler.kwargs["extra_options"]["gas"]
    assert spec.solver is None and spec.name == logic.NO_SOLVER


# ----- entry point, docs, examples ----------------------------------------------------------------------------------


def test_pack_root_imports_without_comfyui() -> None:
    """The root __init__ (ComfyUI's entry point) loads as a package under any name, without ComfyUI."""
    spec = importlib.util.spec_from_file_location("any_pack_name", REPO_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(REPO_ROOT)])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(module.comfy_entrypoint) and module.WEB_DIRECTORY == "./web"
    assert not hasattr(module, "NODE_CLASS_MAPPINGS")  # V3 only: ComfyUI would prefer V1 mappings


def test_help_page_per_node() -> None:
    """web/docs/<NodeId>/en.md (the path the frontend asks for first), with no table: the help panel is a narrow
    sidebar that cuts wide tables off, so inputs are listed as bullets."""
    for node_id in NODE_IDS:
        text = (REPO_ROOT / "web" / "docs" / node_id / "en.md").read_text()
        assert text.startswith("# GAS ")
        assert not [line for line in text.splitlines() if line.startswith("|")], f"{node_id}: a markdown table"


def test_help_page_fallback_for_other_locales() -> None:
    """A frontend in another language asks for docs/<NodeId>/<locale>.md, then falls back to docs/<NodeId>.md: that
    fallback is the English page, kept identical to en.md."""
    docs = REPO_ROOT / "web" / "docs"
    for node_id in NODE_IDS:
        assert (docs / f"{node_id}.md").read_text() == (docs / node_id / "en.md").read_text(), node_id


def test_example_workflows_match_their_generator() -> None:
    done = subprocess.run([sys.executable, str(REPO_ROOT / "example_workflows" / "make_examples.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


EXAMPLES = sorted((REPO_ROOT / "example_workflows").glob("*.json"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_workflow_structure(path: Path) -> None:
    """UI format 0.4, consistent links on both ends, GAS nodes in use, a short name (the template card's title in
    ComfyUI's template browser is the file name, cut off after about 24 characters), a 400x300 JPEG thumbnail."""
    from PIL import Image

    workflow = json.loads(path.read_text())
    assert workflow["version"] == 0.4
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for link_id, origin, slot, target, target_slot, kind in workflow["links"]:
        assert link_id in nodes[origin]["outputs"][slot]["links"]
        assert nodes[target]["inputs"][target_slot]["link"] == link_id
        assert nodes[origin]["outputs"][slot]["type"] == kind
    assert any(n["type"].startswith("GAS") for n in nodes.values())
    assert len(path.stem) <= 24, f"{path.name}: the template card cuts names longer than about 24 characters"
    thumb = path.with_suffix(".jpg")
    assert thumb.read_bytes()[:3] == b"\xff\xd8\xff" and thumb.stat().st_size < 64 * 1024
    with Image.open(thumb) as image:
        assert image.size == (400, 300)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_workflow_nodes_do_not_overlap(path: Path) -> None:
    """No two nodes (title bar included) overlap or touch: a node hidden under another makes the links look
    miswired. The browser test checks the same on the boxes the frontend draws."""
    workflow = json.loads(path.read_text())
    boxes = {f"{n['id']} {n.get('title', n['type'])}": node_box(n) for n in workflow["nodes"]}
    assert overlapping_nodes(boxes, gap=NODE_GAP) == []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_workflow_runs_without_a_trained_solver(path: Path) -> None:
    """A first run works: every solver widget that no link feeds is the no-solver entry (nobody has the solver a
    workflow could name; the training example's samplers take the solver it trains), no node names a file the user
    must supply unless it ships bypassed, and a note says how to train a solver and pick it."""
    workflow = json.loads(path.read_text())
    linked = {n["id"] for n in workflow["nodes"]
              if any(i["name"] == "solver" and i.get("link") is not None for i in n.get("inputs", []))}
    gas_nodes = [n for n in workflow["nodes"] if n["type"] in NODE_IDS and n["type"] != "GASTrainSolver"]
    assert gas_nodes
    assert all(logic.NO_SOLVER in n["widgets_values"] for n in gas_nodes if n["id"] not in linked)
    assert all(n.get("mode", 0) == 4 for n in workflow["nodes"] if n["type"].startswith("Lora"))
    notes = [n["widgets_values"][0] for n in workflow["nodes"] if n["type"] in ("Note", "MarkdownNote")]
    if any(n["type"] == "GASTrainSolver" for n in workflow["nodes"]):
        assert any("Ctrl+B" in text for text in notes)
    else:
        assert any("python -m trainer --ckpt" in text and "models/gas_solvers" in text for text in notes)
