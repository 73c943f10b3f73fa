"""Per-family checks in a real ComfyUI, in process; the worker behind tests/test_families_comfy.py.

``python -m tests.helpers.family_checks COMFY_ROOT OUT_JSON NAME=FILE [NAME=FILE ...]`` imports ComfyUI (CPU), loads
this repository as a node pack, and for each tiny family file (tests/helpers/tiny_families.py):

* ``detected``: loads it through UNETLoader's code path (``comfy.sd.load_diffusion_model``) and records what ComfyUI
  detected (model config class, model type, model_sampling classes), whether every file tensor is a network weight of
  the right shape and vice versa, and how the pack's bridge classifies the schedule;
* ``sampling``: runs GAS Sigmas + GAS Sampler (the node classes' own ``execute``) through ComfyUI's RandomNoise,
  CFGGuider and SamplerCustomAdvanced nodes with a random nonzero solver, an untrained solver and "(none)" on the
  untrained solver's sigmas, with conditioning built here (random tensors of the family's shapes);
* ``refusals``: the message GAS Sigmas and GAS Sampler give for solvers made for another schedule kind, another
  family and another prediction type;
* ``training`` (families named with ``--train NAME:MODE,...``): the trainer's Python API
  (``trainer.distill.distill_denoiser``, unchanged) distils a 4-step solver from ComfyUI's own CFG denoiser around
  the loaded model (``comfy.samplers.sampling_function``, float timesteps for discrete schedules, as the trainer's
  ComfyUI adapter builds it) with the same random conditioning, in a tiny configuration; the solver file it writes
  then samples through GAS Sigmas + GAS Sampler.

Writes one JSON report; importing ComfyUI changes an interpreter for good, hence the separate process.
"""

from __future__ import annotations

import gc
import importlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from tests.helpers.paths import REPO_ROOT
from tests.helpers.solvers import perturbed_solver

SEED = 42
CFG = {"sd2v": 5.0, "sdxl": 5.0, "sd3": 4.0, "flux": 1.0, "wan21": 5.0, "wan22": 5.0}
#: What each family's solvers of another family record (same schedule kind, so only the family differs).
OTHER_FAMILY = {"sd2v": "SDXL", "sdxl": "SD15", "sd3": "Flux", "flux": "SD3", "wan21": "SD3", "wan22": "WAN21_T2V"}


def conditioning(family: Any, seed: int) -> list[list[Any]]:
    """A CONDITIONING of random tensors with the family's shapes: cross-attention context, pooled output (SDXL's ADM
    input with the image size; SD3 / Flux pooled), and Flux's guidance value."""
    gen = torch.Generator().manual_seed(seed)
    context = torch.randn(1, *family.context, generator=gen)
    extra: dict[str, Any] = {}
    if family.pooled:
        extra["pooled_output"] = torch.randn(1, family.pooled, generator=gen)
    if family.name == "sdxl":
        height, width = 8 * family.latent[-2], 8 * family.latent[-1]
        extra.update(width=width, height=height, target_width=width, target_height=height)
    if family.guidance is not None:
        extra["guidance"] = family.guidance
    return [[context, extra]]


class NodeRunner:
    """The GAS nodes and ComfyUI's sampling nodes, called the way ComfyUI's executor calls them."""

    def __init__(self, pack: Any) -> None:
        custom = importlib.import_module("comfy_extras.nodes_custom_sampler")
        self.pack = pack
        self.solver_folder = importlib.import_module(f"{pack.__name__}.nodes.solver_folder")
        self.sigmas_node = importlib.import_module(f"{pack.__name__}.nodes.sigmas_node").GASSigmas
        self.sampler_node = importlib.import_module(f"{pack.__name__}.nodes.sampler_node").GASSampler
        self.cfg_guider, self.random_noise = custom.CFGGuider(), custom.RandomNoise()
        self.advanced = custom.SamplerCustomAdvanced()

    def sigmas(self, model: Any, solver: str) -> torch.Tensor:
        return self.sigmas_node.execute(model=model, solver=solver, steps=0, denoise=1.0).result[0]

    def sample(self, model: Any, solver: str, sigmas: torch.Tensor, positive: Any, negative: Any, cfg: float,
               latent_shape: tuple[int, ...]) -> torch.Tensor:
        sampler = self.sampler_node.execute(solver=solver).result[0]
        guider = self.cfg_guider.get_guider(model, positive, negative, cfg)[0]
        noise = self.random_noise.get_noise(SEED)[0]
        latent = {"samples": torch.zeros(latent_shape)}
        return self.advanced.sample(noise, guider, sampler, sigmas, latent)[0]["samples"]


