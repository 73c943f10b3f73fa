"""The pack's ComfyUI V3 extension: registers the solver folder and the GAS nodes."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import solver_folder
from .info_node import GASSolverInfo
from .ksampler_node import GASKSampler
from .sampler_node import GASSampler
from .sigmas_node import GASSigmas
from .train_node import GASTrainSolver

NODES: list[type[io.ComfyNode]] = [GASSampler, GASSigmas, GASKSampler, GASSolverInfo, GASTrainSolver]


class GASExtension(ComfyExtension):
    """GAS Sampler, GAS Sigmas, GAS KSampler, GAS Solver Info and GAS Train Solver."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        solver_folder.register()
        return list(NODES)


async def comfy_entrypoint() -> GASExtension:
    """ComfyUI's V3 entry point (see the pack's ``__init__.py``)."""
    return GASExtension()
