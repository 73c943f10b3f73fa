"""A model from inside a ComfyUI graph as a :class:`~trainer.problem.DistillProblem` (the GAS Train Solver node).

The graph hands over a ``MODEL`` (a ``ModelPatcher`` carrying whatever LoRAs, patches and ModelSampling changes the
graph applied), a ``CLIP`` or a CONDITIONING, and optionally a ``VAE``; :func:`graph_problem` builds the same CFG
denoiser, conditioning and decoder as the CLI's checkpoint adapter (:func:`trainer.comfy_adapter.problem_from_model`),
so a solver trained in the graph is trained exactly as ``python -m trainer`` would train it on that model.

Gradients inside the graph: ComfyUI runs every graph under ``torch.inference_mode()`` and its loaders create the
weights there, so they are *inference tensors*, which autograd refuses to save for a backward pass even inside
``torch.inference_mode(False)``. The solver's gradient flows through the model's *input* only (the weights stay
frozen), but a convolution's backward still needs its weight. :func:`own_inference_tensors` therefore replaces each
inference parameter and buffer of the model by an ordinary tensor with the same values, one tensor at a time, so the
extra memory is one tensor at most and none afterwards (the replaced tensor is freed unless ComfyUI holds it as a
patch backup, which it does only for the unpatched originals of patched weights). The values, and so every other
node's results, do not change. Call everything here, and the training, inside ``torch.inference_mode(False)``.

:func:`model_lineage` reads the prompt (API-format graph) upstream of the node's ``model`` input: the checkpoint
loader it comes from and the patches on the way (LoRA names and strengths), recorded in the solver's metadata.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gas import comfy_bridge

from .comfy_adapter import ModelSource, comfy_modules, file_sha256, latent_shape_of, problem_from_model
from .problem import DistillProblem, ProblemError
from .prompts import PromptSet

__all__ = ["Lineage", "graph_problem", "model_lineage", "own_inference_tensors"]

log = logging.getLogger("trainer")

#: Loader node types and (input holding the file name, folder_paths folder).
_LOADERS: dict[str, tuple[str, str]] = {
    "CheckpointLoaderSimple": ("ckpt_name", "checkpoints"),
    "CheckpointLoader": ("ckpt_name", "checkpoints"),
    "ImageOnlyCheckpointLoader": ("ckpt_name", "checkpoints"),
    "unCLIPCheckpointLoader": ("ckpt_name", "checkpoints"),
    "UNETLoader": ("unet_name", "diffusion_models"),
}
#: Inputs worth recording for patch nodes on the way (LoRA loaders and the like).
_PATCH_FIELDS = ("lora_name", "strength_model", "shift", "multiplier", "sampling", "zsnr")


@dataclass
class Lineage:
    """Where a graph's MODEL comes from: the loader's file (None when not found) and the patch nodes on the way."""

    loader: str | None = None
    file: str | None = None
    folder: str | None = None
    patches: list[dict[str, Any]] = field(default_factory=list)


def _link(value: Any) -> tuple[str, int] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[1], int):
        return str(value[0]), int(value[1])
    return None


def model_lineage(prompt: Mapping[str, Any] | None, node_id: str | None, input_name: str = "model") -> Lineage:
    """Follow ``input_name`` of node ``node_id`` upstream through each node's ``model`` input to a loader."""
    out = Lineage()
    if not prompt or node_id is None or str(node_id) not in prompt:
        return out
    link = _link(prompt[str(node_id)].get("inputs", {}).get(input_name))
    seen: set[str] = set()
    while link is not None and link[0] in prompt and link[0] not in seen:
        seen.add(link[0])
        node = prompt[link[0]]
        kind, inputs = str(node.get("class_type")), node.get("inputs", {})
        if kind in _LOADERS:
            key, folder = _LOADERS[kind]
            name = inputs.get(key)
            out.loader, out.folder = kind, folder
            out.file = name if isinstance(name, str) else None
            break
        patch = {"node": kind, **{k: inputs[k] for k in _PATCH_FIELDS if k in inputs and _link(inputs[k]) is None}}
        out.patches.insert(0, patch)
        link = _link(inputs.get("model"))
    return out


