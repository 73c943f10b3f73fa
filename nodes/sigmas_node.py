"""GAS Sigmas: the learned sigma grid of a solver on the connected model's noise schedule (SIGMAS)."""

from __future__ import annotations

from typing import Any

from comfy_api.latest import io

from . import logic, solver_choice, solver_folder
from .grid import model_sigmas


class GASSigmas(solver_folder.SolverInputHooks, io.ComfyNode):
    """SIGMAS for SamplerCustom / SamplerCustomAdvanced: exactly the sigmas the solver was trained on."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GASSigmas",
            display_name="GAS Sigmas",
            category="sampling/custom_sampling/schedulers",
            description=("The learned timesteps of a GAS solver as SIGMAS for the connected model, for SamplerCustom / "
                         "SamplerCustomAdvanced with GAS Sampler. Checks that the solver fits the model."),
            inputs=[
                io.Model.Input("model", tooltip="The model to sample (its noise schedule maps the learned times to "
                                                 "sigmas; the solver must have been trained for its family)."),
                solver_folder.solver_input(
                    "Solver file from models/gas_solvers; use the same one in GAS Sampler. "
                    f"'{logic.NO_SOLVER}': uniform GAS timesteps (the grid of an untrained solver)."),
                io.Int.Input("steps", default=0, min=0, max=logic.MAX_NO_SOLVER_STEPS,
                             tooltip=solver_choice.STEPS_TOOLTIP),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip=("img2img strength, as in ComfyUI's schedulers: below 1 the last 'steps' "
                                        "steps of the grid for int(steps/denoise) steps are returned; they run as "
                                        "plain DPM-Solver++(3M) on those timesteps (the learned corrections need the "
                                        "full trajectory).")),
            ],
            outputs=[io.Sigmas.Output(display_name="sigmas",
                                      tooltip="Decreasing noise levels, no trailing 0 (the solver stops at its last "
                                              "learned sigma).")],
        )

    @classmethod
    def execute(cls, model: Any, solver: str, steps: int = 0, denoise: float = 1.0) -> io.NodeOutput:
        return io.NodeOutput(model_sigmas(model, solver_folder.load(solver), solver, steps, denoise))
