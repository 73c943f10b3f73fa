"""Atomic file writes: the content goes to a temporary file in the target's folder, which is then renamed over the
target, so a reader (or a crash) sees the old file or the new one, never a partial one. The new file gets the
permissions a plain ``open(path, "w")`` would give (``0o666`` less the umask), not ``mkstemp``'s owner-only ones, so a
solver written by the trainer can be read by a ComfyUI running as another user."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["write_atomically"]


def _default_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomically(path: str | os.PathLike[str], write: Callable[[str], object], *, suffix: str = ".tmp") -> Path:
    """Call ``write(tmp)`` to fill a temporary file beside ``path``, then rename it to ``path``; returns ``path``.

    The folder is created if needed. If ``write`` raises, the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
