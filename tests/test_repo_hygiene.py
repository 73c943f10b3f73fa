"""The README tells the truth: its commands are CI's, its Python snippet runs, and no file names this machine."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

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
    # the test command is the test script, and CI runs that same script
    assert blocks[1].strip() == "bash .ci/test"
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert blocks[1].strip() in ci.splitlines()


def test_test_script_installs_what_the_demo_command_installs():
    """The demo command and the test script install the same torch pair, the test script adds the test extra."""
    demo = bash_blocks()[0]
    script = (REPO_ROOT / ".ci" / "test").read_text()
    torch_pair = re.search(r"pip install (torch==\S+ torchvision==\S+)", demo).group(1)
    assert f".venv/bin/pip install {torch_pair}\n" in script
    assert '.venv/bin/pip install -e ".[train,test]"\n' in script
    assert ".venv/bin/python -m ruff check .\n" in script and ".venv/bin/python -m pytest -q" in script


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


# Folders that hold many unrelated things: a checkout directly inside one of them says nothing about the machine.
_SHARED_PARENTS = {Path("/"), Path("/tmp"), Path("/var/tmp"), Path(tempfile.gettempdir()).resolve()}
_BINARY_SUFFIXES = {".safetensors", ".jpg", ".png", ".pt", ".webp", ".gif", ".ico"}


def machine_path_needles(repo_root: Path) -> list[str]:
    """Text that names this machine rather than the project: the checkout's own absolute path, the folder it lives in
    (unless that is a shared one such as /tmp), and the places the developer's tools keep things."""
    needles = [f"{repo_root}/"]
    if repo_root.parent not in _SHARED_PARENTS:
        needles.append(f"{repo_root.parent}/")
    # split so that this file does not name them itself
    needles += ["." + "mirror/", "/tmp/" + "venv", "/" + "root/", "/" + "work/"]
    return needles


def _needle_pattern(needle: str) -> re.Pattern[str]:
    """An absolute path counts only where a path starts (``/x/`` inside ``custom_nodes/x/`` is not ``/x/``)."""
    return re.compile((r"(?<![\w.~/-])" if needle.startswith("/") else "") + re.escape(needle))


def machine_path_offenders(repo_root: Path, names: list[str], needles: list[str]) -> list[str]:
    """``"name: needle"`` for every text file among ``names`` (relative to ``repo_root``) that contains a needle."""
    patterns = {n: _needle_pattern(n) for n in needles}
    offenders = []
    for name in names:
        path = repo_root / name
        if path.suffix in _BINARY_SUFFIXES or not path.is_file():
            continue
        text = path.read_text(errors="ignore")
        offenders += [f"{name}: {n}" for n, pattern in patterns.items() if pattern.search(text)]
    return offenders


def test_no_machine_paths_in_tracked_files():
    files = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    offenders = machine_path_offenders(REPO_ROOT, files.splitlines(), machine_path_needles(REPO_ROOT))
    assert not offenders, offenders


def test_machine_path_check_finds_machine_paths_and_passes_generic_ones(tmp_path):
    checkout = tmp_path / "clone of ComfyUI-GAS"
    checkout.mkdir()
    named = {
        "own_path.md": f"see {checkout}/models/x",
        "sibling.md": f"ComfyUI in {tmp_path}/shared/comfyui",
        "mirror.py": "path = '~/." + "mirror/owner+name'",
        "venv.txt": "/tmp/" + "venv/bin/python",
        "home.md": "/" + "root/.cache",
        "work.md": "/" + "work/shared/golden",
    }
    generic = {"generic.md": "writes to /tmp/ and /usr/bin/python3; clone into ComfyUI/custom_nodes/ComfyUI-GAS"}
    for name, text in {**named, **generic}.items():
        (checkout / name).write_text(text)
    (checkout / "image.png").write_bytes(f"{checkout}/".encode())  # binary files are not read
    found = machine_path_offenders(checkout, [*named, *generic, "image.png"], machine_path_needles(checkout))
    assert {f.split(":")[0] for f in found} == set(named)


def test_machine_path_needles_for_clones_in_shared_folders(tmp_path):
    # paths built from parts: this file must not name a folder that someone may clone into
    in_tmp = Path("/tmp") / "x y"
    assert machine_path_needles(in_tmp)[0] == f"{in_tmp}/"
    assert "/tmp/" not in machine_path_needles(Path("/tmp") / "a.b")
    assert f"{Path('/srv') / 'build'}/" in machine_path_needles(Path("/srv") / "build" / "ComfyUI-GAS")
    # a clone at the file system's root: the README's ComfyUI/custom_nodes/ComfyUI-GAS/ is no machine path
    at_root = machine_path_needles(Path("/") / "ComfyUI-GAS")
    (tmp_path / "readme.md").write_text("ComfyUI/custom_nodes/ComfyUI-GAS/models/gas_solvers/")
    (tmp_path / "notes.md").write_text(f"cd {Path('/') / 'ComfyUI-GAS'}/models")
    assert machine_path_offenders(tmp_path, ["readme.md", "notes.md"], at_root) == [f"notes.md: {at_root[0]}"]
