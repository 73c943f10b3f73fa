"""Model files loaded with ComfyUI's own loaders, as its loader nodes load them, and the flow shift to train with.

* all-in-one checkpoint (``ckpt``): ``comfy.sd.load_checkpoint_guess_config`` (CheckpointLoaderSimple);
* diffusion-model-only file (``unet``): ``comfy.sd.load_diffusion_model`` (UNETLoader), the usual layout of SD3.5,
  Flux and Wan releases;
* text encoders (``clip``, one or more files): ``comfy.sd.load_clip`` with a ``clip_type`` (CLIPLoader,
  DualCLIPLoader, TripleCLIPLoader); the type defaults to the model family's;
* VAE (``vae``): ``comfy.sd.VAE`` on the file's tensors (VAELoader).

:func:`apply_shift` sets a flow model's time shift with ComfyUI's ModelSamplingSD3 / ModelSamplingFlux nodes. For
Flux, ``"auto"`` is ModelSamplingFlux's resolution rule (``mu`` linear in the number of 2x2 latent patches, 0.5 at
256 and 1.15 at 4096, i.e. 1.15 at 1024x1024), what ComfyUI's Flux workflows apply; a number ``s`` is the shift of
``sigma = s t / (1 + (s - 1) t)`` for every flow model (Flux: ``mu = ln s``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import ProblemError

__all__ = ["CLIP_TYPES", "apply_shift", "load_clip", "load_model", "load_vae", "resolve_file"]

#: ComfyUI's text-encoder type for each model family (CLIPLoader's ``type``); others: "stable_diffusion".
CLIP_TYPES: dict[str, str] = {"SDXL": "sdxl", "SD3": "sd3", "Flux": "flux", "FluxSchnell": "flux", "WAN21_T2V": "wan",
                              "WAN21_I2V": "wan", "WAN22_T2V": "wan", "AuraFlow": "stable_diffusion"}
_FOLDERS = {"ckpt": ("checkpoints", "checkpoint"), "unet": ("diffusion_models", "diffusion model"),
            "clip": ("text_encoders", "text encoder"), "vae": ("vae", "VAE")}
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: ModelSamplingFlux's defaults (ComfyUI): mu at 256 and at 4096 latent patches.
FLUX_BASE_SHIFT, FLUX_MAX_SHIFT = 0.5, 1.15


def resolve_file(name_or_path: str, folder_paths: Any, param: str) -> Path:
    """A model file by path, or by name in ComfyUI's folder for ``param`` (``ckpt``, ``unet``, ``clip``, ``vae``)."""
    candidate = Path(name_or_path).expanduser()
    if candidate.is_file():
        return candidate.resolve()
    folder, what = _FOLDERS[param]
    found = folder_paths.get_full_path(folder, name_or_path)
    if found:
        return Path(found)
    raise ProblemError(f"the {what} '{name_or_path}' (`{param}`) was found neither as a file nor in ComfyUI's "
                       f"models/{folder} folders")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def load_model(comfy: dict[str, Any], path: Path, param: str, dtype: str) -> tuple[Any, Any, Any]:
    """``(ModelPatcher, CLIP or None, VAE or None)`` of a checkpoint (``param`` "ckpt") or a diffusion-model-only
    file ("unet"); one-sentence :class:`ProblemError` for a file ComfyUI cannot load."""
    options: dict[str, Any] = {} if dtype == "auto" else {"dtype": _DTYPES[dtype]}
    try:
        with torch.no_grad():  # some text encoders copy weights in place while loading
            if param == "ckpt":
                model, clip, vae = comfy["sd"].load_checkpoint_guess_config(
                    str(path), output_vae=True, output_clip=True, model_options=options)[:3]
            else:
                model, clip, vae = comfy["sd"].load_diffusion_model(str(path), model_options=options), None, None
    except Exception as exc:  # safetensors/pickle errors, unknown layouts: ComfyUI raises many kinds
        kind = "checkpoint" if param == "ckpt" else "diffusion model"
        raise ProblemError(f"'{path.name}' (`{param}`) is not a {kind} ComfyUI can load ({_first_line(exc)})") \
            from None
    if model is None:
        raise ProblemError(f"'{path.name}' (`{param}`) holds no diffusion model that ComfyUI recognises")
    return model, clip, vae


