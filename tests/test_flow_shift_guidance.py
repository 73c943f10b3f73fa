"""Flow shift and distilled guidance (Flux dev) rules of the sampler nodes, without ComfyUI.

A solver records the shift in its schedule metadata and the guidance in ``metadata["guidance"]``; the nodes sample
a flow model on the solver's trained sigmas whatever its shift (see README, "Model families") and warn on either
mismatch as they do for cfg.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

import gas
from nodes import logic
from tests.helpers.solvers import perturbed_solver
from tests.test_nodes_logic import flow_info


def flux_solver(shift: float = 3.0, **meta):
    return perturbed_solver(4, 0, schedule=gas.FlowSchedule(shift),
                            metadata={"model": {"family": "Flux", "prediction": "flow"}, **meta})


def test_a_flow_solver_records_its_shift_through_a_file(tmp_path) -> None:
    path = tmp_path / "flux.safetensors"
    gas.save_solver(flux_solver(2.5, guidance=3.5), path)
    loaded = gas.load_solver(path)
    assert loaded.schedule.shift == 2.5 and logic.trained_guidance(loaded) == 3.5


def test_shift_mismatch_warns_and_keeps_the_trained_sigmas() -> None:
    solver = flux_solver(3.0)
    assert logic.shift_warning(solver, "f", flow_info(3.0)) is None
    message = logic.shift_warning(solver, "f", flow_info(1.15))
    assert message is not None and "flow shift 3" in message and "1.15" in message
    assert logic.compatibility(solver, "f", flow_info(1.15), {"family": "Flux"}).error is None
    schedule = logic.effective_schedule(solver, flow_info(1.15))
    torch.testing.assert_close(logic.solver_grid(solver, schedule, 0), solver.sigmas().double())
    sd = perturbed_solver(4, 0)
    assert logic.shift_warning(sd, "s", flow_info(1.15)) is None  # not a flow solver: compatibility refuses it


def test_guidance_rules() -> None:
    solver = flux_solver(guidance=3.5)
    assert logic.guidance_warning(solver, "f", 3.5) is None and logic.guidance_warning(solver, "f", None) is None
    message = logic.guidance_warning(solver, "f", 2.0)
    assert message is not None and "guidance 3.5" in message and "2" in message
    assert logic.guidance_warning(flux_solver(), "f", 2.0) is None  # not recorded: nothing to compare
    assert logic.trained_guidance(flux_solver(guidance=True)) is None


def test_conditioning_guidance_reads_what_comfyui_built() -> None:
    built = [{"model_conds": {"guidance": SimpleNamespace(cond=torch.tensor([2.5]))}, "guidance": 9.0}]
    assert logic.conditioning_guidance(built) == 2.5  # the model cond ComfyUI built wins over the raw value
    assert logic.conditioning_guidance([{"guidance": 4.0, "model_conds": {}}]) == 4.0
    assert logic.conditioning_guidance([{"guidance": None}]) is None  # FluxDisableGuidance
    assert logic.conditioning_guidance([{"guidance": 1.0}, {"guidance": 2.0}]) is None  # areas that disagree
    assert logic.conditioning_guidance(None) is None and logic.conditioning_guidance([{}]) is None
