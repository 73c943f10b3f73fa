"""The loop's host hooks (``on_progress``, ``should_stop``) that the GAS Train Solver node drives: progress reaches the
callback for the teacher and the training phase, and a stop request keeps the finished teacher samples and the
training state, after which ``resume`` ends with the same solver as a run that never stopped (GS is bit-exact)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.trainer_helpers import tiny_config, tiny_problem
from trainer.distill import distill, output_paths
from trainer.errors import TrainingInterruptedError


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_progress_phases_are_reported(tmp_path: Path) -> None:
    events: list[tuple[str, int, int]] = []
    distill(tiny_problem(), tiny_config(tmp_path, iters=6, val_size=8, train_size=16, teacher_batch=8),
            progress=False, on_progress=lambda *e: events.append(e))
    phases = [e[0] for e in events]
    assert phases[0] == "teacher (train)" and "teacher (held-out)" in phases and phases[-1] == "train"
    train = [e for e in events if e[0] == "train"]
    assert train[0] == ("train", 0, 6) and train[-1] == ("train", 6, 6)
    assert [e[1] for e in train] == list(range(7))
    teacher = [e for e in events if e[0] == "teacher (train)"]
    assert teacher[0] == ("teacher (train)", 0, 16) and teacher[-1] == ("teacher (train)", 16, 16)


def test_stop_during_teacher_keeps_finished_samples(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, iters=4, train_size=32, val_size=8, teacher_batch=8)
    done: list[int] = []

    def report(phase: str, n: int, total: int) -> None:
        if phase == "teacher (train)":
            done.append(n)

    with pytest.raises(TrainingInterruptedError, match="teacher"):
        distill(tiny_problem(), config, progress=False, on_progress=report, should_stop=lambda: bool(done) and
                done[-1] >= 16)
    shards = list(Path(config.cache_dir).glob("teacher-*/shard-*.safetensors"))
    assert len(shards) == 1 and _tensors(shards[0])["indices"].tolist() == list(range(16))
    again: list[tuple[str, int, int]] = []
    distill(tiny_problem(), config, progress=False, on_progress=lambda *e: again.append(e))
    assert ("teacher (train)", 0, 16) in again  # only the missing half is generated


def test_stop_during_training_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    whole = tiny_config(tmp_path / "a", iters=12, ckpt_every=100)
    reference = distill(tiny_problem(), whole, progress=False)

    split = tiny_config(tmp_path / "b", iters=12, ckpt_every=100)
    steps: list[int] = []
    with pytest.raises(TrainingInterruptedError, match="iteration 5"):
        distill(tiny_problem(), split, progress=False, callback=lambda step, _: steps.append(step),
                should_stop=lambda: len(steps) >= 4)  # asked after iteration 5's callback has not run yet
    state = output_paths(tiny_problem(), split).state
    assert state.is_file()
    split.resume = True
    resumed = distill(tiny_problem(), split, progress=False)
    a, b = _tensors(reference.solver_path), _tensors(resumed.solver_path)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
