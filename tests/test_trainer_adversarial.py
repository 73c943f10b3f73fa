"""The adversarial part's levers (trainer/steps.py): where the discriminator's fake batch comes from (``disc_fake``)
and the ramp of the adversarial weight (``disc_ramp``), each off in both recipes."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import trainer.steps as steps
from tests.trainer_helpers import tiny_config, tiny_problem
from trainer import cli
from trainer.checkpointing import check_compatible
from trainer.config import RECIPES, DistillConfig
from trainer.distill import distill
from trainer.errors import ConfigError, ResumeError
from trainer.steps import adversarial_weight


def test_both_recipes_keep_the_papers_fake_batch_and_full_weight() -> None:
    for name in RECIPES:
        cfg = DistillConfig.from_recipe(name)
        assert (cfg.disc_fake, cfg.disc_ramp) == ("fresh", 0), name


@pytest.mark.parametrize(("field", "value", "message"), [
    ("disc_fake", "same", "disc_fake must be one of fresh, paired, got 'same'"),
    ("disc_ramp", -0.1, "disc_ramp must be a fraction of the iterations from 0 to 1, got -0.1"),
    ("disc_ramp", 1.5, "disc_ramp must be a fraction of the iterations from 0 to 1, got 1.5"),
])
def test_bad_adversarial_settings_get_one_sentence(tmp_path, field: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        tiny_config(tmp_path, mode="gas", **{field: value}).validate()
    assert message in str(info.value)


def test_the_adversarial_weight_ramps_linearly_then_holds() -> None:
    cfg = DistillConfig(iters=100, disc_weight=0.4, disc_ramp=0.4)
    weights = [adversarial_weight(cfg, step) for step in (1, 20, 40, 41, 100)]
    assert weights == pytest.approx([0.01, 0.2, 0.4, 0.4, 0.4])
    assert adversarial_weight(DistillConfig(iters=100, disc_weight=0.4), 1) == 0.4  # 0 = the paper's full weight


def _start_noises(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Record the unit noise of every student run (the discriminator step's first, then the solver step's)."""
    seen: list[torch.Tensor] = []
    original = steps.start_state

    def recording(problem, noise, s0):
        seen.append(noise.clone())
        return original(problem, noise, s0)

    monkeypatch.setattr(steps, "start_state", recording)
    return seen


@pytest.mark.parametrize("disc_fake", ["fresh", "paired"])
def test_the_discriminators_fake_batch_comes_from_the_chosen_noise(tmp_path, monkeypatch, disc_fake: str) -> None:
    seen = _start_noises(monkeypatch)
    distill(tiny_problem(), tiny_config(tmp_path, mode="gas", iters=3, disc_fake=disc_fake), progress=False)
    training = [n for n in seen if n.shape[0] == 4]  # the evaluation's runs use other batch sizes
    assert len(training) == 6  # per iteration: the discriminator's fake batch, then the solver's batch
    for fake, batch in zip(training[0::2], training[1::2], strict=True):
        assert torch.equal(fake, batch) == (disc_fake == "paired")


def test_a_ramped_run_starts_as_gs_and_ends_with_the_adversarial_term(tmp_path) -> None:
    stats: list[dict[str, float]] = []
    distill(tiny_problem(), tiny_config(tmp_path, mode="gas", iters=8, disc_ramp=0.5, disc_weight=0.5),
            progress=False, callback=lambda step, s: stats.append(s))
    # loss = distillation + ramped weight x adversarial term, the weight 0.5 x step / 4 up to step 4 of 8
    for step, s in enumerate(stats, start=1):
        assert s["loss"] == pytest.approx(s["distill"] + 0.5 * min(1.0, step / 4) * s["adv"], rel=1e-5), step


def test_the_command_line_sets_them_and_a_resume_checks_them(tmp_path) -> None:
    def parsed(*argv: str) -> DistillConfig:
        return cli.config_from_args(cli.build_parser().parse_args(["--ckpt", "x", "--mode", "gas", *argv]))

    assert (parsed().disc_fake, parsed().disc_ramp) == ("fresh", 0)
    cfg = parsed("--disc-fake", "paired", "--disc-ramp", "0.25")
    assert (cfg.disc_fake, cfg.disc_ramp) == ("paired", 0.25)
    old = {k: v for k, v in parsed().to_dict().items() if k not in ("disc_fake", "disc_ramp")}
    check_compatible(old, parsed().to_dict(), "k", "k", tmp_path / "state.pt")  # states from before the settings
    with pytest.raises(ResumeError, match="used disc_fake='fresh' but this run has disc_fake='paired'"):
        check_compatible(old, cfg.to_dict(), "k", "k", tmp_path / "state.pt")
    with pytest.raises(ResumeError, match=r"used disc_ramp=0\.0 but this run has disc_ramp=0\.25"):
        check_compatible(old, parsed("--disc-ramp", "0.25").to_dict(), "k", "k", tmp_path / "state.pt")
