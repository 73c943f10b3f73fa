"""benchmarks/disc_separability.py: its AUC is the Mann-Whitney statistic, and its classifier separates what differs
and not what does not."""

from __future__ import annotations

import argparse

import pytest
import torch

from benchmarks import disc_separability as sep
from trainer.config import DistillConfig


def test_auc_is_the_fraction_of_correctly_ordered_pairs_ties_counting_half() -> None:
    gen = torch.Generator().manual_seed(0)
    pos = torch.randint(0, 6, (40,), generator=gen).double()
    neg = torch.randint(0, 6, (30,), generator=gen).double()
    pairs = (pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()
    assert sep.auc(pos, neg) == pytest.approx(float(pairs.mean()), abs=1e-12)
    assert sep.auc(torch.ones(3), torch.zeros(4)) == 1.0 and sep.auc(torch.zeros(3), torch.zeros(4)) == 0.5


@pytest.mark.parametrize(("shift", "separable"), [(0.0, False), (1.0, True)])
def test_the_classifier_separates_shifted_samples_and_not_identical_ones(shift: float, separable: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    exact_a, exact_b, solver_a, solver_b = (torch.randn(256, 2, 8, 8, generator=gen) for _ in range(4))
    solver_a, solver_b = solver_a + shift, solver_b + shift  # the "solver" is off by `shift` in every element
    cfg = DistillConfig(disc_preset="small", disc_blocks=1)
    args = argparse.Namespace(steps=60, batch=32, lr=1e-3)
    _, test_auc = sep.classifier_auc(solver_a, exact_b, solver_b, exact_a, cfg, args, seed=0)
    assert (test_auc > 0.95) if separable else (abs(test_auc - 0.5) < 0.1), test_auc


def test_the_script_prints_a_row_per_teacher_and_recipe(capsys) -> None:
    sep.main(["--teachers", "tiny", "--recipes", "tuned,paper:2", "--iters", "3", "--steps", "2", "--batch", "8",
              "--heldout", "64", "--exact-steps", "16"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny |")]
    assert [row.split(" | ")[1] for row in rows] == ["tuned", "paper:2"]


def test_a_saved_table_reloads_and_plots(tmp_path, capsys) -> None:
    table = tmp_path / "t.md"
    table.write_text("| teacher | GS solver | held-out L1 | FD to exact | train AUC | test AUC |\n"
                     "|---|---|---:|---:|---:|---:|\n"
                     "| demo | tuned | 0.0138 | 0.0009187 | 0.552 | 0.478 |\n"
                     "| flow | paper | 0.18 | 0.7184 | 0.999 | 0.999 |\n")
    sep.main(["--load", str(table), "--png", str(tmp_path / "auc.png")])
    assert sep.load_rows(table) == [("demo", "tuned", 0.0009187, 0.478), ("flow", "paper", 0.7184, 0.999)]
    assert "| flow | paper | FD 0.7184 | test AUC 0.999 |" in capsys.readouterr().out
    assert (tmp_path / "auc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
