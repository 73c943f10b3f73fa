"""Peer parity with ComfyUI's own ``sample_dpmpp_3m_sde(eta=0)``, which handles flow (CONST) models through the half
log-SNR (PyPI k-diffusion predates that). Runs only with a real ComfyUI (``COMFYUI_PATH``), in a subprocess because
importing ComfyUI changes the interpreter for good."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO_ROOT
from tests.helpers.comfy_env import require_comfyui


def test_matches_comfyui_3m_for_flow_and_eps_models():
    root = require_comfyui()
    script = REPO_ROOT / "tests" / "scripts" / "comfy_3m_parity.py"
    done = subprocess.run([sys.executable, str(script), str(root), str(REPO_ROOT)], capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) == 8
    for case, (err, scale) in results.items():
        assert err < 1e-10, f"{case}: max abs difference {err:.3g} (outputs of size {scale:.3g})"
