"""Several NFEs in one solver file (format version 2), old one-solver files, and the grid for any step count:
the learned solver for a held NFE, the resampled nearest grid otherwise, and where given sigmas lie in those grids."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import gas
from gas.solver_file import SolverFileError
from gas.solver_set import GridSlice, SolverSet, denoise_total_steps, resample_times
from tests.test_golden_parity import TOL, read_golden, run
from tests.test_solver_file import make_solver, same


def trained(nfe: int, seed: int, **meta) -> gas.GeneralizedSolver:
    solver = make_solver(nfe)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        solver.mu_logit.add_(0.2 * torch.randn(nfe - 1, generator=gen))
        solver.a.add_(0.02 * torch.randn(nfe, nfe, generator=gen) * solver.used_mask())
    solver.metadata.update({"scores": {"held_out": {"l1": 0.1 * nfe}}, "iterations": 10 * nfe, **meta})
    return solver


@pytest.fixture
def three(tmp_path):
    solvers = [trained(n, n) for n in (4, 6, 8)]
    return solvers, gas.save_solver_set(solvers, tmp_path / "multi.safetensors")


def test_round_trip_keeps_every_solver_and_its_scores(three):
    solvers, path = three
    loaded = gas.load_solver_set(path)
    assert loaded.nfes == (4, 6, 8)
    for original in solvers:
        again = loaded.get(original.nfe)
        assert same(original, again)
        assert again.metadata["scores"] == {"held_out": {"l1": pytest.approx(0.1 * original.nfe)}}
        assert again.metadata["iterations"] == 10 * original.nfe
        assert torch.allclose(again.sigmas(), original.sigmas(), rtol=1e-12)
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
    assert json.loads(meta["format_version"]) == 2 and json.loads(meta["nfes"]) == [4, 6, 8]
    assert gas.load_solver(path, nfe=6).nfe == 6


def test_load_solver_on_a_multi_file_asks_for_the_nfe(three):
    _, path = three
    with pytest.raises(SolverFileError, match=r"holds solvers for NFE \[4, 6, 8\]; pass nfe="):
        gas.load_solver(path)
    with pytest.raises(SolverFileError, match="holds no solver for NFE 5"):
        gas.load_solver(path, nfe=5)


def test_version_1_file_loads_as_a_set_of_one(tmp_path):
    solver = trained(4, 1)
    path = gas.save_solver(solver, tmp_path / "one.safetensors")
    with safe_open(str(path), "pt") as handle:
        assert json.loads(handle.metadata()["format_version"]) == 1  # single solvers stay readable by older packs
    loaded = gas.load_solver_set(path)
    assert loaded.nfes == (4,) and same(loaded.default, solver)


def test_combine_files_of_both_versions(tmp_path, three):
    _, multi = three
    extra = gas.save_solver(trained(5, 2), tmp_path / "five.safetensors")
    out = gas.combine_solver_files([multi, extra], tmp_path / "all.safetensors")
    assert gas.load_solver_set(out).nfes == (4, 5, 6, 8)
    with pytest.raises(SolverFileError, match=r"NFE \[5\] is held by more than one"):
        gas.combine_solver_files([extra, extra], tmp_path / "twice.safetensors")


def test_golden_solvers_in_one_file_reproduce_the_authors(golden, tmp_path):
    """The authors' NFE-4 and NFE-6 solvers (through the importer, version 1 files) merged into one file: each still
    reproduces the authors' own output."""
    singles = [gas.import_official_checkpoint(golden / f"sd15_n{n}_random_official.pt",
                                              tmp_path / f"n{n}.safetensors", model="sd15") for n in (4, 6)]
    out = gas.combine_solver_files([tmp_path / "n4.safetensors", tmp_path / "n6.safetensors"],
                                   tmp_path / "both.safetensors")
    loaded = gas.load_solver_set(out)
    for single in singles:
        tensors, meta = read_golden(golden / f"sd15_n{single.nfe}_random.safetensors")
        solver = loaded.get(single.nfe)
        assert solver.mu_logit.dtype == torch.float64 and same(solver, single)
        result, _ = run(solver, tensors, meta, "timestep")
        assert (result - tensors["expected_comfy"]).abs().max().item() < TOL


