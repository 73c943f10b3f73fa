"""ComfyUI imported in process writes nothing into its own folder (CI has it read-only): SaveImage's output, the temp
and user folders go to a throw-away folder, and no ``__pycache__`` is written. Needs ``COMFYUI_PATH``; runs in a
subprocess because importing ComfyUI changes the interpreter for good."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import REPO_ROOT
from tests.helpers.comfy_env import require_comfyui

SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from tests.helpers.comfy_env import import_comfy_in_process

    comfy = import_comfy_in_process(sys.argv[1], cpu=True)
    fp = comfy.folder_paths
    saved = comfy.nodes.SaveImage().save_images(torch.zeros(1, 8, 8, 3), filename_prefix="gas_readonly")
    item = saved["ui"]["images"][0]
    print(json.dumps({
        "dirs": [fp.get_output_directory(), fp.get_temp_directory(), fp.get_user_directory()],
        "saved": str(__import__("pathlib").Path(fp.get_output_directory(), item["subfolder"], item["filename"])),
        "no_bytecode": sys.dont_write_bytecode,
    }))
    """
)


def test_in_process_comfyui_writes_outside_its_folder() -> None:
    root = require_comfyui()
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(root)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for folder in [*report["dirs"], report["saved"]]:
        assert not Path(folder).resolve().is_relative_to(root), f"{folder} is inside ComfyUI's folder {root}"
    assert not Path(report["saved"]).exists(), "the throw-away folder should be gone once the process exited"
    assert report["no_bytecode"]
