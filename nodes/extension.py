"""The pack's ComfyUI V3 extension: registers the solver folder, the GAS nodes, and sampler/scheduler ``gas`` in
ComfyUI's own lists."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import solver_folder, stock_registration
from .info_node import GASSolverInfo
from .ksampler_node import GASKSampler
from .model_patch_node import GASModelPatch
from .sampler_node import GASSampler
from .sigmas_node import GASSigmas
from .train_node import GASTrainSolver

NODES: list[type[io.ComfyNode]] = [GASSampler, GASSigmas, GASKSampler, GASSolverInfo, GASModelPatch, GASTrainSolver]


class GASExtension(ComfyExtension):
    """GAS Sampler, GAS Sigmas, GAS KSampler, GAS Solver Info, GAS Model Patch and GAS Train
    Solver."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        # ComfyUI 0.3.64 calls get_node_list (not on_load) while loading the pack; both registrations are idempotent
        solver_folder.register()
        stock_registration.register()
        return list(NODES)


async def comfy_entrypoint() -> GASExtension:
    """ComfyUI's V3 entry point (see the pack's ``__init__.py``)."""
    return GASExtension()