def _one_sentence(message: str) -> bool:
    """A single line without a sentence break inside (the message may end with a period)."""
    body = message.strip().rstrip(".")
    return "\n" not in body and ". " not in body and len(body) > 20


def detection(comfy: Any, bridge: Any, path: str) -> tuple[Any, dict[str, Any]]:
    """Load through UNETLoader's path and describe what ComfyUI detected."""
    from safetensors.torch import load_file

    start = time.perf_counter()
    model = comfy.sd.load_diffusion_model(path)
    load_seconds = time.perf_counter() - start
    base = model.model
    ms = model.get_model_object("model_sampling")
    weights = base.diffusion_model.state_dict()
    in_file = load_file(path)
    info = bridge.describe_model_sampling(ms)
    report = {
        "config": type(base.model_config).__name__,
        "model_type": base.model_type.name,
        "sampling": [c.__name__ for c in type(ms).__bases__],
        "missing": sorted(k for k in weights if k not in in_file),
        "unexpected": sorted(k for k in in_file if k not in weights),
        "wrong_shape": sorted(k for k in in_file if k in weights and in_file[k].shape != weights[k].shape),
        "kind": info.kind, "prediction": info.prediction, "learned_ok": info.learned_ok,
        "schedule": info.schedule.to_metadata(), "float_timesteps": info.float_timesteps,
        "identity_family": bridge.model_identity(model, fingerprint=False)["family"],
        "file_mb": Path(path).stat().st_size / 1e6, "load_seconds": load_seconds,
    }
    del in_file, weights
    return model, report


def make_solvers(gas: Any, checks: Any, folder: Path, name: str, family: Any, detected: dict[str, Any],
                 schedule: Any) -> tuple[dict[str, str], Any]:
    """Solver files for one family (random nonzero, untrained, and three made for something else) by role, and the
    schedule of the one made for the other schedule kind."""
    cfg = CFG[name]
    own = {"family": family.config, "prediction": detected["prediction"]}
    other_schedule = (gas.FlowSchedule(3.0) if detected["kind"] == "discrete"
                      else gas.DiscreteVPSchedule.sd_linear())
    other_prediction = "eps" if detected["prediction"] != "eps" else "v"
    files = {
        "random": perturbed_solver(gas=gas, seed=5, schedule=schedule, metadata={"cfg": cfg, "model": own}),
        "zero": gas.GeneralizedSolver(4, schedule=schedule, metadata={"mode": "gs", "cfg": cfg, "model": own}),
        "other_kind": perturbed_solver(gas=gas, seed=6, schedule=other_schedule, metadata={"cfg": cfg, "model": own}),
        "other_family": perturbed_solver(gas=gas, seed=7, schedule=schedule, metadata={
            "cfg": cfg, "model": {**own, "family": OTHER_FAMILY[name]}}),
        "other_prediction": perturbed_solver(gas=gas, seed=8, schedule=schedule, metadata={
            "cfg": cfg, "model": {**own, "prediction": other_prediction}}),
    }
    names = {}
    for role, solver in files.items():
        names[role] = f"{name}-{role}.safetensors"
        gas.save_solver(solver, folder / names[role], overwrite=True)
    return names, other_schedule


