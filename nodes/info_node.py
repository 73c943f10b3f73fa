"""GAS Solver Info: what a solver file was trained for (model, NFE, cfg, schedule, mode, held-out scores)."""

from __future__ import annotations

import logging

from comfy_api.latest import io, ui

from . import solver_choice, solver_folder

log = logging.getLogger(__name__)


class GASSolverInfo(solver_folder.SolverInputHooks, io.ComfyNode):
    """Shows a solver file's metadata as text (STRING output; connect it to Preview Any to read it on the canvas)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GASSolverInfo",
            display_name="GAS Solver Info",
            category="sampling/custom_sampling/gas",
            description=("What a GAS solver file was trained for: model family and checkpoint, every NFE it holds, "
                         "cfg, noise schedule, training mode and held-out scores. Connect the text to Preview Any."),
            inputs=[solver_folder.solver_input("Solver file from models/gas_solvers to describe.")],
            outputs=[io.String.Output(display_name="info", tooltip="The description as text.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, solver: str) -> io.NodeOutput:
        text = solver_choice.describe_solver_set(solver_folder.load(solver), solver)
        log.info("[GAS] solver info\n%s", text)
        return io.NodeOutput(text, ui=ui.PreviewText(text))
