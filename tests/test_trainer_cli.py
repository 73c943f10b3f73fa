"""``python -m trainer``: every option documented, bad input answered with one sentence, the demo end to end."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.error

import pytest

import gas
from tests.conftest import REPO_ROOT
from trainer import cli
from trainer.config import DistillConfig

TINY = ["--train-size", "16", "--val-size", "16", "--iters", "3", "--teacher-steps", "8", "--teacher-batch", "16",
        "--quiet"]


def _run(capsys, argv):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_sentence(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    required = ["--ckpt", "--comfyui", "--nfe", "--mode", "--prompts", "--negative", "--cfg", "--width", "--height",
                "--seed", "--train-size", "--val-size", "--batch", "--iters", "--lr", "--disc-lr", "--disc-weight",
                "--r1-gamma", "--ema", "--grad-clip", "--loss", "--teacher", "--teacher-steps", "--cache-dir", "--out",
                "--name", "--overwrite", "--resume", "--ckpt-every", "--eval-every", "--no-grad-checkpoint",
                "--device", "--dtype", "--amp", "--tensorboard", "--csv", "--demo"]
    for option in required:
        assert re.search(rf"^\s+{re.escape(option)}\b", text, flags=re.M), option
    for action in cli.build_parser()._actions:
        if action.option_strings and action.default not in (None, False) and action.dest != "help":
            assert action.help and "default" in cli._HelpFormatter("x")._get_help_string(action), action.dest


def test_cli_builds_the_default_recipe_by_default_and_the_paper_recipe_when_asked():
    from trainer.config import DEFAULT_RECIPE, RECIPES

    assert DEFAULT_RECIPE == "tuned"
    for recipe, argv in ((DEFAULT_RECIPE, []), ("paper", ["--recipe", "paper"])):
        cfg = cli.config_from_args(cli.build_parser().parse_args(["--ckpt", "x.safetensors", *argv]))
        ref = DistillConfig.from_recipe(recipe)
        for key in ("nfe", "mode", "disc_lr", "r1_gamma", "grad_clip", "batch", "iters", "train_size", "val_size",
                    "seed", "loss", "teacher", "disc_preset", *RECIPES[recipe]):
            assert getattr(cfg, key) == getattr(ref, key), (recipe, key)
    paper = cli.config_from_args(cli.build_parser().parse_args(["--ckpt", "x.safetensors", "--recipe", "paper"]))
    assert (paper.lr, paper.disc_lr, paper.r1_gamma, paper.ema, paper.batch, paper.iters) == (1e-3, 1e-5, 0.2, 0.999,
                                                                                           4, 2000)


@pytest.mark.parametrize("nfe", ["0", "17", "-3"])
def test_nfe_out_of_range(capsys, tmp_path, nfe):
    code, _, err = _run(capsys, ["--demo", "--nfe", nfe, "--out", str(tmp_path)])
    assert code == 2 and "--nfe must be an integer from 1 to 16" in _one_sentence(err)


def test_neither_ckpt_nor_demo(capsys):
    code, _, err = _run(capsys, [])
    assert code == 2 and "--ckpt" in err and "--demo" in err


def test_unwritable_output_folder(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, _, err = _run(capsys, ["--demo", "--out", str(blocker / "solvers")])
    assert code == 2 and "output folder" in _one_sentence(err)


def test_lpips_weights_unavailable_offline(capsys, tmp_path, monkeypatch):
    pytest.importorskip("lpips")
    import torchvision.models._api as tv_api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    code, _, err = _run(capsys, ["--demo", "--mode", "gs", "--loss", "lpips", "--out", str(tmp_path / "o"),
                                 "--cache-dir", str(tmp_path / "c"), "--run-dir", str(tmp_path / "r"), *TINY])
    line = _one_sentence(err)
    assert code == 2 and "LPIPS" in line and "VGG16" in line and "--loss l1" in line


def test_ckpt_when_comfyui_is_not_there(capsys, tmp_path):
    """Without a usable ComfyUI (or without the adapter module) --ckpt fails with one sentence, before any work."""
    not_comfy = tmp_path / "not_comfyui"
    not_comfy.mkdir()
    code, _, err = _run(capsys, ["--ckpt", str(tmp_path / "missing.safetensors"), "--comfyui", str(not_comfy),
                                 "--out", str(tmp_path / "o")])
    assert code == 2
    line = _one_sentence(err)
    assert "ComfyUI" in line or "adapter" in line


def test_bad_prompts_file(capsys, tmp_path):
    empty = tmp_path / "prompts.txt"
    empty.write_text("# only a comment\n\n")
    code, _, err = _run(capsys, ["--ckpt", "x.safetensors", "--prompts", str(empty), "--out", str(tmp_path / "o")])
    assert code == 2 and "holds no prompts" in _one_sentence(err)


def test_demo_via_the_cli_in_a_subprocess(tmp_path):
    """The README's first command, with tiny sizes: both modes, the table, solver files, report and grid."""
    cmd = [sys.executable, "-m", "trainer", "--demo", "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"),
           "--run-dir", str(tmp_path / "r"), *TINY]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| GS | 4 |" in done.stdout and "| GAS | 4 |" in done.stdout and "DPM-Solver++(3M)" in done.stdout
    for mode in ("gs", "gas"):
        meta = gas.load_solver(tmp_path / "o" / f"demo-nfe4-{mode}.safetensors").metadata
        assert meta["mode"] == mode and meta["model"]["family"] == "demo-gmm"
        assert (tmp_path / "o" / f"demo-nfe4-{mode}.md").is_file()
    assert (tmp_path / "o" / "demo-nfe4.md").is_file() and (tmp_path / "o" / "demo-nfe4.png").is_file()
    # the same command again refuses to overwrite; with --overwrite it reuses the teacher cache
    again = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_demo_resume_reuses_a_finished_mode_and_resumes_the_other(tmp_path, capsys):
    from trainer.demo import make_demo_problem, run_demo
    from trainer.distill import distill

    cfg = DistillConfig(iters=4, train_size=16, val_size=16, teacher_steps=8, teacher_batch=16, ckpt_every=1,
                        disc_preset="small", name="demo", out_dir=str(tmp_path / "o"), cache_dir=str(tmp_path / "c"),
                        run_dir=str(tmp_path / "r"), grid_samples=2)
    run_demo(cfg, ["gs"], progress=False)

    def crash(step, stats):
        if step == 2:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        distill(make_demo_problem(), DistillConfig(**{**cfg.to_dict(), "mode": "gas"}), progress=False,
                callback=crash)
    before = (tmp_path / "o" / "demo-nfe4-gs.safetensors").read_bytes()
    cfg.resume = True
    out = run_demo(cfg, ["gs", "gas"], progress=False)
    assert (tmp_path / "o" / "demo-nfe4-gs.safetensors").read_bytes() == before  # not retrained
    assert set(out["methods"]) >= {"GS", "GAS", "DPM-Solver++(3M)"}
    assert gas.load_solver(tmp_path / "o" / "demo-nfe4-gas.safetensors").metadata["iterations"] == 4
    assert "| GAS | 4 |" in capsys.readouterr().out