def sampling_checks(runner: NodeRunner, model: Any, name: str, family: Any, solvers: dict[str, str],
                    other_schedule: Any, logic: Any) -> dict[str, Any]:
    """Random / untrained / "(none)" runs through SamplerCustomAdvanced, and the refusals."""
    positive, negative = conditioning(family, 1), conditioning(family, 2)
    cfg = CFG[name]
    report: dict[str, Any] = {}
    start = time.perf_counter()
    sigmas = runner.sigmas(model, solvers["random"])
    out = runner.sample(model, solvers["random"], sigmas, positive, negative, cfg, family.latent)
    report["random"] = {"shape": list(out.shape), "finite": bool(torch.isfinite(out).all()),
                        "sigmas": sigmas.tolist(), "max_abs": float(out.abs().max())}
    zero_sigmas = runner.sigmas(model, solvers["zero"])
    none_sigmas = runner.sigmas(model, logic.NO_SOLVER)  # GAS Sigmas without a solver: steps 0 = default 8
    zero = runner.sample(model, solvers["zero"], zero_sigmas, positive, negative, cfg, family.latent)
    none = runner.sample(model, logic.NO_SOLVER, zero_sigmas, positive, negative, cfg, family.latent)
    scale = float(none.abs().max())
    report["zero_vs_none"] = {"rel_diff": float((zero - none).abs().max()) / max(scale, 1e-12), "max_abs": scale,
                              "random_vs_none_rel": float((out - none).abs().max()) / max(scale, 1e-12),
                              "zero_sigmas": zero_sigmas.tolist(), "none_default_steps": none_sigmas.numel() - 1}
    report["seconds"] = time.perf_counter() - start

    refusals: dict[str, Any] = {}
    for role in ("other_kind", "other_family", "other_prediction"):
        entry: dict[str, Any] = {}
        try:
            runner.sigmas(model, solvers[role])
            entry["sigmas_node"] = None
        except logic.GASNodeError as exc:
            entry["sigmas_node"] = str(exc)
        # the sampler on its own refuses too (e.g. sigmas typed in by hand): the foreign solver's own grid
        solver = runner.solver_folder.load(solvers[role]).default  # a SolverSet: its one solver
        grid = solver.sigmas(other_schedule if role == "other_kind" else None).detach().float()
        try:
            runner.sample(model, solvers[role], grid, positive, negative, cfg, family.latent)
            entry["sampler_node"] = None
        except logic.GASNodeError as exc:
            entry["sampler_node"] = str(exc)
        entry["one_sentence"] = all(isinstance(m, str) and _one_sentence(m)
                                    for m in (entry["sigmas_node"], entry["sampler_node"]))
        refusals[role] = entry
    report["refusals"] = refusals
    return report


