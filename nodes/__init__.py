"""ComfyUI glue of the pack (V3 nodes). ComfyUI-free logic lives in :mod:`logic`; the nodes and the extension in the
other modules, which import ComfyUI. Nothing is imported here, so ``nodes.logic`` loads without ComfyUI."""
