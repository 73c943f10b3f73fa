"""Parity with the authors' own solver code (golden files), float64, 1e-9 abs.

Three routes must reproduce ``expected_comfy``: the parameters read from the golden file, the authors' training
checkpoint through the importer, and a save/load round trip of the imported solver. Both ways of feeding the
decoupled network time (re-sigma and timestep override) are checked.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

import gas
from tests.analytic import GoldenModel
from tests.conftest import REPO_ROOT, golden_dir

TOL = 1e-9
NAMES = sorted(p.stem for p in golden_dir().glob("*.safetensors")) if golden_dir() else ["(no golden files)"]


def read_golden(path):
    with safe_open(str(path), "pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata()


def solver_from_golden(tensors, meta) -> gas.GeneralizedSolver:
    n = int(meta["steps"])
    solver = gas.GeneralizedSolver(n, t_eps=float(meta["t_eps"]), schedule=gas.DiscreteVPSchedule.sd_linear(),
                                   dtype=torch.float64)
    mask = solver.used_mask()
    with torch.no_grad():
        solver.mu_logit.copy_(tensors["param.mu_logit"])
        solver.t_couple.copy_(tensors["param.t_couple"])
        solver.a.copy_(torch.stack([tensors[f"param.a{i + 1}_diff"] for i in range(n)]) * mask)
        solver.c.copy_(torch.stack([tensors[f"param.c{i + 1}_diff"] for i in range(n)]) * mask)
    return solver


def run(solver, tensors, meta, decoupled):
    model = GoldenModel(cfg=float(meta["cfg"]), s0=float(meta["s0"]))
    sigmas = solver.sigmas()
    x = solver.schedule.initial_state(tensors["noise_vp"], sigmas[0])
    out = gas.sample_gas(model, x, sigmas, extra_args={"mu": tensors["mu_cond"]}, solver=solver, disable=True,
                         decoupled=decoupled, timestep_hook=model.timestep_hook)
    return out, model


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("decoupled", ["timestep", "resigma"])
def test_golden_from_parameters(golden, name, decoupled):
    tensors, meta = read_golden(golden / f"{name}.safetensors")
    solver = solver_from_golden(tensors, meta)
    assert torch.allclose(solver.times(), tensors["times"], atol=1e-12, rtol=0)
    assert torch.allclose(solver.sigmas(), tensors["sigmas"], atol=1e-9, rtol=0)
    net = solver.schedule.network_timestep(solver.shifted_times())
    assert torch.allclose(net, tensors["net_timesteps"][:-1], atol=1e-9, rtol=0)
    out, model = run(solver, tensors, meta, decoupled)
    err = (out - tensors["expected_comfy"]).abs().max().item()
    assert err < TOL, f"{name}/{decoupled}: max abs error {err:.3g}"
    # the official VP-space latent is rho(s_N) * x_N
    vp = out * solver.schedule.rho(solver.sigmas()[-1])
    assert (vp - tensors["expected_vp"]).abs().max().item() < TOL
    # the network saw exactly the decoupled float timesteps, one call per step
    assert [round(tau, 9) for _, tau in model.calls] == [round(v, 9) for v in tensors["net_timesteps"][:-1].tolist()]


@pytest.mark.parametrize("name", NAMES)
def test_golden_through_importer_and_round_trip(golden, name, tmp_path):
    tensors, meta = read_golden(golden / f"{name}.safetensors")
    checkpoint = golden / f"{name}_official.pt"
    out_file = tmp_path / f"{name}.safetensors"
    solver = gas.import_official_checkpoint(checkpoint, out_file, model="sd15")
    assert solver.nfe == int(meta["steps"])
    assert solver.metadata["mode"] == "imported" and solver.metadata["cfg"] == 7.5
    out, _ = run(solver, tensors, meta, "timestep")
    assert (out - tensors["expected_comfy"]).abs().max().item() < TOL

    loaded = gas.load_solver(out_file)
    assert loaded.mu_logit.dtype == torch.float64
    for decoupled in ("timestep", "resigma"):
        out, _ = run(loaded, tensors, meta, decoupled)
        assert (out - tensors["expected_comfy"]).abs().max().item() < TOL
    resaved = tmp_path / "resaved.safetensors"
    gas.save_solver(loaded, resaved)
    out, _ = run(gas.load_solver(resaved), tensors, meta, "resigma")
    assert (out - tensors["expected_comfy"]).abs().max().item() < TOL


def test_importer_takes_ema_not_raw_parameters(golden):
    """The checkpoint's ``model`` and ``collected_params`` hold perturbed values on purpose."""
    name = "sd15_n4_random"
    tensors, _ = read_golden(golden / f"{name}.safetensors")
    checkpoint = torch.load(golden / f"{name}_official.pt", weights_only=True)
    raw = checkpoint["model"]
    solver = gas.import_official_checkpoint(golden / f"{name}_official.pt")
    assert torch.equal(solver.mu_logit.detach(), tensors["param.mu_logit"])
    assert not torch.equal(raw[0].double(), tensors["param.mu_logit"])


def test_convert_cli(golden, tmp_path):
    out_file = tmp_path / "n6.safetensors"
    cmd = [sys.executable, "-m", "gas.convert", str(golden / "sd15_n6_random_official.pt"), str(out_file),
           "--model", "sd15", "--cfg", "7.5"]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "6 steps" in done.stdout
    meta = gas.read_solver_metadata(out_file)
    assert meta["nfe"] == 6 and meta["model"]["family"] == "SD15"
    # refuses to overwrite, and says so in one line
    again = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1 and "already exists" in again.stderr
    json.dumps(meta)  # metadata is plain JSON
