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
from pathlib import Path
from typing import Any

import pytest
import torch

import gas
from gas.comfy_bridge import FloatTimestepOverride, SamplingInfo, decoupled_mode, fingerprint_state_dict
from gas.solver import used_correction_mask
from nodes import logic
from tests.helpers.fake_comfy import fake_comfy

REPO_ROOT = Path(__file__).resolve().parents[1]
SD = gas.DiscreteVPSchedule.sd_linear()
NODE_IDS = ("GASSampler", "GASSigmas", "GASKSampler", "GASSolverInfo", "GASTrainSolver")


def trained(nfe: int = 4, seed: int = 0, schedule: gas.NoiseSchedule | None = None, **meta: Any
            ) -> gas.GeneralizedSolver:
    gen = torch.Generator().manual_seed(seed)
    metadata = {"mode": "gas", "cfg": 7.5, "model": {"family": "SD15", "prediction": "eps"}, **meta}
    solver = gas.GeneralizedSolver(nfe, schedule=schedule or SD, metadata=metadata)
    with torch.no_grad():
        solver.mu_logit.add_(0.3 * torch.randn(nfe - 1, generator=gen))
        solver.t_couple.copy_(0.02 * torch.randn(nfe, generator=gen))
        solver.a.copy_(0.05 * torch.randn(nfe, nfe, generator=gen) * used_correction_mask(nfe))
        solver.c.copy_(0.05 * torch.randn(nfe, nfe, generator=gen) * used_correction_mask(nfe))
    return solver


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


@pytest.mark.parametrize(("nfe", "denoise", "steps"), [(4, 1.0, 4), (4, 0.5, 2), (4, 0.6, 2), (4, 0.625, 3),
                                                       (4, 0.01, 1), (4, 0.0, 0), (6, 0.75, 5)])
def test_tail_steps(nfe: int, denoise: float, steps: int) -> None:
    assert logic.tail_steps(nfe, denoise) == steps


@pytest.mark.parametrize("denoise", [-0.1, 1.5, float("nan")])
def test_tail_steps_refuses_bad_denoise(denoise: float) -> None:
    with pytest.raises(logic.GASNodeError, match="denoise must lie between 0 and 1"):
        logic.tail_steps(4, denoise)


def test_resolve_steps() -> None:
    solver = trained()
    assert logic.resolve_steps(solver, 0, "s") == 4 and logic.resolve_steps(solver, 4, "s") == 4
    with pytest.raises(logic.GASNodeError, match=r"^NFE mismatch: GAS solver 's' was trained for 4 steps"):
        logic.resolve_steps(solver, 6, "s")
    assert logic.resolve_steps(None, 0, "s") == logic.DEFAULT_NO_SOLVER_STEPS
    assert logic.resolve_steps(None, 12, "s") == 12
    with pytest.raises(logic.GASNodeError):
        logic.resolve_steps(None, logic.MAX_NO_SOLVER_STEPS + 1, "s")


def test_grids() -> None:
    solver = trained()
    assert torch.equal(logic.solver_grid(solver, SD, 4), solver.sigmas(SD).detach())
    # no solver: the grid of an untrained solver (uniform GAS times; it stores them as float32 logits)
    untrained = gas.GeneralizedSolver(6).sigmas(SD).detach()
    assert torch.allclose(logic.solver_grid(None, SD, 6), untrained, rtol=1e-6, atol=0)
    with pytest.raises(logic.GASNodeError, match="has no GAS time grid"):
        logic.solver_grid(None, gas.VESigmaSpace(), 4)
    grid = logic.solver_grid(solver, SD, 4)
    assert torch.equal(logic.grid_tail(grid, 1.0), grid)
    assert torch.equal(logic.grid_tail(grid, 0.5), grid[2:])
    assert logic.grid_tail(grid, 0.0).numel() == 0


def test_effective_schedule() -> None:
    flow_solver = trained(schedule=gas.FlowSchedule(3.0), model={"family": "SD3", "prediction": "flow"})
    # flow: the solver's own schedule (a flow network sees sigma; the model's shift does not move the trained sigmas)
    assert logic.effective_schedule(flow_solver, flow_info(1.15)) is flow_solver.schedule
    assert logic.effective_schedule(None, flow_info(1.15)).shift == 1.15
    assert logic.effective_schedule(trained(), sd15_info()) is SD


def test_sigmas_problem_messages() -> None:
    grid = trained().sigmas(SD).detach()
    as_float32 = grid.float().tolist()
    assert logic.sigmas_problem(as_float32, grid.tolist(), "s") is None
    assert logic.sigmas_problem(as_float32[2:], grid.tolist(), "s") is None
    assert logic.is_tail(as_float32[2:], grid.tolist()) and not logic.is_tail(as_float32, grid.tolist())
    trailing = logic.sigmas_problem([*as_float32, 0.0], grid.tolist(), "s")
    assert trailing.startswith("The sigmas end in 0, but GAS solver 's' stops at its last learned sigma")
    six = trained(nfe=6).sigmas(SD).detach().tolist()
    assert logic.sigmas_problem(six, grid.tolist(), "s").startswith(
        "NFE mismatch: the sigmas have 6 steps but GAS solver 's' was trained for 4")
    karras = [14.6146, 3.17, 0.447, 0.0292, 0.0]
    other = logic.sigmas_problem(karras, grid.tolist(), "s")
    assert other.startswith("These sigmas (4 steps: 14.61, 3.17, 0.447, 0.0292, 0) are not the learned grid")
    assert "GAS Sigmas" in other and logic.NO_SOLVER in other


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
     "was trained for a eps-prediction model, but this model predicts v"),
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
    assert folder.load(logic.NO_SOLVER) is None and folder.load("good.safetensors").nfe == 4
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
    for node_id in NODE_IDS:
        page = REPO_ROOT / "web" / "docs" / f"{node_id}.md"
        assert page.read_text().startswith("# GAS ")


def test_example_workflows_match_their_generator() -> None:
    done = subprocess.run([sys.executable, str(REPO_ROOT / "example_workflows" / "make_examples.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "example_workflows").glob("*.json")), ids=lambda p: p.stem)
def test_example_workflow_structure(path: Path) -> None:
    """UI format 0.4, consistent links on both ends, a small same-name .jpg thumbnail, GAS nodes in use."""
    workflow = json.loads(path.read_text())
    assert workflow["version"] == 0.4
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for link_id, origin, slot, target, target_slot, kind in workflow["links"]:
        assert link_id in nodes[origin]["outputs"][slot]["links"]
        assert nodes[target]["inputs"][target_slot]["link"] == link_id
        assert nodes[origin]["outputs"][slot]["type"] == kind
    assert any(n["type"].startswith("GAS") for n in nodes.values())
    thumb = path.with_suffix(".jpg")
    assert thumb.read_bytes()[:3] == b"\xff\xd8\xff" and thumb.stat().st_size < 64 * 1024