def own_inference_tensors(module: torch.nn.Module) -> int:
    """Replace every inference-mode parameter and buffer of ``module`` by an ordinary tensor with the same values
    (see the module docstring); returns the number of bytes replaced. Must run outside inference mode."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError("own_inference_tensors must run inside torch.inference_mode(False)")
    replaced = 0
    with torch.no_grad():
        for sub in module.modules():
            for name, value in list(sub._parameters.items()):
                if value is not None and value.is_inference():
                    sub._parameters[name] = torch.nn.Parameter(value.clone(), requires_grad=False)
                    replaced += value.numel() * value.element_size()
            for name, value in list(sub._buffers.items()):
                if value is not None and value.is_inference():
                    sub._buffers[name] = value.clone()
                    replaced += value.numel() * value.element_size()
    return replaced


def _training_memory(patcher: Any, latent_shape: tuple[int, ...], batch: int) -> int:
    """Bytes to keep free beyond the weights: ComfyUI's own estimate for a CFG batch, times 3 for the backward."""
    try:
        return int(3 * patcher.model.memory_required([2 * batch, *latent_shape]))
    except Exception:  # models without an estimate
        return 0


def graph_problem(model: Any, clip: Any, vae: Any | None, *, prompts: PromptSet, negative: str, cfg: float | None,
                  width: int, height: int, name: str, batch: int, lineage: Lineage | None = None,
                  cache_dir: Path | None = None, frames: int | None = None, guidance: float | None = None,
                  positive_conditioning: Any = None, negative_conditioning: Any = None) -> DistillProblem:
    """The :class:`DistillProblem` of a graph's MODEL (patches included), conditioned by ``positive_conditioning``
    (and ``negative_conditioning``) when connected, else by ``prompts`` encoded with ``clip``; ``vae`` decodes the
    report's images; ``frames``: video length (video models); ``guidance``: a guidance-distilled model's value
    unless the conditioning carries one. Raises :class:`~trainer.problem.ProblemError` (one sentence) on a missing
    CLIP and conditioning, a VAE whose latents do not fit the model, or a model family without GAS support."""
    if model is None or not hasattr(model, "get_model_object"):
        raise ProblemError("the model input is not a ComfyUI MODEL")
    if clip is None and positive_conditioning is None:
        raise ProblemError("no CLIP and no conditioning is connected (the model's checkpoint may have no text "
                           "encoder); connect the CLIP that encodes prompts for this model, or a positive "
                           "conditioning")
    channels = int(model.model.latent_format.latent_channels)
    if vae is not None and getattr(vae, "latent_channels", channels) != channels:
        raise ProblemError(f"the VAE works on {vae.latent_channels}-channel latents but the model on {channels}-"
                           "channel latents; connect the VAE that belongs to the model (or none)")
    comfy = comfy_modules()
    lineage = lineage or Lineage()
    identity: dict[str, Any] = {}
    extra: dict[str, Any] = {"trained_in": "ComfyUI graph (GAS Train Solver)"}
    if lineage.file:
        identity["file"] = lineage.file
        extra["checkpoint"] = lineage.file
        path = comfy["folder_paths"].get_full_path(lineage.folder or "checkpoints", lineage.file)
        if path:
            identity["sha256"] = file_sha256(Path(path), cache_dir)
    if lineage.patches:
        identity["patches"] = lineage.patches
    family = comfy_bridge.model_identity(model, fingerprint=False).get("family") or "unknown"
    latent = latent_shape_of(model.model, vae, width, height, frames, family)
    root = Path(comfy["folder_paths"].__file__).resolve().parent  # ComfyUI's GITS tables for the ipndm-gits teacher
    source = ModelSource(label="the connected model", is_name=False, identity=identity, comfy_root=root,
                         extra_metadata=extra, memory_required=_training_memory(model, latent, batch))
    problem = problem_from_model(comfy, model, clip, vae, source, prompts=prompts, negative=negative, cfg=cfg,
                                 width=width, height=height, name=name, frames=frames, guidance=guidance,
                                 positive_conditioning=positive_conditioning,
                                 negative_conditioning=negative_conditioning)
    replaced = own_inference_tensors(model.model)
    if replaced:
        log.info("made %.1f MB of the model's inference-mode weights trainable-through (same values)",
                 replaced / 2**20)
    return problem
