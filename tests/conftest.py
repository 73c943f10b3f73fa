"""Shared fixtures: where the golden files live (``../shared/golden`` beside the checkout, or ``GAS_GOLDEN_DIR``).

The hooks of tests/helpers/comfy_accounting.py count the real-ComfyUI tests (and fail a run where they had to run
but skipped: ``GAS_REQUIRE_COMFYUI=1``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.comfy_accounting import (  # noqa: F401  (hooks, registered by being names of this conftest)
    pytest_fixture_setup,
    pytest_runtest_logreport,
    pytest_runtest_protocol,
    pytest_sessionfinish,
    pytest_terminal_summary,
)
from tests.helpers.paths import REPO_ROOT


def golden_dir() -> Path | None:
    env = os.environ.get("GAS_GOLDEN_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "golden")
    for path in candidates:
        if path.is_dir() and any(path.glob("*.safetensors")):
            return path
    return None


@pytest.fixture(scope="session")
def golden() -> Path:
    path = golden_dir()
    if path is None:
        pytest.skip("golden files not found (expected ../shared/golden beside the checkout, or set GAS_GOLDEN_DIR)")
    return path