def test_save_refuses_mixed_models(tmp_path):
    flow = make_solver(6, schedule=gas.FlowSchedule(3.0))
    with pytest.raises(SolverFileError, match="share their noise schedule"):
        gas.save_solver_set([trained(4, 1), flow], tmp_path / "x.safetensors")
    other = trained(6, 2, model={"family": "SDXL"})
    with pytest.raises(SolverFileError, match="different model families"):
        gas.save_solver_set([trained(4, 1), other], tmp_path / "x.safetensors")
    with pytest.raises(SolverFileError, match="one solver per NFE"):
        gas.save_solver_set([trained(4, 1), trained(4, 2)], tmp_path / "x.safetensors")


def _parts(path):
    with safe_open(str(path), "pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata())


@pytest.mark.parametrize("case, message", [
    ("edited tensor", "does not match its checksum"),
    ("missing entry", "one entry for each NFE"),
    ("extra tensor", "unexpected tensors"),
    ("unsorted nfes", "ascending list"),
    ("nfe out of range", "is not an integer from 1 to 16"),
    ("no checksum", "lacks"),
])
def test_damaged_multi_files_are_refused_in_one_sentence(three, tmp_path, case, message):
    _, path = three
    tensors, meta = _parts(path)
    if case == "edited tensor":
        tensors["nfe6.a"] = tensors["nfe6.a"].clone()
        tensors["nfe6.a"][0, 0] += 1e-3
    elif case == "missing entry":
        entries = json.loads(meta["solvers"])
        del entries["6"]
        meta["solvers"] = json.dumps(entries)
    elif case == "extra tensor":
        tensors["nfe9.a"] = torch.zeros(9, 9)
    elif case == "unsorted nfes":
        meta["nfes"] = json.dumps([6, 4, 8])
    elif case == "nfe out of range":
        meta["nfes"] = json.dumps([4, 6, 99])
    else:
        del meta["content_sha256"]
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(SolverFileError, match=message) as info:
        gas.load_solver_set(bad)
    assert "\n" not in str(info.value) and str(bad) in str(info.value)


# ----- the grid for any step count ------------------------------------------------------------------------------------


def test_resample_keeps_shared_knots_exactly():
    times = trained(4, 3).times().detach()
    eight = resample_times(times, 8)
    assert torch.equal(eight[::2], times)
    assert (eight[1:] < eight[:-1]).all()
    assert torch.equal(resample_times(times, 4), times)
    three = resample_times(times, 3)
    assert three[0] == 1.0 and three[-1] == times[-1] and (three[1:] < three[:-1]).all()


def test_choose_learned_or_nearest():
    s = SolverSet([trained(n, n) for n in (4, 8)])
    assert s.choose(0).solver is s.get(4)
    assert s.choose(8).learned and s.choose(8).solver is s.get(8)
    six = s.choose(6)  # tie between 4 and 8: the larger, finer grid
    assert not six.learned and six.source is s.get(8)
    assert s.choose(5).source is s.get(4) and s.choose(30).source is s.get(8)
    message = six.fallback_message("x.safetensors", s.nfes)
    assert "4, 8 steps, not 6" in message and "DPM-Solver++(3M)" in message
    grid = s.sigmas(6)
    assert grid.numel() == 7 and (grid[1:] < grid[:-1]).all()
    assert grid[0] == s.get(8).sigmas()[0] and grid[-1] == s.get(8).sigmas()[-1]
    assert torch.equal(s.sigmas(8), s.get(8).sigmas().detach())


@pytest.mark.parametrize("steps, start, end", [(4, 0, 5), (8, 0, 9), (6, 0, 7), (8, 4, 9), (13, 5, 14), (40, 32, 41),
                                               (4, 0, 3), (6, 2, 5), (100, 50, 60)])
def test_locate_finds_every_slice_of_every_grid(steps, start, end):
    s = SolverSet([trained(n, n) for n in (4, 8)])
    sigmas = s.sigmas(steps).to(torch.float32)[start:end]  # what ComfyUI hands a sampler: float32
    assert s.locate(sigmas) == GridSlice(steps, start, end - start)


def test_locate_refuses_other_schedules():
    s = SolverSet([trained(4, 4)])
    karras = torch.tensor([14.6146, 5.0, 1.5, 0.3, 0.0292])
    assert s.locate(karras) is None
    assert s.locate(s.sigmas(4)[:1]) is None
    assert s.locate(s.sigmas(4) * 1.01) is None


@pytest.mark.parametrize("steps, denoise, total", [(4, 1.0, 4), (4, 0.5, 8), (4, 0.3, 13), (6, 0.75, 8), (4, 0.0, 0)])
def test_denoise_total_steps_is_comfyuis_rule(steps, denoise, total):
    assert denoise_total_steps(steps, denoise) == total
