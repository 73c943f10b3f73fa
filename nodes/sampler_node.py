"""GAS Sampler: a SAMPLER running a learned GAS solver (or DPM-Solver++(3M)) for SamplerCustom(Advanced)."""

from __future__ import annotations

from comfy_api.latest import io

from . import logic, solver_folder
from .sampler_function import build_sampler


class GASSampler(solver_folder.SolverInputHooks, io.ComfyNode):
    """SAMPLER output for ComfyUI's custom-sampling nodes; pair it with GAS Sigmas for the solver's own grid."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GASSampler",
            display_name="GAS Sampler",
            category="sampling/custom_sampling/samplers",
            description=("Generalized Adversarial Solver: a learned few-step ODE solver. Connect to SamplerCustom or "
                         "SamplerCustomAdvanced together with GAS Sigmas (same solver). "
                         f"'{logic.NO_SOLVER}' works with any scheduler."),
            inputs=[
                solver_folder.solver_input(
                    "Solver file from models/gas_solvers. It only runs on the sigmas it was trained on: connect GAS "
                    f"Sigmas with the same solver. '{logic.NO_SOLVER}' = no learned solver: DPM-Solver++(3M) on any "
                    "sigmas (any scheduler)."),
            ],
            outputs=[io.Sampler.Output(display_name="sampler", tooltip="The GAS sampler (SAMPLER).")],
        )

    @classmethod
    def execute(cls, solver: str) -> io.NodeOutput:
        return io.NodeOutput(build_sampler(solver_folder.load(solver), solver))
