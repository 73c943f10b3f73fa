"""GAS Model Patch: attaches a solver file to a MODEL, for ComfyUI's own KSampler / KSamplerAdvanced / KSamplerSelect
+ BasicScheduler with sampler ``gas`` and scheduler ``gas``."""

from __future__ import annotations

from typing import Any

from comfy_api.latest import io

from . import logic, solver_choice, solver_folder, stock_registration
from ._gas import comfy_bridge


class GASModelPatch(solver_folder.SolverInputHooks, io.ComfyNode):
    """MODEL -> MODEL carrying a learned solver; a clone, so the input model and other branches are unchanged."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GASModelPatch",
            display_name="GAS Model Patch",
            category="sampling/custom_sampling/gas",
            description=("Attaches a learned GAS solver to the model, for ComfyUI's own KSampler and KSamplerAdvanced "
                         "(or KSamplerSelect + BasicScheduler): choose sampler 'gas' and scheduler 'gas', and set "
                         "steps to an NFE the solver file holds. Place it after LoRA loaders and ModelSampling nodes "
                         "(any order with other model patches)."),
            inputs=[
                io.Model.Input("model", tooltip="The model to sample; the solver must have been trained for its "
                                                 "family. It is cloned, never changed."),
                solver_folder.solver_input(
                    "Solver file from models/gas_solvers (one or several NFEs). The sampler's 'steps' chooses the "
                    f"NFE. '{logic.NO_SOLVER}': no learned solver; scheduler 'gas' then gives the uniform GAS "
                    "timesteps of an untrained solver and sampler 'gas' runs DPM-Solver++(3M), so a workflow runs "
                    "before any solver is trained."),
            ],
            outputs=[io.Model.Output(display_name="MODEL",
                                     tooltip="The model with the solver attached (for sampler 'gas' + scheduler "
                                             "'gas').")],
        )

    @classmethod
    def execute(cls, model: Any, solver: str) -> io.NodeOutput:
        solvers = solver_folder.load(solver)
        if solvers is None:  # no learned solver: scheduler 'gas' gives an untrained solver's grid, sampler 'gas' 3M
            return io.NodeOutput(stock_registration.attach(model, stock_registration.GASPatch(None, solver)))
        info = comfy_bridge.describe_model_sampling(model.get_model_object("model_sampling"))
        verdict = logic.compatibility(solver_choice.representative(solvers), solver, info,
                                      comfy_bridge.model_identity(model, fingerprint=False))
        if verdict.error is not None:
            raise logic.GASNodeError(verdict.error)
        return io.NodeOutput(stock_registration.attach(model, stock_registration.GASPatch(solvers, solver)))
