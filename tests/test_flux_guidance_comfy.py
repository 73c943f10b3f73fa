"""Flux dev in a real ComfyUI: the solver's recorded guidance and shift against the sampled model's.

Needs ``COMFYUI_PATH`` (skipped otherwise). One worker process (tests/helpers/flux_guidance_checks.py) loads the tiny
Flux dev model (808 MB fp16 file written here, about 10 s; three 4-step samples on CPU) and samples with GAS Sigmas +
GAS Sampler through SamplerCustomAdvanced; each test asserts one part of its report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.helpers.comfy_env import require_comfyui
from tests.helpers.paths import REPO_ROOT
from tests.helpers.tiny_families import write_tiny_family

ENV = {"OMP_NUM_THREADS": "2"}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = require_comfyui()
    work = tmp_path_factory.mktemp("flux_guidance")
    flux = write_tiny_family("flux", work)
    out = work / "report.json"
    done = subprocess.run([sys.executable, "-m", "tests.helpers.flux_guidance_checks", str(root), str(flux), str(out)],
                          cwd=REPO_ROOT, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return json.loads(out.read_text())


def test_matching_guidance_and_shift_sample_without_warnings(report: dict[str, Any]) -> None:
    assert report["family_guidance"] == 3.5
    assert report["matched"]["finite"] and report["matched"]["warnings"] == []


def test_other_guidance_warns_like_cfg(report: dict[str, Any]) -> None:
    warnings = report["guidance"]["warnings"]
    assert report["guidance"]["finite"] and len(warnings) == 1, warnings
    assert "trained with guidance 3.5" in warnings[0] and "guidance is 2" in warnings[0]


def test_other_shift_warns_and_samples_on_the_trained_sigmas(report: dict[str, Any]) -> None:
    shift = report["shift"]
    assert abs(report["patched_shift"] - report["model_shift"]) > 0.5  # ModelSamplingFlux at 2048x2048
    assert len(shift["warnings"]) == 1 and "flow shift" in shift["warnings"][0], shift["warnings"]
    assert shift["sigmas"] == report["matched"]["sigmas"]
    assert shift["max_diff_vs_matched"] <= 1e-5 * shift["scale"]
