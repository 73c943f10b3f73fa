"""The distillation loop on the analytic teacher: it learns, resumes exactly, stops cleanly, writes its files."""

from __future__ import annotations

import os
import signal

import pytest
import torch

import gas
from tests.trainer_helpers import tiny_config, tiny_problem
from trainer.distill import distill, distill_denoiser
from trainer.errors import ResumeError, TrainingDivergedError, TrainingInterruptedError


def _params(solver: gas.GeneralizedSolver) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in solver.state_dict().items()}


@pytest.mark.parametrize("mode", ["gs", "gas"])
def test_training_reduces_the_heldout_loss(tmp_path, mode):
    p = tiny_problem()
    res = distill(p, tiny_config(tmp_path, mode=mode, iters=60, train_size=64), progress=False)
    methods = res.scores["methods"]
    label = mode.upper()
    assert res.label == label
    assert methods[label]["l1"] < 0.7 * methods["DPM-Solver++(3M)"]["l1"], methods
    # the file is a valid solver that reproduces the returned EMA solver and carries the scores
    loaded = gas.load_solver(res.solver_path)
    for k, v in _params(res.solver).items():
        torch.testing.assert_close(getattr(loaded, k), v)
    assert loaded.metadata["mode"] == mode and loaded.metadata["iterations"] == 60
    assert loaded.metadata["scores"]["methods"][label]["l1"] == pytest.approx(methods[label]["l1"])
    assert loaded.metadata["pack_version"] == gas.__version__ and "teacher" in loaded.metadata
    assert res.report_path.read_text().count("|") > 20 and res.grid_path.stat().st_size > 0
    assert not (res.run_dir / "state.pt").exists()  # finished runs leave no resumable state behind


def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path):
    p = tiny_problem()
    full = distill(p, tiny_config(tmp_path / "a", mode="gas", iters=12, ckpt_every=5), progress=False)

    def crash(step, stats):
        if step == 8:
            raise RuntimeError("simulated kill")

    cfg = tiny_config(tmp_path / "b", mode="gas", iters=12, ckpt_every=5)
    with pytest.raises(RuntimeError, match="simulated kill"):
        distill(p, cfg, progress=False, callback=crash)
    cfg.resume = True
    seen = []
    resumed = distill(p, cfg, progress=False, callback=lambda step, stats: seen.append(step))
    assert seen == list(range(6, 13))  # continued after the checkpoint at step 5
    for key, value in _params(full.solver).items():
        assert torch.equal(_params(resumed.solver)[key], value), key


def test_ctrl_c_saves_and_resume_finishes_the_same(tmp_path):
    p = tiny_problem()
    full = distill(p, tiny_config(tmp_path / "a", iters=10, ckpt_every=100), progress=False)

    def press_ctrl_c(step, stats):
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    cfg = tiny_config(tmp_path / "b", iters=10, ckpt_every=100)
    with pytest.raises(TrainingInterruptedError, match="with resume to continue") as info:
        distill(p, cfg, progress=False, callback=press_ctrl_c)
    assert info.value.exit_code == 130
    run_dir = tmp_path / "b" / "runs" / "demo-nfe4-gs"
    assert (run_dir / "state.pt").exists()
    with pytest.raises(ResumeError, match="pass resume to continue"):  # never start over silently
        distill(p, cfg, progress=False)
    cfg.resume = True
    resumed = distill(p, cfg, progress=False)
    for key, value in _params(full.solver).items():
        assert torch.equal(_params(resumed.solver)[key], value), key


