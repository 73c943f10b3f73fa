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
* ``stock``: GAS Model Patch + ComfyUI's own KSampler (sampler and scheduler "gas") with the random solver, against
  the GAS Sampler latent, and its refusal of the solvers made for something else;
* ``training`` (families named with ``--train NAME:MODE,...``): GAS Train Solver (the node's own ``execute``, as
  ComfyUI's executor calls it) distils a 4-step solver with the same conditioning connected (Flux: FluxGuidance's
  value 2.5 in it; Wan: the frame count of the family's latent), in a tiny configuration, into a temporary
  ``models/gas_solvers``; the solver file it writes then samples through GAS Sigmas + GAS Sampler.

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

SEED = 42
#: The Flux guidance the training conditioning carries (FluxGuidance's value), not the model's default 3.5.
TRAIN_GUIDANCE = 2.5
#: GAS Train Solver's own ``guidance`` input, set on top of that conditioning.
OVERRIDE_GUIDANCE = 3.0
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
        self.logic = importlib.import_module(f"{pack.__name__}.nodes.logic")
        train = importlib.import_module(f"{pack.__name__}.nodes.train_node")
        self.train_node, self.train_dir = train.GASTrainSolver, train._solver_dir
        self.patch_node = importlib.import_module(f"{pack.__name__}.nodes.model_patch_node").GASModelPatch
        self.ksampler = importlib.import_module("nodes").KSampler()
        # what the pack's extension does when ComfyUI loads it: sampler and scheduler "gas" in ComfyUI's lists
        importlib.import_module(f"{pack.__name__}.nodes.stock_registration").register()

    def stock(self, model: Any, solver: str, steps: int, positive: Any, negative: Any, cfg: float,
              latent_shape: tuple[int, ...]) -> torch.Tensor:
        """GAS Model Patch, then ComfyUI's own KSampler with sampler "gas" and scheduler "gas"."""
        patched = self.patch_node.execute(model=model, solver=solver).result[0]
        latent = {"samples": torch.zeros(latent_shape)}
        return self.ksampler.sample(patched, SEED, steps, cfg, "gas", "gas", positive, negative, latent)[0]["samples"]

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
    from tests.helpers.solvers import perturbed_solver

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
    stock = runner.stock(model, solvers["random"], len(sigmas) - 1, positive, negative, cfg, family.latent)
    report["stock"] = {"rel_diff": float((stock - out).abs().max()) / max(float(out.abs().max()), 1e-12),
                       "shape": list(stock.shape)}
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
        try:  # the stock path: GAS Model Patch, or KSampler's scheduler/sampler "gas" behind it
            runner.stock(model, solvers[role], 4, positive, negative, cfg, family.latent)
            entry["stock"] = None
        except logic.GASNodeError as exc:
            entry["stock"] = str(exc)
        entry["one_sentence"] = all(isinstance(m, str) and _one_sentence(m)
                                    for m in (entry["sigmas_node"], entry["sampler_node"], entry["stock"]))
        refusals[role] = entry
    report["refusals"] = refusals
    return report


def _frames(family: Any) -> int:
    """The video length whose latent has the family's frame count (4x temporal compression), 0 for images."""
    return 4 * (family.latent[2] - 1) + 1 if len(family.latent) == 5 else 0


def _pixels(family: Any) -> tuple[int, int]:
    """(width, height) in pixels of the family's latent (16x spatial compression for Wan 2.2, else 8x)."""
    factor = 16 if family.name == "wan22" else 8
    return factor * family.latent[-1], factor * family.latent[-2]


def training_checks(comfy: Any, runner: NodeRunner, model: Any, name: str, family: Any, modes: list[str],
                    folder: Path, work: Path) -> dict[str, Any]:
    """Distil a 4-step solver per mode with the GAS Train Solver node (its own ``execute``, as ComfyUI's executor
    calls it, with this module's conditioning connected), then sample with it through GAS Sigmas + GAS Sampler."""
    from comfy_api.latest import io

    from gas import load_solver

    node = runner.train_node.PREPARE_CLASS_CLONE({io.Hidden.prompt: None, io.Hidden.unique_id: f"train-{name}"})
    positive, negative = conditioning(family, 1), conditioning(family, 2)
    if family.guidance is not None:  # what FluxGuidance sets: the node trains for the conditioning's value
        positive = [[positive[0][0], {**positive[0][1], "guidance": TRAIN_GUIDANCE}]]
    width, height = _pixels(family)

    def train(solver_name: str, mode: str = "gs", iterations: int = 1, teacher_steps: int = 4, **inputs: Any) -> Any:
        """GAS Train Solver's ``execute`` on this model in the tiny configuration, with ``inputs`` connected."""
        return node.execute(model=model, prompts="", negative="", cfg=CFG[name], width=width, height=height, nfe="4",
                            mode=mode, iterations=iterations, seed=SEED, solver_name=solver_name, overwrite=True,
                            teacher_steps=teacher_steps, batch=2, train_size=2, val_size=2, checkpoint_every=10_000,
                            **inputs)

    out: dict[str, Any] = {}
    for mode in modes:
        start, cpu = time.perf_counter(), time.process_time()
        entry: dict[str, Any] = {}
        try:
            result = train(f"trained-{name}", mode, iterations=2, teacher_steps=8, conditioning=positive,
                           negative_conditioning=negative, frames=_frames(family))
        except runner.logic.GASNodeError as exc:
            entry["error"] = str(exc)
        else:
            solver_name = result.result[0]
            solver_file = Path(runner.solver_folder.full_path(solver_name))
            meta = load_solver(solver_file).metadata
            entry.update(file_in_folder=solver_file.parent == Path(runner.train_dir()), mode=meta.get("mode"),
                         model=meta.get("model"), iterations=meta.get("iterations"), guidance=meta.get("guidance"),
                         frames=meta.get("frames"), preview=list(result.result[1].shape))
            with torch.no_grad():
                sigmas = runner.sigmas(model, solver_name)
                latent = runner.sample(model, solver_name, sigmas, positive, negative, CFG[name], family.latent)
            entry.update(shape=list(latent.shape), finite=bool(torch.isfinite(latent).all()))
        entry.update(seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu)
        out[mode] = entry
    refusals: dict[str, str | None] = {}
    for role, inputs in (("no_conditioning", {}), ("combined", {"conditioning": positive + negative}),
                         ("guidance_on_cfg_model", {"conditioning": positive, "guidance": 2.0})):
        if role == "guidance_on_cfg_model" and family.guidance is not None:
            continue
        try:
            train(f"refused-{name}", **inputs)
            refusals[role] = None
        except runner.logic.GASNodeError as exc:
            refusals[role] = str(exc)
    out["refusals"] = refusals
    if family.guidance is not None:  # the node's guidance input wins over the conditioning's
        result = train(f"trained-{name}-guidance", conditioning=positive, negative_conditioning=negative,
                       guidance=OVERRIDE_GUIDANCE)
        path = Path(runner.solver_folder.full_path(result.result[0]))
        out["guidance_input"] = {"guidance": load_solver(path).metadata.get("guidance")}
    return out


def start(comfy_root: str) -> tuple[Any, Any, Any]:
    """Import ComfyUI (CPU) and this repository as a node pack: (ComfyUI's modules, the pack, its ``nodes.logic``)."""
    sys.path.insert(0, str(REPO_ROOT))
    from tests.helpers import comfy_checks
    from tests.helpers.comfy_env import import_comfy_in_process

    comfy = import_comfy_in_process(comfy_root, cpu=True)
    pack = comfy_checks.load_pack()
    # GAS Train Solver runs the pack's trainer, which makes the pack's core the top-level ``gas`` (as inside ComfyUI,
    # where nothing else is called ``gas``); the helpers imported the repository's ``gas`` as a second copy, so it
    # leaves sys.modules first (every solver written here is built with ``pack.gas`` explicitly)
    for key in [k for k in sys.modules if k == "gas" or k.startswith("gas.")]:
        del sys.modules[key]
    importlib.import_module(f"{pack.__name__}.nodes._trainer").load()
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
        comfy.folder_paths.models_dir = str(Path(folder) / "models")  # where GAS Train Solver writes
        importlib.import_module(f"{pack.__name__}.nodes._trainer").load()["config"].PACK_ROOT = Path(folder)
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