def test_tensorboard_without_the_package_is_one_sentence(capsys, tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorboard is installed")
    code, _, err = _run(capsys, ["--demo", "--mode", "gs", "--tensorboard", "--out", str(tmp_path / "o"),
                                 "--cache-dir", str(tmp_path / "c"), "--run-dir", str(tmp_path / "r"), *TINY])
    assert code == 2 and "tensorboard" in _one_sentence(err)


def test_library_messages_name_parameters_and_the_cli_names_its_options(capsys, tmp_path):
    """The same error: ``nfe`` from the Python API, ``--nfe`` from the command line; a parameter word that is also
    prose (``tensorboard``, the package) is left alone."""
    from trainer.errors import ConfigError, TrainerError

    with pytest.raises(ConfigError) as info:
        DistillConfig(nfe=0).validate()
    assert str(info.value).startswith("nfe must be an integer") and info.value.parameters == ("nfe",)
    assert info.value.naming(cli.option_names()).startswith("--nfe must be an integer")
    error = TrainerError("`tensorboard` needs the tensorboard package; `disc_preset` and `out_dir` are fine")
    assert error.naming(cli.option_names()) == ("--tensorboard needs the tensorboard package; --disc-size and --out "
                                                "are fine")
    assert str(error) == "tensorboard needs the tensorboard package; disc_preset and out_dir are fine"
    # the output check of the library, through the CLI
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "demo-nfe4-gs.safetensors").write_bytes(b"x")
    code, _, err = _run(capsys, ["--demo", "--mode", "gs", "--out", str(tmp_path / "o"), *TINY])
    assert code == 2 and "pass --overwrite to replace it, or --name to pick" in _one_sentence(err)


def test_only_the_cli_knows_option_names():
    """No library module of the trainer writes a command-line option in its code (docstrings may mention them)."""
    import ast

    offenders = []
    for path in sorted((REPO_ROOT / "trainer").glob("*.py")):
        if path.name in ("cli.py", "__main__.py"):
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                offenders += [f"{path.name}:{node.lineno}: {m}" for m in re.findall(r"--[a-z][a-z-]+", node.value)]
    assert not offenders, offenders
