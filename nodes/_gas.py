"""The GAS core as seen from the node modules.

Inside ComfyUI the pack is a package named after its folder, so the core is the sibling package ``<pack>.gas``. In the
ComfyUI-free tests the repository root is on ``sys.path`` and ``nodes`` is a top-level package, so the core is the
top-level ``gas``. Only the second case has no parent package.
"""

from __future__ import annotations

if "." in (__package__ or ""):
    from .. import gas as core
    from ..gas import comfy_bridge
else:  # imported as top-level ``nodes`` (tests without ComfyUI)
    import gas as core
    from gas import comfy_bridge

__all__ = ["comfy_bridge", "core"]
