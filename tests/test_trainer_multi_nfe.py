"""Several NFEs in one run (``--nfe 2,3``, :func:`trainer.multi_nfe.distill_nfes`) on the demo: one teacher
generation shared by every NFE, one format-version-2 file with every solver and its held-out scores, one report,
and a killed run that resumes without retraining the NFEs it finished."""

from __future__ import annotations

import logging

import pytest
import torch

import gas
from trainer import cli
from trainer.config import DistillConfig
from trainer.demo import make_demo_problem
from trainer.errors import ResumeError, TrainingInterruptedError
from trainer.multi_nfe import distill_nfes, nfe_stem

TINY = ["--train-size", "16", "--val-size", "8", "--iters", "3", "--teacher-steps", "8", "--teacher-batch", "16"]


def tiny_config(tmp_path, **changes) -> DistillConfig:
    base = dict(mode="gs", train_size=16, val_size=8, iters=3, batch=4, teacher_steps=8, teacher_batch=16,
                ckpt_every=1, eval_every=2, log_every=1, grid_samples=2, name="demo", out_dir=str(tmp_path / "o"),
                cache_dir=str(tmp_path / "c"), run_dir=str(tmp_path / "r"))
    return DistillConfig(**{**base, **changes})


def params(solver: gas.GeneralizedSolver) -> list[torch.Tensor]:
    return [p.detach().clone() for p in solver.parameters()]


def test_cli_demo_with_two_nfes_writes_one_file_from_one_teacher(tmp_path, capsys):
    code = cli.main(["--demo", "--mode", "gs", "--nfe", "3,2", "--out", str(tmp_path / "o"), "--cache-dir",
                     str(tmp_path / "c"), "--run-dir", str(tmp_path / "r"), *TINY])
    err = capsys.readouterr().err
    assert code == 0, err
    out = tmp_path / "o"
    solvers = gas.load_solver_set(out / "demo-nfe2-3-gs.safetensors")
    assert solvers.nfes == (2, 3) and [s.nfe for s in solvers.solvers] == [2, 3]
    for solver in solvers.solvers:
        assert solver.metadata["mode"] == "gs" and "GS" in solver.metadata["scores"]["methods"]
        assert not solver.is_untrained()
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["demo-nfe2-3-gs.safetensors"]
    assert not list((tmp_path / "r").rglob("*.safetensors"))  # the per-NFE files are gone once combined
    assert err.count("teacher (train): generating") == 1 and err.count("teacher (held-out): generating") == 1
    assert "NFE 3: teacher samples reused from the cache generated for NFE 2" in err
    report = (out / "demo-nfe2-3-gs.md").read_text()
    assert "NFE 2: held-out scores" in report and "NFE 3: held-out scores" in report
    assert (out / "demo-nfe2-3-gs.png").is_file()
    comparison = (out / "demo-nfe2-3.md").read_text()
    assert "NFE 2:" in comparison and "NFE 3:" in comparison and (out / "demo-nfe2-3.png").is_file()
    # the same command again: one sentence, nothing replaced
    again = cli.main(["--demo", "--mode", "gs", "--nfe", "2,3", "--out", str(out), "--cache-dir",
                      str(tmp_path / "c"), "--run-dir", str(tmp_path / "r"), *TINY, "--quiet"])
    err = capsys.readouterr().err.strip()
    assert again == 2 and err.count("\n") == 0 and "demo-nfe2-3-gs.safetensors already exists" in err


