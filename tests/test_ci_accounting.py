"""The real-ComfyUI accounting (tests/helpers/comfy_accounting.py) counts the right tests and, under
GAS_REQUIRE_COMFYUI=1, fails a run in which one of them skipped. Each case runs pytest in a subprocess on a small
test file, with a fake ComfyUI checkout (the marker files only) standing in for a real one."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

SAMPLE_TESTS = textwrap.dedent(
    """
    import pytest
    from tests.helpers.comfy_env import require_comfyui

    @pytest.fixture(scope="module")
    def comfy_root():
        return require_comfyui()

    def test_uses_the_fixture(comfy_root):
        assert comfy_root.is_dir()

    def test_uses_the_fixture_too(comfy_root):
        assert comfy_root.is_dir()

    def test_calls_it_directly():
        assert require_comfyui().is_dir()

    def test_needs_no_comfyui():
        assert True
    """
)


def fake_comfyui(root: Path) -> Path:
    for marker in ("main.py", "nodes.py", "folder_paths.py", "comfy/sd.py"):
        (root / marker).parent.mkdir(parents=True, exist_ok=True)
        (root / marker).write_text("")
    return root


def run_sample(tmp_path: Path, env: dict[str, str], tests: str = SAMPLE_TESTS) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(tests)
    base = {k: v for k, v in os.environ.items() if k not in ("COMFYUI_PATH", "GAS_REQUIRE_COMFYUI")}
    base.update({"PYTHONPATH": str(REPO_ROOT), "PYTHONDONTWRITEBYTECODE": "1", **env})
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.helpers.comfy_accounting", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "test_sample.py"],
        cwd=tmp_path, env=base, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("required", ["", "1"])
def test_with_comfyui_three_tests_count_and_the_run_passes(tmp_path, required):
    comfy = fake_comfyui(tmp_path / "ComfyUI")
    done = run_sample(tmp_path, {"COMFYUI_PATH": str(comfy), "GAS_REQUIRE_COMFYUI": required})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "real-ComfyUI tests" in done.stdout and "3 ran (3 passed, 0 failed), 0 skipped" in done.stdout


def test_without_comfyui_they_skip_and_the_run_passes(tmp_path):
    done = run_sample(tmp_path, {})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 ran (0 passed, 0 failed), 3 skipped" in done.stdout


def test_required_but_skipped_fails_the_run_and_names_the_tests(tmp_path):
    done = run_sample(tmp_path, {"GAS_REQUIRE_COMFYUI": "1"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "test_sample.py::test_uses_the_fixture_too: skipped (COMFYUI_PATH not set" in done.stdout
    assert "test_sample.py::test_calls_it_directly: skipped" in done.stdout
    assert "test_needs_no_comfyui: skipped" not in done.stdout


def test_required_and_a_real_comfyui_test_skips_for_another_reason(tmp_path):
    """E.g. a browser test that found ComfyUI but no browser: in CI that is a failure too."""
    tests = SAMPLE_TESTS + textwrap.dedent(
        """
        def test_needs_a_browser_too(comfy_root):
            pytest.skip("chromium not found")
        """
    )
    comfy = fake_comfyui(tmp_path / "ComfyUI")
    done = run_sample(tmp_path, {"COMFYUI_PATH": str(comfy), "GAS_REQUIRE_COMFYUI": "1"}, tests)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "3 ran (3 passed, 0 failed), 1 skipped" in done.stdout
    assert "test_needs_a_browser_too: skipped (chromium not found)" in done.stdout


def test_required_and_no_comfyui_test_at_all_fails_the_run(tmp_path):
    done = run_sample(tmp_path, {"GAS_REQUIRE_COMFYUI": "1"}, "def test_plain():\n    assert True\n")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "no real-ComfyUI test ran" in done.stdout