def load_clip(comfy: dict[str, Any], paths: Sequence[Path], clip_type: str) -> Any:
    """The text encoder of ``paths`` (one to three files) as CLIPLoader/DualCLIPLoader load it."""
    sd = comfy["sd"]
    # "sdxl" is DualCLIPLoader's name for the stable_diffusion type with CLIP-L + CLIP-G
    kind = sd.CLIPType.STABLE_DIFFUSION if clip_type == "sdxl" else getattr(sd.CLIPType, clip_type.upper(), None)
    if kind is None:
        names = ", ".join(["sdxl", *(t.name.lower() for t in sd.CLIPType)])
        raise ProblemError(f"`clip_type` must be one of ComfyUI's text-encoder types ({names}), got '{clip_type}'")
    try:
        with torch.no_grad():
            return sd.load_clip(ckpt_paths=[str(p) for p in paths],
                                embedding_directory=comfy["folder_paths"].get_folder_paths("embeddings"),
                                clip_type=kind)
    except Exception as exc:
        files = ", ".join(f"'{p.name}'" for p in paths)
        detail = "" if isinstance(exc, (AttributeError, KeyError, TypeError)) else f" ({_first_line(exc)})"
        raise ProblemError(f"{files} (`clip`) is not a text encoder ComfyUI can load as type '{clip_type}'"
                           f"{detail}") from None


def load_vae(comfy: dict[str, Any], path: Path) -> Any:
    """The VAE of file ``path`` as VAELoader loads it."""
    import comfy.utils as comfy_utils

    try:
        vae = comfy["sd"].VAE(sd=comfy_utils.load_torch_file(str(path)))
        vae.throw_exception_if_invalid()
    except Exception as exc:
        raise ProblemError(f"'{path.name}' (`vae`) is not a VAE ComfyUI can load ({_first_line(exc)})") from None
    return vae


def apply_shift(patcher: Any, shift: float | str | None, width: int, height: int,
                family: str) -> tuple[Any, str | None]:
    """``(model, what was applied)``: ``patcher`` with the flow time shift ``shift`` (see the module), and None when
    it keeps the model's own shift (``shift`` None, except for Flux, whose default is "auto"; or "auto" on a model
    without a resolution rule). One-sentence error for a model that is not flow."""
    import comfy.model_sampling as cms
    from comfy_extras.nodes_model_advanced import ModelSamplingFlux, ModelSamplingSD3

    ms = patcher.get_model_object("model_sampling")
    flux = isinstance(ms, cms.ModelSamplingFlux)
    discrete_flow = isinstance(ms, cms.ModelSamplingDiscreteFlow)
    if shift is None and not flux:
        return patcher, None
    if not (flux or discrete_flow):
        raise ProblemError(f"`shift` applies to flow-matching models (SD3, Flux, Wan, ...), not to this {family} "
                           "model")
    if isinstance(shift, str) and shift != "auto":
        try:
            shift = float(shift)
        except ValueError:
            raise ProblemError(f"`shift` must be a positive number or 'auto', got '{shift}'") from None
    if isinstance(shift, (int, float)) and not (math.isfinite(shift) and shift > 0):
        raise ProblemError(f"`shift` must be a positive number or 'auto', got {shift!r}")
    if flux:
        if shift is None or shift == "auto":
            model = ModelSamplingFlux().patch(patcher, FLUX_MAX_SHIFT, FLUX_BASE_SHIFT, width, height)[0]
            mu = float(model.get_model_object("model_sampling").shift)
            return model, f"ModelSamplingFlux at {width}x{height} (shift {math.exp(mu):.4g})"
        mu = math.log(float(shift))
        return ModelSamplingFlux().patch(patcher, mu, mu, width, height)[0], f"{float(shift):g}"
    if shift == "auto":
        return patcher, None
    model = ModelSamplingSD3().patch(patcher, float(shift), multiplier=float(ms.multiplier))[0]
    return model, f"{float(shift):g}"