def test_bad_nfe_list_is_one_sentence(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        cli.main(["--demo", "--nfe", "4,x", "--out", str(tmp_path), "--quiet"])
    assert info.value.code == 2 and "'4,x' is not a number of steps" in capsys.readouterr().err
    code = cli.main(["--demo", "--nfe", "4,17", "--out", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "--nfe must be an integer from 1 to 16, got 17" in err


def test_python_api_matches_single_nfe_runs(tmp_path):
    """distill_nfes trains exactly what one distill run per NFE trains (GS is bit-reproducible), in one file."""
    from trainer.distill import distill

    problem = make_demo_problem()
    done = distill_nfes(problem, tiny_config(tmp_path / "multi"), [3, 2], progress=False)
    assert done.nfes == [2, 3] and done.teachers == 1
    assert done.solver_path.name == f"{nfe_stem('demo', [2, 3], 'gs')}.safetensors" == "demo-nfe2-3-gs.safetensors"
    assert done.report_path is not None and done.report_path.is_file()
    stored = gas.load_solver_set(done.solver_path)
    for nfe in (2, 3):
        single = distill(problem, tiny_config(tmp_path / "single", nfe=nfe, report=False), progress=False)
        for a, b, c in zip(params(stored.get(nfe)), params(single.solver), params(done.results[nfe].solver),
                           strict=True):
            assert torch.equal(a.float(), b.float()) and torch.equal(b, c)
        assert stored.get(nfe).metadata["scores"]["methods"] == single.scores["methods"]


def test_killed_run_resumes_without_retraining_finished_nfes(tmp_path, caplog):
    problem = make_demo_problem()
    starts = []

    def on_progress(phase: str, done: int, total: int) -> None:
        if phase == "train" and done == 0:
            starts.append(total)

    def stop_in_second_nfe() -> bool:
        return len(starts) >= 2

    with pytest.raises(TrainingInterruptedError):
        distill_nfes(problem, tiny_config(tmp_path), [2, 3], progress=False, on_progress=on_progress,
                     should_stop=stop_in_second_nfe)
    run_dir = tmp_path / "r" / "demo-nfe2-3-gs"
    part = run_dir / "demo-nfe2-gs.safetensors"
    assert part.is_file() and (run_dir / "demo-nfe3-gs" / "state.pt").is_file()
    assert not (tmp_path / "o" / "demo-nfe2-3-gs.safetensors").exists()
    finished = params(gas.load_solver(part))
    with pytest.raises(ResumeError, match="unfinished run of demo-nfe2-3-gs"):
        distill_nfes(problem, tiny_config(tmp_path), [2, 3], progress=False)
    with caplog.at_level(logging.INFO, logger="trainer"):
        done = distill_nfes(problem, tiny_config(tmp_path, resume=True), [2, 3], progress=False)
    assert "NFE 2 was finished by the interrupted run" in caplog.text and "training demo-nfe2-gs" not in caplog.text
    assert "resuming demo-nfe3-gs at iteration 1 of 3" in caplog.text
    stored = gas.load_solver_set(done.solver_path)
    assert all(torch.equal(a, b) for a, b in zip(params(stored.get(2)), finished, strict=True))
    fresh = distill_nfes(problem, tiny_config(tmp_path / "fresh"), [2, 3], progress=False)
    for a, b in zip(params(stored.get(3)), params(gas.load_solver_set(fresh.solver_path).get(3)), strict=True):
        assert torch.equal(a, b)  # the resumed NFE is the uninterrupted one


def test_a_file_written_by_another_run_meanwhile_is_kept_and_resume_writes_this_one(tmp_path):
    """Another run writes the combined file while this one trains: one sentence, that file untouched, the NFEs' own
    solvers kept, and ``resume`` with ``overwrite`` writes this run's file without training again."""
    from trainer.errors import OutputError

    problem = make_demo_problem()
    target = tmp_path / "o" / "demo-nfe2-3-gs.safetensors"
    seen = []

    def other_run_writes(step, stats):
        seen.append(step)
        if len(seen) == 1:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"another run's file")

    with pytest.raises(OutputError, match="appeared while this run trained") as info:
        distill_nfes(problem, tiny_config(tmp_path), [2, 3], progress=False, callback=other_run_writes)
    assert "\n" not in str(info.value) and target.read_bytes() == b"another run's file"
    trained = len(seen)
    done = distill_nfes(problem, tiny_config(tmp_path, resume=True, overwrite=True), [2, 3], progress=False,
                        callback=other_run_writes)
    assert len(seen) == trained and done.solver_path == target  # nothing trained again
    assert gas.load_solver_set(target).nfes == (2, 3)


def test_ipndm_gits_teacher_is_shared_only_with_fixed_steps(tmp_path, caplog):
    """The ipndm-gits teacher runs NFE + 1 steps by default: each NFE gets its own (said in a warning); with a fixed
    teacher_steps the NFEs share one."""
    problem = make_demo_problem()
    cfg = tiny_config(tmp_path, teacher="ipndm-gits", teacher_steps=None, iters=1, train_size=8, val_size=4)
    with caplog.at_level(logging.INFO, logger="trainer"):
        own = distill_nfes(problem, cfg, [2, 3], progress=False)
    assert own.teachers == 2 and "generates its own teacher samples" in caplog.text
    assert "NFE 3: its teacher differs" in caplog.text
    shared = distill_nfes(problem, tiny_config(tmp_path / "b", teacher="ipndm-gits", teacher_steps=5, iters=1,
                                               train_size=8, val_size=4), [2, 3], progress=False)
    assert shared.teachers == 1
