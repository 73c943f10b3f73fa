"""GAS KSampler: the one-node path (model, conditioning, latent, seed, cfg, solver) for KSampler-style graphs."""

from __future__ import annotations

import logging
from typing import Any

import comfy.sample
import comfy.utils
import latent_preview
from comfy_api.latest import io

from . import logic, solver_choice, solver_folder
from .grid import model_sigmas
from .sampler_function import build_sampler

log = logging.getLogger(__name__)


class GASKSampler(solver_folder.SolverInputHooks, io.ComfyNode):
    """Samples a latent with a GAS solver on its own learned grid, like KSampler with the steps fixed by the solver."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GASKSampler",
            display_name="GAS KSampler",
            category="sampling/custom_sampling/gas",
            description=("KSampler-style sampling with a learned GAS solver: its own timesteps, steps choosing the NFE "
                         "of the solver file, cfg defaulting to the one it was trained for. Progress and previews as "
                         "with any sampler."),
            inputs=[
                io.Model.Input("model",
                               tooltip="The model to sample; the solver must have been trained for its family."),
                io.Conditioning.Input("positive", tooltip="Conditioning describing what to generate."),
                io.Conditioning.Input("negative", tooltip="Conditioning to steer away from (the solver's training used "
                                                          "an empty prompt here)."),
                io.Latent.Input("latent_image", tooltip="The latent to start from: an empty latent for text-to-image, "
                                                        "an encoded image with denoise < 1 for img2img."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the initial noise."),
                io.Float.Input("cfg", default=0.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip=("Classifier-free guidance scale. 0 = the cfg the solver was trained for "
                                        f"({logic.DEFAULT_CFG:g} without a solver or when the file records none); "
                                        "another value works but is logged as a warning.")),
                solver_folder.solver_input(
                    f"Solver file from models/gas_solvers. '{logic.NO_SOLVER}': DPM-Solver++(3M) on uniform GAS "
                    "timesteps (set steps)."),
                io.Int.Input("steps", default=0, min=0, max=logic.MAX_NO_SOLVER_STEPS,
                             tooltip=solver_choice.STEPS_TOOLTIP),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip=("img2img strength, as in KSampler: below 1 the last 'steps' steps of the "
                                        "grid for int(steps/denoise) steps run, as plain DPM-Solver++(3M).")),
            ],
            outputs=[io.Latent.Output(display_name="LATENT", tooltip="The sampled latent.")],
        )

    @classmethod
    def execute(cls, model: Any, positive: Any, negative: Any, latent_image: dict[str, Any], seed: int, cfg: float,
                solver: str, steps: int = 0, denoise: float = 1.0) -> io.NodeOutput:
        gas_solver = solver_folder.load(solver)
        sigmas = model_sigmas(model, gas_solver, solver, steps, denoise)
        out = latent_image.copy()
        if sigmas.numel() == 0:  # denoise 0: nothing to do, as ComfyUI's samplers
            return io.NodeOutput(out)
        scale = logic.resolve_cfg(cfg, solver_choice.representative(gas_solver))
        if cfg <= 0:
            log.info("[GAS] cfg 0 (auto): using cfg %g", scale)
        latent = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
        noise = comfy.sample.prepare_noise(latent, seed, latent_image.get("batch_index"))
        callback = latent_preview.prepare_callback(model, sigmas.numel() - 1)
        samples = comfy.sample.sample_custom(
            model, noise, scale, build_sampler(gas_solver, solver), sigmas, positive, negative, latent,
            noise_mask=latent_image.get("noise_mask"), callback=callback,
            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
        out["samples"] = samples
        return io.NodeOutput(out)
