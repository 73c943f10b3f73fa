"""Flux dev's distilled guidance and resolution-dependent shift in a real ComfyUI, in process; the worker behind
tests/test_flux_guidance_comfy.py.

``python -m tests.helpers.flux_guidance_checks COMFY_ROOT FLUX_FILE OUT_JSON`` imports ComfyUI (CPU), loads this
repository as a node pack and the tiny Flux dev model (tests/helpers/tiny_families.py) through UNETLoader's code path,
and samples with GAS Sigmas + GAS Sampler through SamplerCustomAdvanced (cfg 1) with a solver that records guidance
3.5 and the model's shift:

* ``matched``: the conditioning's guidance 3.5 (as the trainer uses it): no guidance or shift warning;
* ``guidance``: the same conditioning through ComfyUI's FluxGuidance node at 2.0: the guidance warning;
* ``shift``: the model through ComfyUI's ModelSamplingFlux node at 2048x2048 (another shift): the shift warning, the
  same sigmas from GAS Sigmas and the same samples as unpatched (the learned sigmas are used as trained).

Records every ``[GAS]`` warning the sampler function logs per run; writes one JSON report.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from tests.helpers.paths import REPO_ROOT
from tests.helpers.solvers import perturbed_solver


class Captured(logging.Handler):
    """Collects the messages of one logger."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def main(argv: list[str]) -> int:
    comfy_root, flux_file, out_path = argv[1], argv[2], Path(argv[3])
    sys.path.insert(0, str(REPO_ROOT))
    from tests.helpers.family_checks import NodeRunner, conditioning, start
    from tests.helpers.tiny_families import FAMILIES

    comfy, pack, logic = start(comfy_root)
    gas, bridge = pack.gas, pack.gas.comfy_bridge
    solver_folder = importlib.import_module(f"{pack.__name__}.nodes.solver_folder")
    flux_nodes = importlib.import_module("comfy_extras.nodes_flux")
    advanced = importlib.import_module("comfy_extras.nodes_model_advanced")
    captured = Captured()
    logging.getLogger(f"{pack.__name__}.nodes.sampler_function").addHandler(captured)
    family = FAMILIES["flux"]
    runner = NodeRunner(pack)
    model = comfy.sd.load_diffusion_model(flux_file)
    info = bridge.describe_model_sampling(model.get_model_object("model_sampling"))
    positive, negative = conditioning(family, 1), conditioning(family, 2)
    report: dict[str, Any] = {"model_shift": info.schedule.shift, "family_guidance": family.guidance}

    def run(label: str, patched: Any, pos: Any) -> torch.Tensor:
        captured.messages.clear()
        sigmas = runner.sigmas(patched, "flux-guidance.safetensors")
        with torch.no_grad():
            out = runner.sample(patched, "flux-guidance.safetensors", sigmas, pos, negative, 1.0, family.latent)
        report[label] = {"warnings": list(captured.messages), "sigmas": sigmas.tolist(),
                         "finite": bool(torch.isfinite(out).all())}
        return out

    with tempfile.TemporaryDirectory(prefix="gas-flux-guidance-") as folder:
        solver_folder.register()
        comfy.folder_paths.add_model_folder_path(logic.FOLDER_NAME, folder)
        solver = perturbed_solver(gas=gas, seed=5, schedule=info.schedule, metadata={
            "mode": "gs", "cfg": 1.0, "guidance": 3.5, "model": {"family": "Flux", "prediction": "flow"}})
        gas.save_solver(solver, Path(folder) / "flux-guidance.safetensors", overwrite=True)
        matched = run("matched", model, positive)
        run("guidance", model, flux_nodes.FluxGuidance.execute(positive, 2.0).result[0])
        patched = advanced.ModelSamplingFlux().patch(model, 1.15, 0.5, 2048, 2048)[0]
        patched_info = bridge.describe_model_sampling(patched.get_model_object("model_sampling"))
        report["patched_shift"] = patched_info.schedule.shift
        shifted = run("shift", patched, positive)
        report["shift"]["max_diff_vs_matched"] = float((shifted - matched).abs().max())
        report["shift"]["scale"] = float(matched.abs().max())
    out_path.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