def comfy_denoiser(comfy: Any, bridge: Any, model: Any, family: Any, cfg: float) -> dict[str, Any]:
    """ComfyUI's CFG denoiser around a loaded model with this module's random conditioning, as keyword arguments of
    ``distill_denoiser``: differentiable, discrete-schedule networks see the float timestep of each GAS time."""
    samplers, helpers = comfy.samplers, importlib.import_module("comfy.sampler_helpers")
    patcher_extension = importlib.import_module("comfy.model_patcher")
    base = model.model
    base.requires_grad_(False)
    comfy.model_management.load_models_gpu([model], force_full_load=True)
    info = bridge.describe_model_sampling(model.get_model_object("model_sampling"))
    override = bridge.FloatTimestepOverride(info.schedule, label="GAS trainer") if info.float_timesteps else None
    options = patcher_extension.create_model_options_clone(model.model_options)
    if override is not None:
        options = override.install(options)
    positive, negative = conditioning(family, 1), conditioning(family, 2)
    next_time: list[torch.Tensor] = []

    def batched(cond: list[list[Any]], n: int) -> list[dict[str, Any]]:
        context, extra = cond[0]
        extra = {k: v.expand(n, -1) if torch.is_tensor(v) else v for k, v in extra.items()}
        return helpers.convert_cond([[context.expand(n, -1, -1), extra]])

    def denoiser(x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        conds = samplers.process_conds(base, x, {"positive": batched(positive, x.shape[0]),
                                                 "negative": batched(negative, x.shape[0])}, x.device)

        def guided() -> torch.Tensor:
            return samplers.sampling_function(base, x, sigma, conds["negative"], conds["positive"], cfg,
                                              model_options=options, seed=None)

        if override is None:
            return guided()
        t = next_time.pop() if next_time else info.schedule.time_of_sigma(sigma.detach().to(torch.float64))
        with override.at(t):
            return guided()

    return {"denoiser": denoiser, "schedule": info.schedule, "cfg": cfg,
            "identity": bridge.model_identity(model),
            "decoupled": bridge.decoupled_mode(info) if override is not None else "resigma",
            "timestep_hook": (lambda t: next_time.__setitem__(slice(None), [t])) if override is not None else None}


def training_checks(comfy: Any, runner: NodeRunner, model: Any, name: str, family: Any, modes: list[str],
                    folder: Path, work: Path) -> dict[str, Any]:
    """Distil a 4-step solver per mode with the trainer's Python API, then sample with it through the nodes."""
    from gas import comfy_bridge, load_solver
    from trainer.config import DistillConfig
    from trainer.distill import distill_denoiser
    from trainer.errors import TrainerError

    fields = comfy_denoiser(comfy, comfy_bridge, model, family, CFG[name])
    out: dict[str, Any] = {}
    for mode in modes:
        config = DistillConfig(nfe=4, mode=mode, train_size=2, val_size=2, batch=2, iters=2, teacher_steps=8,
                               teacher_batch=2, eval_batch=2, disc_preset="small", out_dir=str(folder),
                               cache_dir=str(work / "cache"), run_dir=str(work / "runs"), report=False,
                               eval_every=10_000, ckpt_every=10_000, log_every=10_000)
        start, cpu = time.perf_counter(), time.process_time()
        entry: dict[str, Any] = {}
        model.pre_run()  # what CFGGuider does before sampling (and undoes after it): the model's current patcher
        try:
            result = distill_denoiser(latent_shape=family.latent[1:], conditions=lambda indices: {},
                                      config=config, progress=False, name=f"trained-{name}", **fields)
        except TrainerError as exc:
            entry["error"] = str(exc)
        else:
            solver_file = Path(result.solver_path)
            meta = load_solver(solver_file).metadata
            entry.update(file_in_folder=solver_file.parent == folder, mode=meta.get("mode"), model=meta.get("model"),
                         iterations=meta.get("iterations"))
            with torch.no_grad():
                sigmas = runner.sigmas(model, solver_file.name)
                positive, negative = conditioning(family, 1), conditioning(family, 2)
                latent = runner.sample(model, solver_file.name, sigmas, positive, negative, CFG[name], family.latent)
            entry.update(shape=list(latent.shape), finite=bool(torch.isfinite(latent).all()))
        entry.update(seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu)
        out[mode] = entry
    return out


def start(comfy_root: str) -> tuple[Any, Any, Any]:
    """Import ComfyUI (CPU) and this repository as a node pack: (ComfyUI's modules, the pack, its ``nodes.logic``)."""
    sys.path.insert(0, str(REPO_ROOT))
    from tests.helpers import comfy_checks
    from tests.helpers.comfy_env import import_comfy_in_process

    comfy = import_comfy_in_process(comfy_root, cpu=True)
    pack = comfy_checks.load_pack()
    return comfy, pack, importlib.import_module(f"{pack.__name__}.nodes.logic")


def main(argv: list[str]) -> int:
    comfy_root, out_path = argv[1], Path(argv[2])
    train: dict[str, list[str]] = {}
    files: dict[str, str] = {}
    for arg in argv[3:]:
        if arg.startswith("--train="):
            family_name, modes = arg[len("--train="):].split(":")
            train[family_name] = modes.split(",")
        else:
            family_name, path = arg.split("=", 1)
            files[family_name] = path
    comfy, pack, logic = start(comfy_root)
    from tests.helpers import comfy_checks
    from tests.helpers.tiny_families import FAMILIES

    gas, bridge = pack.gas, pack.gas.comfy_bridge
    solver_folder = importlib.import_module(f"{pack.__name__}.nodes.solver_folder")
    runner = NodeRunner(pack)
    torch.manual_seed(0)
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gas-family-solvers-") as folder:
        solver_folder.register()
        comfy.folder_paths.add_model_folder_path(logic.FOLDER_NAME, folder)
        for name, path in files.items():
            family = FAMILIES[name]
            model, detected = detection(comfy, bridge, path)
            entry: dict[str, Any] = {"detected": detected}
            if detected["learned_ok"]:
                schedule = bridge.describe_model_sampling(model.get_model_object("model_sampling")).schedule
                solvers, other = make_solvers(gas, comfy_checks, Path(folder), name, family, detected, schedule)
                with torch.no_grad():
                    entry["sampling"] = sampling_checks(runner, model, name, family, solvers, other, logic)
                if name in train:
                    entry["training"] = training_checks(comfy, runner, model, name, family, train[name], Path(folder),
                                                        Path(folder) / "trainer-work")
            report[name] = entry
            del model
            comfy.model_management.unload_all_models()
            gc.collect()
    out_path.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
