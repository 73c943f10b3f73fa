"""The recipe levers (trainer/schedule.py, DistillConfig's recipe settings) and the recipe bench (benchmarks/recipe.py):
every setting does what its documentation says, the paper recipe is today's defaults, and the bench runs end to end
on a tiny teacher."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from safetensors.torch import load_file

import trainer.steps
from benchmarks import recipe as bench
from gas import GeneralizedSolver
from tests.trainer_helpers import tiny_config, tiny_problem
from trainer import cli
from trainer.config import RECIPES, DistillConfig
from trainer.distill import distill
from trainer.errors import ConfigError, ResumeError, TrainingInterruptedError
from trainer.gits import logsnr_grid
from trainer.run_state import RunState
from trainer.schedule import initial_times, learning_rate, set_initial_times
from trainer.teacher import end_sigmas


def test_paper_recipe_is_todays_defaults():
    assert DistillConfig.from_recipe("paper") == DistillConfig()
    for key, value in RECIPES["paper"].items():
        assert getattr(DistillConfig(), key) == value, key
    assert DistillConfig.from_recipe("paper", lr=2e-3).lr == 2e-3
    with pytest.raises(ConfigError, match="recipe must be one of paper"):
        DistillConfig.from_recipe("fast")


def test_cli_recipe_and_lever_options():
    base = cli.config_from_args(cli.build_parser().parse_args(["--ckpt", "x.safetensors"]))
    paper = cli.config_from_args(cli.build_parser().parse_args(["--ckpt", "x.safetensors", "--recipe", "paper"]))
    assert paper != base and base == cli.config_from_args(cli.build_parser().parse_args(
        ["--ckpt", "x.safetensors", "--recipe", "tuned"]))
    assert (paper.lr_schedule, paper.lr_warmup, paper.time_init) == ("constant", 0, "uniform")
    args = cli.build_parser().parse_args(["--ckpt", "x", "--recipe", "paper", "--lr-schedule", "cosine",
                                          "--lr-warmup", "25", "--time-init", "logsnr"])
    cfg = cli.config_from_args(args)
    assert (cfg.lr_schedule, cfg.lr_warmup, cfg.time_init) == ("cosine", 25, "logsnr")


@pytest.mark.parametrize(("change", "message"), [
    ({"lr_schedule": "step"}, "lr_schedule must be one of constant, cosine"),
    ({"lr_warmup": 2000}, "lr_warmup must be an integer from 0 to iters - 1"),
    ({"lr_warmup": -1}, "lr_warmup must be"),
    ({"time_init": "gits"}, "time_init must be one of uniform, logsnr"),
])
def test_bad_lever_values_are_one_sentence(change, message):
    with pytest.raises(ConfigError, match=message):
        DistillConfig(**change).validate()


def test_learning_rate_schedules():
    const = DistillConfig(iters=100)
    assert all(learning_rate(const, n) == const.lr for n in range(1, 101))  # exactly lr: the paper's runs unchanged
    cos = DistillConfig(iters=100, lr=1e-3, lr_schedule="cosine")
    assert learning_rate(cos, 1) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 100)))
    assert learning_rate(cos, 50) == pytest.approx(0.5e-3)
    assert learning_rate(cos, 100) == pytest.approx(0.0, abs=1e-18)
    warm = DistillConfig(iters=100, lr=1e-3, lr_schedule="cosine", lr_warmup=10)
    assert [learning_rate(warm, n) for n in (1, 5, 10)] == pytest.approx([1e-4, 5e-4, 1e-3])
    assert learning_rate(warm, 55) == pytest.approx(0.5e-3)  # half-way through the 90 decay iterations
    lrs = [learning_rate(warm, n) for n in range(10, 101)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    assert learning_rate(DistillConfig(iters=100, lr_warmup=4), 2) == pytest.approx(0.5e-3)  # warm-up, then constant
    assert learning_rate(DistillConfig(iters=100, lr_warmup=4), 5) == 1e-3


def test_the_optimiser_steps_at_the_scheduled_learning_rate(tmp_path, monkeypatch):
    seen: list[tuple[int, float]] = []
    real = trainer.steps.learning_rate

    def record(config, step):
        value = real(config, step)
        seen.append((step, value))
        return value

    monkeypatch.setattr(trainer.steps, "learning_rate", record)
    cfg = tiny_config(tmp_path / "cos", iters=4, lr_schedule="cosine", report=False)
    cosine = distill(tiny_problem(), cfg, progress=False)
    assert [s for s, _ in seen] == [1, 2, 3, 4]
    assert [v for _, v in seen] == pytest.approx([1e-3 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(1, 5)])
    constant = distill(tiny_problem(), tiny_config(tmp_path / "const", iters=4, report=False), progress=False)
    assert not torch.equal(cosine.solver.a, constant.solver.a)


def assert_resume_is_exact(tmp_path, stop_after: int, **kw) -> None:
    """A run stopped after ``stop_after`` iterations and resumed writes the uninterrupted run's file bit for bit."""
    whole = distill(tiny_problem(), tiny_config(tmp_path / "a", **kw), progress=False)
    split = tiny_config(tmp_path / "b", **kw)
    steps: list[int] = []
    with pytest.raises(TrainingInterruptedError):
        distill(tiny_problem(), split, progress=False, callback=lambda step, _: steps.append(step),
                should_stop=lambda: len(steps) >= stop_after)
    split.resume = True
    resumed = distill(tiny_problem(), split, progress=False)
    a, b = load_file(str(whole.solver_path)), load_file(str(resumed.solver_path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cosine_resume_is_exact(tmp_path):
    assert_resume_is_exact(tmp_path, 4, iters=10, ckpt_every=100, lr_schedule="cosine", lr_warmup=3, report=False)


def test_resume_refuses_another_schedule(tmp_path):
    cfg = tiny_config(tmp_path, iters=10, ckpt_every=100, report=False)
    steps: list[int] = []
    with pytest.raises(TrainingInterruptedError):
        distill(tiny_problem(), cfg, progress=False, callback=lambda step, _: steps.append(step),
                should_stop=lambda: len(steps) >= 2)
    with pytest.raises(ResumeError, match="lr_schedule='constant' but this run has lr_schedule='cosine'"):
        distill(tiny_problem(), tiny_config(tmp_path, iters=10, resume=True, lr_schedule="cosine"), progress=False)


def test_logsnr_time_init_starts_on_the_logsnr_grid(tmp_path):
    problem = tiny_problem()
    for nfe in (1, 4, 6):
        uniform = GeneralizedSolver(nfe, schedule=problem.schedule)
        untouched = GeneralizedSolver(nfe, schedule=problem.schedule)
        set_initial_times(untouched, problem.schedule, "uniform")
        assert torch.equal(untouched.mu_logit, uniform.mu_logit)
        assert torch.allclose(uniform.times(), initial_times(nfe, 1e-3, problem.schedule, "uniform"), atol=1e-6)
        run = RunState(problem, tiny_config(tmp_path, nfe=nfe, time_init="logsnr"))
        s0, s_end = end_sigmas(problem, 1e-3)
        want = logsnr_grid(problem.schedule, s0, s_end, nfe)
        got = run.solver.sigmas(problem.schedule).detach()
        assert torch.allclose(got, want, rtol=1e-4), (got, want)
        if nfe > 2:
            assert not torch.allclose(got, uniform.sigmas(problem.schedule).detach(), rtol=1e-2)


def test_flow_teacher_is_the_exact_mixture_denoiser():
    """``D_flow(x, s)`` is the posterior mean of ``x0`` for ``x = (1-s) x0 + s eps``: equal to the VE denoiser's at
    ``x / (1-s)``, sigma ``s/(1-s)``; at small ``s`` it returns (almost) ``x`` itself."""
    den = bench.flow_problem().denoiser
    x = torch.randn(3, 4, 8, 8)
    s = torch.tensor([0.5, 0.2, 1e-4], dtype=torch.float64)
    ve = den.ve(x.double() / (1 - s).reshape(-1, 1, 1, 1), s / (1 - s), torch.tensor([0, 1, 2])).float()
    assert torch.allclose(den(x, s, torch.tensor([0, 1, 2])), ve)
    assert torch.isfinite(den(x, torch.ones(3), torch.tensor([0, 1, 2]))).all()  # s = 1: no signal, no inf


def test_the_bench_runs_end_to_end_on_a_tiny_teacher(tmp_path, capsys):
    png, log = tmp_path / "curves.png", tmp_path / "runs.jsonl"
    results = bench.main(["--teachers", "tiny", "--settings", "paper,warmup5%+cosine", "--nfe", "2", "3",
                          "--seeds", "2", "--iters", "10", "--train-size", "8", "--val-size", "8", "--heldout", "8",
                          "--exact-steps", "32", "--png", str(png), "--json", str(log)])
    out = capsys.readouterr().out
    assert len(results) == 2 * 2 * 2
    assert all(math.isfinite(r.heldout_l1) and r.heldout_l1 > 0 and r.train_seconds > 0 for r in results)
    assert all([s for s, _ in r.curve] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] for r in results)
    assert "| tiny | paper |" in out and "| tiny | warmup5%+cosine |" in out
    assert png.stat().st_size > 1000
    from PIL import Image
    assert Image.open(png).size[0] == 2 * 420
    reloaded = bench.load_results([log])
    assert [(r.setting, r.nfe, r.seed, r.heldout_l1) for r in reloaded] == [
        (r.setting, r.nfe, r.seed, r.heldout_l1) for r in results]
    assert bench.format_table(reloaded, [2, 3]) in out


def test_stability_rule():
    run = bench.RunResult("t", "s", 4, 0, 0.1, 0.0, 1.0, [(1, 1.0), (50, 0.2), (80, 0.100), (100, 0.102)])
    assert run.stable
    run.curve[-1] = (100, 0.1021)
    assert not run.stable
    # measured against the exact ODE at 80% (``--exact-stability``), that decides instead of the trainer's check
    run.exact_l1_at_80 = 0.0981
    assert run.stable
    run.exact_l1_at_80 = 0.098
    assert not run.stable


def test_exact_stability_stops_at_80_percent_and_resumes_to_the_same_solver(tmp_path):
    """``--exact-stability``: each run stops at 80% of its iterations, scores that EMA solver against the exact ODE
    and resumes; the end result and the curve are those of the uninterrupted run."""
    common = ["--teachers", "tiny", "--settings", "tuned+teacher 32+lr 5e-3", "--nfe", "3", "--seeds", "1",
              "--iters", "20", "--train-size", "8", "--val-size", "8", "--heldout", "8", "--exact-steps", "32"]
    plain = bench.main(common)
    checked = bench.main([*common, "--exact-stability"])
    assert [r.heldout_l1 for r in checked] == [r.heldout_l1 for r in plain]
    assert [r.curve for r in checked] == [r.curve for r in plain]
    assert math.isnan(plain[0].exact_l1_at_80) and math.isfinite(checked[0].exact_l1_at_80)
    assert checked[0].exact_l1_at_80 != checked[0].heldout_l1  # the solver of iteration 16, not the last
    # --exact-curve 5: also stops at iterations 4, 8 and 12; the same solvers, the curve the PNG draws
    curved = bench.main([*common, "--exact-curve", "5", "--png", str(tmp_path / "c.png")])
    assert [r.heldout_l1 for r in curved] == [r.heldout_l1 for r in plain]
    assert [r.curve for r in curved] == [r.curve for r in plain]
    assert [step for step, _ in curved[0].exact_curve] == [4, 8, 12, 16, 20]
    assert dict(curved[0].exact_curve)[16] == checked[0].exact_l1_at_80 == curved[0].exact_l1_at_80
    assert curved[0].exact_curve[-1][1] == curved[0].heldout_l1 and (tmp_path / "c.png").stat().st_size > 0


def test_a_recipe_sets_what_the_command_line_leaves_out(monkeypatch):
    """The options start from the chosen recipe: an option not given takes the recipe's value, one given wins."""
    from trainer import cli, config

    recipe = {"lr": 2e-3, "batch": 8, "ema": 0.95, "lr_schedule": "cosine", "grad_clip": 0.5}
    monkeypatch.setitem(config.RECIPES, "other", recipe)
    parser = cli.build_parser()
    for action in parser._actions:  # the choices were read when the parser was built
        if action.dest == "recipe":
            action.choices = tuple(config.RECIPES)
    args = parser.parse_args(["--demo", "--recipe", "other", "--batch", "16"])
    built = cli.config_from_args(args, demo=True)
    assert (built.lr, built.ema, built.lr_schedule, built.grad_clip) == (2e-3, 0.95, "cosine", 0.5)
    assert built.batch == 16
    default = cli.config_from_args(parser.parse_args(["--demo"]), demo=True)
    ref = config.DistillConfig.from_recipe(config.DEFAULT_RECIPE)
    assert (default.lr, default.batch, default.loss_reduce) == (ref.lr, ref.batch, ref.loss_reduce)


def test_select_best_writes_the_checked_solver_with_the_lowest_heldout_l1(tmp_path):
    """``select="best"``: the solver written is the EMA solver of the periodic check with the lowest held-out L1 (the
    checks' values come through the callback), not the last one, when a late check is worse; "last" keeps the end."""
    kw = {"iters": 12, "eval_every": 2, "lr": 0.3, "ema": 0.0, "report": False}  # a high rate: a noisy curve
    checks: list[tuple[int, float]] = []
    best = distill(tiny_problem(), tiny_config(tmp_path / "best", select="best", **kw), progress=False,
                   callback=lambda step, stats: checks.append((step, stats["val_l1"])) if "val_l1" in stats else None)
    last = distill(tiny_problem(), tiny_config(tmp_path / "last", **kw), progress=False)
    assert [s for s, _ in checks] == [1, 2, 4, 6, 8, 10, 12]
    lowest = min(v for _, v in checks)
    assert best.scores["methods"][best.label]["l1"] == pytest.approx(lowest, rel=1e-6)
    assert lowest < checks[-1][1]  # this run's last check is not its best (fixed seed), so the two files differ
    assert not torch.equal(best.solver.a, last.solver.a)


def test_select_best_resume_is_exact(tmp_path):
    assert_resume_is_exact(tmp_path, 5, iters=10, ckpt_every=100, eval_every=2, lr=0.3, ema=0.0, select="best",
                           report=False)


def test_starts_pick_the_candidate_with_the_lowest_heldout_l1(tmp_path, caplog):
    """``starts=3``: three candidates from the uniform, the half-way and the log-SNR grid, each trained
    ``start_iters`` iterations and scored on the held-out samples; the winner goes on at iteration 3 x start_iters,
    so the run's iteration count (and its log) is that of one start."""
    import logging

    from trainer.starts import start_blends

    assert start_blends(3) == [0.0, 0.5, 1.0] and start_blends(1) == [0.0]
    cfg = tiny_config(tmp_path, iters=10, starts=3, start_iters=2, report=False)
    steps: list[int] = []
    with caplog.at_level(logging.INFO, logger="trainer"):
        result = distill(tiny_problem(), cfg, progress=False, callback=lambda step, _: steps.append(step))
    assert steps == list(range(7, 11))  # 3 x 2 iterations went into the starts
    scores = [float(m.split("held-out L1 ")[1].split()[0]) for m in caplog.messages if m.startswith("start ")]
    assert len(scores) == 3
    assert result.solver.metadata["iterations"] == 10


def test_bad_starts_get_one_sentence():
    with pytest.raises(ConfigError) as info:
        DistillConfig(iters=10, starts=5, start_iters=2).validate()
    assert "starts x start_iters (5 x 2) must be fewer than iters (10)" in str(info.value)


def test_starts_resume_after_the_choice_is_exact(tmp_path):
    assert_resume_is_exact(tmp_path, 3, iters=12, ckpt_every=100, starts=2, start_iters=2, report=False)


def test_starts_in_gas_mode_train_the_distillation_loss_only(tmp_path, monkeypatch):
    """In GAS mode the candidates step the solver without the adversarial term (no discriminator call); the
    winner's discriminator then trains from its fresh initialisation."""
    calls: list[int] = []
    real = trainer.steps.generator_adversarial_loss
    monkeypatch.setattr(trainer.steps, "generator_adversarial_loss",
                        lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    cfg = tiny_config(tmp_path, mode="gas", disc_preset="small", iters=6, starts=2, start_iters=2, report=False)
    result = distill(tiny_problem(), cfg, progress=False)
    assert len(calls) == 6 - 2 * 2 and result.solver.metadata["mode"] == "gas"


def test_frechet_distance_and_the_gas_cost_bench(tmp_path, capsys):
    """``benchmarks.gas_cost``: the Frechet distance is 0 between a set and itself, grows with a shift of the mean
    (by |shift|^2) and with a change of spread; the bench runs end to end on the tiny teacher and prints its table."""
    from benchmarks import gas_cost

    x = torch.randn(256, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    f = gas_cost.pooled_features(x)
    assert f.shape == (256, 2 * 4 * 4)
    assert gas_cost.frechet_distance(f, f) == pytest.approx(0.0, abs=1e-9)
    assert gas_cost.frechet_distance(f, f + 0.5) == pytest.approx(0.25 * f.shape[1], rel=1e-6)
    assert gas_cost.frechet_distance(f, 2 * f) > 0.1
    gas_cost.main(["--teachers", "tiny", "--seeds", "1", "--first-seed", "4", "--iters", "3", "--train-size", "8",
                   "--gas-train-size", "12", "--heldout", "16", "--exact-steps", "16", "--stats-every", "2",
                   "--variants", "GS;GAS small, R1 every 16, D every 4, 1 block"])
    out = capsys.readouterr().out
    assert out.count("| seed 4 |") == 2 and "| seed 0 |" not in out
    assert out.count("iteration 1: loss") == 2 and out.count("iteration 3: loss") == 2 and "iteration 2:" not in out
    assert "adv " in out and "d_loss " in out  # GAS's losses in its lines
    assert "| tiny | GS |" in out and "| tiny | GAS small, R1 every 16, D every 4, 1 block |" in out
    assert "| GS | seed 4 | 8 samples |" in out  # and GAS mode's own count
    assert "| GAS small, R1 every 16, D every 4, 1 block | seed 4 | 12 samples |" in out
    assert "teacher + train / GS" in out and "| 1.00x | 1.00x |" in out
    # runs saved before the teacher was timed load with no teacher time ("-"), the train ratio as before
    old = tmp_path / "old.jsonl"
    old.write_text('{"teacher": "demo", "variant": "GS", "seed": 0, "l1": 0.01, "fd": 0.001, "train_seconds": 30}\n'
                   '{"teacher": "demo", "variant": "GAS", "seed": 0, "l1": 0.01, "fd": 0.001, "train_seconds": 45}\n')
    gas_cost.main(["--load", str(old)])
    assert "| demo | GAS | 0.0100 | 0.001 | - | 45.0 | 1.50x | - |" in capsys.readouterr().out


def test_the_tuned_recipe_is_the_paper_with_a_5x_cosine_rate_cauchy_and_state_losses_32_step_teacher_1800_iters():
    tuned, paper = DistillConfig.from_recipe("tuned"), DistillConfig.from_recipe("paper")
    assert (tuned.lr, tuned.lr_schedule, tuned.loss_reduce, tuned.cauchy_scale) == (5e-3, "cosine", "cauchy", 10.0)
    assert (tuned.state_loss, tuned.state_anneal, tuned.state_points) == (1.0, "linear", 16)
    assert (tuned.disc_weight, tuned.r1_every, tuned.disc_every) == (0.1, 16, 4)
    # the recipe's teacher steps are the dpmpp3m teacher's; an explicit count or the ipndm-gits teacher keep theirs
    assert (tuned.resolved_teacher_steps, paper.resolved_teacher_steps) == (32, 64)
    assert DistillConfig.from_recipe("tuned", teacher_steps=48).resolved_teacher_steps == 48
    assert DistillConfig.from_recipe("tuned", teacher="ipndm-gits", nfe=6).resolved_teacher_steps == 7
    changed = {k for k, v in tuned.to_dict().items() if paper.to_dict()[k] != v}
    assert changed == {"iters", "lr", "lr_schedule", "loss_reduce", "cauchy_scale", "state_loss", "state_anneal",
                       "dpmpp3m_steps", "disc_weight", "r1_every", "disc_every"}
    args = cli.build_parser().parse_args(["--ckpt", "x.safetensors", "--recipe", "tuned"])
    from_cli = cli.config_from_args(args)
    assert (from_cli.lr, from_cli.state_loss, from_cli.resolved_teacher_steps, from_cli.iters) == (5e-3, 1.0, 32, 1800)
    paper_cli = cli.config_from_args(cli.build_parser().parse_args(["--ckpt", "x", "--recipe", "paper"]))
    assert (paper_cli.lr, paper_cli.resolved_teacher_steps, paper_cli.iters) == (1e-3, 64, 2000)
    # the bench row that measured it (at --iters 2000, the paper's length): its GS settings are the recipe's
    gs_changes = {k: v for k, v in RECIPES["tuned"].items()
                  if k in changed and not k.startswith(("disc", "r1", "gas"))}
    assert bench.SETTINGS["tuned+iters x0.9"](2000) == gs_changes
    # the rows before it: the same at the paper's length; with the paper's teacher and a 3x rate, no state loss
    at_2000 = {k: v for k, v in gs_changes.items() if k != "iters"}
    assert bench.SETTINGS["tuned+teacher 32+lr 5e-3"](2000) == at_2000
    previous = {**at_2000, "lr": 3e-3}
    del previous["dpmpp3m_steps"]
    assert bench.SETTINGS["tuned+state 1 linear"](2000) == previous
    assert bench.SETTINGS["lr 3e-3+cosine+cauchy 10 loss"](2000) == {
        k: v for k, v in previous.items() if not k.startswith("state")}
    # the teacher-cost levers are that earlier `tuned` (no state loss) with one data setting changed
    lever = bench.SETTINGS["lr 3e-3+cosine+cauchy 10 loss+teacher 32+train 2800"](2000)
    before = DistillConfig.from_recipe("tuned", iters=2000, lr=3e-3, dpmpp3m_steps=64, teacher_steps=32,
                                       train_size=2800, state_loss=0.0, state_anneal="none").to_dict()
    gs_part = {k: v for k, v in before.items() if not k.startswith(("disc", "r1", "gas"))}
    assert gs_part == {k: v for k, v in DistillConfig.from_recipe("paper", **lever).to_dict().items()
                       if not k.startswith(("disc", "r1", "gas"))}


def test_gas_train_size_sets_gas_modes_count_and_an_explicit_train_size_applies_to_both_modes(tmp_path):
    """``gas_train_size`` (0 in both recipes): GAS mode's teacher samples instead of ``train_size``; the trainer's
    batches, its teacher data and the written metadata follow the count the mode uses; ``--train-size`` alone is the
    count of both modes, ``--gas-train-size`` sets GAS mode's; a resume compares the count used."""
    from trainer.batches import batch_indices
    from trainer.checkpointing import check_compatible

    assert [DistillConfig.from_recipe(r, mode=m).training_samples for r in RECIPES for m in ("gs", "gas")] == \
        [1400] * 2 * len(RECIPES)
    gas = DistillConfig.from_recipe("tuned", mode="gas", gas_train_size=5600)
    gs = DistillConfig.from_recipe("tuned", mode="gs", gas_train_size=5600)
    assert (gas.training_samples, gs.training_samples) == (5600, 1400)
    # the epoch is a permutation of the count used: every index below it, none above
    small = DistillConfig.from_recipe("tuned", mode="gas", train_size=4, gas_train_size=12, batch=4)
    seen = {i for step in range(1, 4) for i in batch_indices(small, step)}
    assert seen == set(range(12))
    with pytest.raises(ConfigError, match="gas_train_size"):
        DistillConfig.from_recipe("tuned", mode="gas", gas_train_size=2, batch=4).validate()
    with pytest.raises(ConfigError, match="gas_train_size"):
        DistillConfig.from_recipe("tuned", gas_train_size=-1).validate()

    def parsed(*argv: str) -> DistillConfig:
        return cli.config_from_args(cli.build_parser().parse_args(["--ckpt", "x", *argv]))

    assert (parsed().train_size, parsed().gas_train_size, parsed().training_samples) == (1400, 0, 1400)
    assert parsed("--gas-train-size", "5600").training_samples == 5600
    assert parsed("--gas-train-size", "5600", "--mode", "gs").training_samples == 1400
    assert parsed("--train-size", "3000").training_samples == 3000
    assert parsed("--train-size", "3000", "--mode", "gs").training_samples == 3000
    assert parsed("--train-size", "3000", "--gas-train-size", "9000").training_samples == 9000
    assert parsed("--recipe", "paper", "--gas-train-size", "700").training_samples == 700
    # resume: a GS state does not care for GAS mode's count; a GAS state does
    path = tmp_path / "state.pt"
    check_compatible(gs.to_dict(), {**gs.to_dict(), "gas_train_size": 0}, "k", "k", path)
    check_compatible(gas.to_dict(), {**gas.to_dict(), "train_size": 999}, "k", "k", path)
    with pytest.raises(ResumeError, match="train_size=5600 but this run has train_size=1400"):
        check_compatible(gas.to_dict(), {**gas.to_dict(), "gas_train_size": 0}, "k", "k", path)


def test_log_loss_reduction_weighs_each_sample_by_its_relative_error(tmp_path, monkeypatch):
    """``loss_reduce="log"``: the batch loss is the mean of ``log(d_i + 1e-6)``, so a sample's gradient is its
    distance's gradient over ``d_i + 1e-6``; the step uses it, the run differs from "mean", and resume checks it."""
    from trainer.losses import LOG_EPS, reduce_distances

    d = torch.tensor([1e-3, 0.5, 2.0], requires_grad=True)
    reduce_distances(d, "log").mean().backward()
    assert torch.allclose(d.grad, 1 / (3 * (d.detach() + LOG_EPS)))
    assert torch.equal(reduce_distances(d, "mean"), d)
    seen: list[str] = []
    real = trainer.steps.reduce_distances
    monkeypatch.setattr(trainer.steps, "reduce_distances",
                        lambda x, how, *rest: (seen.append(how), real(x, how, *rest))[1])
    log = distill(tiny_problem(), tiny_config(tmp_path / "log", iters=3, loss_reduce="log", report=False),
                  progress=False)
    mean = distill(tiny_problem(), tiny_config(tmp_path / "mean", iters=3, report=False), progress=False)
    assert seen == ["log"] * 3 + ["mean"] * 3
    assert not torch.equal(log.solver.a, mean.solver.a)
    assert "mean log(1e-6 + L1 on latents per sample)" in log.solver.metadata["loss"]
    with pytest.raises(ConfigError, match="loss_reduce must be one of mean, log, cauchy"):
        DistillConfig(loss_reduce="median").validate()
    args = cli.build_parser().parse_args(["--ckpt", "x.safetensors", "--loss-reduce", "log"])
    assert cli.config_from_args(args).loss_reduce == "log"


def test_log_loss_resume_is_exact(tmp_path):
    assert_resume_is_exact(tmp_path, 4, iters=10, ckpt_every=100, loss_reduce="log", report=False)


def test_the_bench_keeps_exact_solutions_in_its_cache(tmp_path, monkeypatch):
    """``--exact-cache``: the held-out exact solutions are written once, named by the teacher and the sample count,
    and read back bit for bit instead of being solved again; another count is another file."""
    problem = bench.TEACHERS["tiny"]()
    first = bench.held_out(problem, 8, 16, tmp_path)
    files = list(tmp_path.glob("exact-*-8-*.safetensors"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))
    monkeypatch.setattr(bench, "exact_solution", lambda *a, **k: pytest.fail("solved again"))
    again = bench.held_out(problem, 8, 16, tmp_path)
    assert torch.equal(first.exact, again.exact) and torch.equal(first.noise, again.noise)
    monkeypatch.undo()
    bench.held_out(problem, 4, 16, tmp_path)
    assert len(list(tmp_path.glob("exact-*.safetensors"))) == 2


def test_cauchy_loss_reduction_is_l1_for_typical_samples_and_log_for_outliers(tmp_path):
    """``loss_reduce="cauchy"``: ``c log(1 + d / c)`` with ``c`` = 3 medians of the batch, so a sample's gradient is
    its distance's times ``1 / (1 + d / c)``: near 1 far below the median's scale, near ``c / d`` far above it."""
    from trainer.losses import CAUCHY_K, reduce_distances

    d = torch.tensor([1e-3, 2e-3, 3e-3, 0.5], requires_grad=True)
    reduce_distances(d, "cauchy").sum().backward()
    c = CAUCHY_K * float(d.detach().median())  # torch's median of an even count is the lower middle value
    assert c == pytest.approx(3 * 2e-3)
    assert torch.allclose(d.grad, 1 / (1 + d.detach() / c))
    assert d.grad[3] < 0.02 and d.grad[0] > 0.8
    run = distill(tiny_problem(), tiny_config(tmp_path, iters=3, loss_reduce="cauchy", report=False), progress=False)
    assert "Cauchy-robust L1 on latents" in run.solver.metadata["loss"]
    assert "c = 3 batch medians" in run.solver.metadata["loss"]
    assert math.isfinite(run.scores["methods"][run.label]["l1"])


def test_the_cauchy_scale_sets_how_many_medians_count_as_typical(tmp_path):
    """``cauchy_scale`` k: ``c = k`` medians; a larger k keeps more of L1's weight on the samples above the median,
    and it is a resume key, recorded in the solver's metadata and validated."""
    from trainer.checkpointing import RESUME_KEYS
    from trainer.losses import reduce_distances

    d = torch.tensor([1e-3, 2e-3, 3e-3, 0.5], requires_grad=True)
    reduce_distances(d, "cauchy", medians=10.0).sum().backward()
    assert torch.allclose(d.grad, 1 / (1 + d.detach() / (10 * 2e-3)))
    three = torch.tensor([1e-3, 2e-3, 3e-3, 0.5], requires_grad=True)
    reduce_distances(three, "cauchy").sum().backward()
    assert bool((d.grad[1:] > three.grad[1:]).all())  # every sample above the smallest keeps more weight
    assert "cauchy_scale" in RESUME_KEYS
    with pytest.raises(ConfigError, match="cauchy_scale must be a positive number"):
        DistillConfig(cauchy_scale=0.0).validate()
    args = cli.build_parser().parse_args(["--ckpt", "x.safetensors", "--loss-reduce", "cauchy", "--cauchy-scale", "10"])
    assert cli.config_from_args(args).cauchy_scale == 10.0
    run = distill(tiny_problem(), tiny_config(tmp_path, iters=3, loss_reduce="cauchy", cauchy_scale=10.0,
                                              report=False), progress=False)
    assert "c = 10 batch medians" in run.solver.metadata["loss"]


def test_the_fd_headroom_bench_lowers_its_own_loss_and_matches_the_gas_cost_distance(capsys):
    """``benchmarks.fd_headroom``'s loss, ``gas_cost.frechet_distance_to`` with an eigenvalue floor, equals
    ``gas_cost.frechet_distance`` and has a gradient; the bench trains a GS solver, then steps on that distance, and
    prints held-out rows before and after."""
    from benchmarks import fd_headroom, gas_cost

    g = torch.Generator().manual_seed(0)
    target = gas_cost.pooled_features(torch.randn(256, 2, 8, 8, generator=g))
    a = gas_cost.pooled_features(1.3 * torch.randn(256, 2, 8, 8, generator=g) + 0.1).requires_grad_(True)
    fd = gas_cost.frechet_distance_to(target, eig_floor=1e-12)(a)
    assert float(fd) == pytest.approx(gas_cost.frechet_distance(a.detach(), target), rel=1e-6)
    fd.backward()
    assert a.grad is not None and bool(torch.isfinite(a.grad).all()) and float(a.grad.abs().sum()) > 0
    fd_headroom.main(["--teachers", "tiny", "--seeds", "0", "--iters", "3", "--train-size", "16", "--steps", "2",
                      "--batch", "16", "--every", "1", "--heldout", "16", "--exact-steps", "16"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny | 0 |")]
    assert [row.split("|")[3].strip() for row in rows] == ["0", "1", "2"]
    assert len({row.split("|")[5] for row in rows}) > 1  # the solver changed


@pytest.mark.parametrize("module", ["recipe", "gas_cost", "fd_headroom"])
def test_the_benches_print_their_help(module, capsys):
    """``--help`` lists every option (a ``%`` in a setting's name must not break argparse's formatting)."""
    import importlib

    with pytest.raises(SystemExit) as done:
        importlib.import_module(f"benchmarks.{module}").main(["--help"])
    assert done.value.code == 0
    assert "--exact-cache" in capsys.readouterr().out
