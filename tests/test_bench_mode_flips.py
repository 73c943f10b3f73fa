"""benchmarks/mode_flips.py: a sample flips exactly when its end state is nearest to another component of its class
than the exact one is, and the script runs end to end on the tiny teacher."""

from __future__ import annotations

import torch

from benchmarks import mode_flips


def test_a_flip_is_a_sample_that_ends_nearer_another_component_of_its_class():
    means = torch.tensor([[[0.0, 0.0], [10.0, 10.0]], [[-5.0, 5.0], [5.0, -5.0]]])  # 2 classes x 2 components, D=2
    classes = torch.tensor([0, 0, 1, 1])
    exact = torch.tensor([[0.1, 0.0], [9.0, 10.0], [-5.0, 4.0], [5.0, -5.0]])
    assert mode_flips.nearest_component(exact, means, classes).tolist() == [0, 1, 0, 1]
    student = exact.clone()
    student[1] = torch.tensor([1.0, 1.0])  # sample 1 now ends at component 0 of its class: a flip
    student[2] += 0.01  # a small error, no flip
    stats = mode_flips.flip_stats(student, exact, means, classes)
    assert stats["flip"].tolist() == [False, True, False, False] and stats["rate"] == 0.25
    per_sample = (student - exact).abs().mean(1)
    assert abs(stats["flip_share"] - float(per_sample[1] / per_sample.sum())) < 1e-6
    assert abs(stats["l1_others"] - float(per_sample[[0, 2, 3]].mean())) < 1e-6


def test_the_script_prints_the_flips_and_the_step_of_the_wrong_turn(capsys):
    mode_flips.main(["--teacher", "tiny", "--nfe", "3", "--seed", "0", "--iters", "3", "--train-size", "16",
                     "--val-size", "8", "--heldout", "32", "--exact-steps", "16", "--settings", "paper"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("tiny | paper | NFE 3 | seed 0: held-out L1 ") and "samples flip" in out[0]
    assert [line.split(" at sigma")[0].strip() for line in out[1:]] == ["step 1", "step 2", "step 3"]