def test_resume_refuses_other_settings_and_missing_state(tmp_path):
    p = tiny_problem()
    with pytest.raises(ResumeError, match="no unfinished run"):
        distill(p, tiny_config(tmp_path, resume=True), progress=False)

    def crash(step, stats):
        if step == 6:
            raise RuntimeError("kill")

    with pytest.raises(RuntimeError):
        distill(p, tiny_config(tmp_path), progress=False, callback=crash)
    with pytest.raises(ResumeError, match="lr"):
        distill(p, tiny_config(tmp_path, resume=True, lr=5e-4), progress=False)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_state(tmp_path):
    p = tiny_problem()
    base = p.denoiser
    calls = {"n": 0}

    def flaky(x, sigma, **cond):
        calls["n"] += 1
        out = base(x, sigma, **cond)
        return out * float("nan") if broken["on"] else out

    broken = {"on": False}
    p.denoiser = flaky

    def break_after(step, stats):
        if step == 7:
            broken["on"] = True

    with pytest.raises(TrainingDivergedError, match="iteration 8") as info:
        distill(p, tiny_config(tmp_path, iters=20, ckpt_every=5), progress=False, callback=break_after)
    assert "iteration 5" in str(info.value) and info.value.exit_code == 3
    state = torch.load(tmp_path / "runs" / "demo-nfe4-gs" / "state.pt", weights_only=True)
    assert state["step"] == 5 and all(torch.isfinite(v).all() for v in state["solver"].values())


def test_existing_output_is_never_overwritten_silently(tmp_path):
    p = tiny_problem()
    first = distill(p, tiny_config(tmp_path, iters=3), progress=False)
    before = first.solver_path.read_bytes()
    from trainer.errors import OutputError

    with pytest.raises(OutputError, match="pass overwrite to replace it"):
        distill(p, tiny_config(tmp_path, iters=3), progress=False)
    assert first.solver_path.read_bytes() == before
    again = distill(p, tiny_config(tmp_path, iters=4, overwrite=True), progress=False)
    assert gas.load_solver(again.solver_path).metadata["iterations"] == 4


def test_a_solver_file_written_by_another_run_meanwhile_is_kept_and_the_run_can_still_write(tmp_path):
    """Another run writes the same solver file while this one trains: one sentence, that file untouched, the training
    state kept, and ``resume`` with ``overwrite`` writes this run's solver without training again."""
    from trainer.errors import OutputError

    p = tiny_problem()
    other = distill(p, tiny_config(tmp_path / "other", iters=2), progress=False).solver_path.read_bytes()
    target = tmp_path / "out" / "demo-nfe4-gs.safetensors"

    def other_run_writes(step, stats):
        if step == 3:
            target.write_bytes(other)

    with pytest.raises(OutputError, match="appeared while this run trained") as info:
        distill(p, tiny_config(tmp_path, iters=3), progress=False, callback=other_run_writes)
    assert "\n" not in str(info.value) and target.read_bytes() == other
    assert (tmp_path / "runs" / "demo-nfe4-gs" / "state.pt").exists()
    steps = []
    done = distill(p, tiny_config(tmp_path, iters=3, resume=True, overwrite=True), progress=False,
                   callback=lambda step, stats: steps.append(step))
    assert done.solver_path == target and target.read_bytes() != other and steps == []
    assert gas.load_solver(target).metadata["iterations"] == 3


def test_lpips_loss_trains_with_injected_lpips(tmp_path):
    lpips = pytest.importorskip("lpips")
    torch.manual_seed(0)
    model = lpips.LPIPS(pretrained=False, net="vgg", pnet_rand=True, verbose=False).eval().requires_grad_(False)
    p = tiny_problem()
    res = distill(p, tiny_config(tmp_path, loss="lpips", iters=2, val_size=4, train_size=8, grid_samples=2),
                  progress=False, lpips_model=model)
    assert "lpips" in res.scores["methods"]["GS"]
    assert "LPIPS" in gas.load_solver(res.solver_path).metadata["loss"]


def test_distill_denoiser_api_and_csv_log(tmp_path):
    p = tiny_problem()
    res = distill_denoiser(p.denoiser, p.schedule, p.conditions, (2, 8, 8), tiny_config(tmp_path, iters=3, csv=True),
                           name="mymodel", identity={"model": "tiny mixture"}, progress=False)
    assert res.solver_path.name == "mymodel-nfe4-gs.safetensors"
    rows = (res.run_dir / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and len(rows) == 4
