"""The README tells the truth: its commands are CI's, its Python snippet runs, and no file names this machine."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def test_readme_starts_with_exactly_two_commands_and_ci_runs_the_second():
    head = README.split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", head, flags=re.S)
    assert len(blocks) == 2
    assert all(len(b.strip().splitlines()) == 1 for b in blocks)
    assert "python -m trainer --demo" in blocks[0]
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert blocks[1].strip() in ci.splitlines()


def test_readme_python_snippet_runs(tmp_path):
    snippet = re.findall(r"```python\n(.*?)```", README, flags=re.S)[0]
    env_path = str(REPO_ROOT)
    done = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "sd15-nfe4.safetensors").is_file()


def test_trainer_readme_python_snippet_runs(tmp_path):
    text = (REPO_ROOT / "trainer" / "README.md").read_text()
    snippet = re.findall(r"```python\n(.*?)```", text, flags=re.S)[0]
    done = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'GS'" in done.stdout and (tmp_path / "solvers" / "my-model-nfe4-gs.safetensors").is_file()


def test_no_machine_paths_in_tracked_files():
    files = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.split()
    # the folder this checkout lives in, and the places a developer's tools keep things
    needles = [f"{REPO_ROOT.parent}/", "." + "mirror/", "/tmp/" + "venv", "/" + "root/"]
    offenders = []
    for name in files:
        path = REPO_ROOT / name
        if path.suffix in {".safetensors", ".jpg", ".png", ".pt"} or not path.is_file():
            continue
        text = path.read_text(errors="ignore")
        offenders += [f"{name}: {n}" for n in needles if n in text]
    assert not offenders, offenders
