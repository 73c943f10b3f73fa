"""ComfyUI-GAS: Generalized Adversarial Solver nodes for ComfyUI (entry point ComfyUI imports; V3 nodes only).

ComfyUI imports this folder as a package named after it, so everything below is a relative import. The node modules
(which need ``comfy_api``) are imported when ComfyUI calls :func:`comfy_entrypoint`, so this file imports cleanly
anywhere (test runners, the trainer, an IDE).
"""

#: Served at /extensions/<pack folder>/: the node help pages in docs/<NodeId>.md.
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    """ComfyUI's V3 entry point: the extension that lists this pack's nodes."""
    from .nodes.extension import comfy_entrypoint as entrypoint

    return await entrypoint()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
