"""Where the checkout is: the one definition every test and helper imports (``tests/conftest.py`` re-exports it)."""

from __future__ import annotations

from pathlib import Path

#: The repository root (the folder a user clones into ``ComfyUI/custom_nodes/``).
REPO_ROOT = Path(__file__).resolve().parents[2]
