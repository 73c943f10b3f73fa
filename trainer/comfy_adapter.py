"""A checkpoint loaded through ComfyUI's own model loading, as a :class:`~trainer.problem.DistillProblem`.

``build_problem(ckpt, comfyui=...)`` finds ComfyUI (``comfyui``, or the folder two levels above this pack, i.e.
``ComfyUI/`` when the pack sits in ``ComfyUI/custom_nodes/``), imports it with its root first on ``sys.path``
(ComfyUI's ``nodes.py`` must win over this pack's ``nodes/`` package), loads the checkpoint, or a diffusion-model-only
file with its text encoders, with ComfyUI's own loaders (:mod:`trainer.comfy_loading`; family detected by ComfyUI),
encodes the prompts (:mod:`trainer.conditioning`) and returns a differentiable CFG denoiser built from ComfyUI's
sampling functions:

    D(x, s) = sampling_function(model, x, s, uncond, cond, cfg)     (ComfyUI's CFG on denoised outputs)

Discrete-schedule networks see the float timestep of each GAS time through :class:`gas.comfy_bridge
.FloatTimestepOverride` (``decoupled="timestep"`` for eps-prediction, exact; ``"resigma"`` otherwise). Gradients flow:
outside the node graph nothing in this path runs under ``no_grad``/``inference_mode``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gas import comfy_bridge

from .comfy_loading import CLIP_TYPES, apply_shift, load_clip, load_model, load_vae, resolve_file
from .conditioning import GraphConditioning, PromptConditioning
from .config import PACK_ROOT, DistillConfig
from .errors import ProblemError
from .gits import comfyui_gits_sigmas
from .problem import DistillProblem
from .prompts import PromptSet, load_prompts

__all__ = ["FLUX_GUIDANCE", "ModelSource", "build_problem", "comfy_modules", "file_sha256", "find_comfyui",
           "guidance_distilled", "image_size", "import_comfy", "is_video", "latent_shape_of", "problem_from_model",
           "resolve_checkpoint", "video_frames"]

log = logging.getLogger("trainer")

_MARKERS = ("main.py", "nodes.py", "folder_paths.py", "comfy/sd.py")
#: (native width, native height, default cfg) by ComfyUI model_config class name; others: :data:`_OTHER_DEFAULTS`.
_FAMILY_DEFAULTS: dict[str, tuple[int, int, float]] = {
    "SD15": (512, 512, 7.5), "SD20": (768, 768, 7.5), "SD21UnclipL": (768, 768, 7.5),
    "SD21UnclipH": (768, 768, 7.5), "SDXL": (1024, 1024, 7.0), "SDXLRefiner": (1024, 1024, 7.0),
    "SSD1B": (1024, 1024, 7.0), "Segmind_Vega": (1024, 1024, 7.0), "KOALA_700M": (1024, 1024, 7.0),
    "KOALA_1B": (1024, 1024, 7.0), "SD3": (1024, 1024, 5.0), "Flux": (1024, 1024, 1.0),
    "FluxSchnell": (1024, 1024, 1.0), "AuraFlow": (1024, 1024, 3.5), "WAN21_T2V": (832, 480, 6.0),
    "WAN22_T2V": (1280, 704, 5.0),
}
_OTHER_DEFAULTS = (512, 512, 7.5)
#: Guidance-distilled models (Flux dev style) take their guidance as a conditioning value, not through CFG; the
#: value ComfyUI's Flux model uses when the conditioning has none.
FLUX_GUIDANCE = 3.5
#: Video length in frames when ``frames`` is not given (ComfyUI's EmptyHunyuanLatentVideo default).
_DEFAULT_FRAMES = 25
#: (spatial, temporal) compression of video latent formats without a VAE to ask; others: (8, 4).
_VIDEO_COMPRESSION = {"Wan22": (16, 4)}


def guidance_distilled(base: Any) -> bool:
    """Whether ComfyUI model ``base`` takes a guidance value as conditioning (a guidance embedding, Flux dev)."""
    params = getattr(getattr(base, "diffusion_model", None), "params", None)
    return bool(getattr(params, "guidance_embed", False))


def image_size(family: str, width: int | None, height: int | None) -> tuple[int, int]:
    """``(width, height)``: the family's native size where not given; ``height`` defaults to ``width`` when only
    ``width`` is given."""
    native_w, native_h, _ = _FAMILY_DEFAULTS.get(family, _OTHER_DEFAULTS)
    return int(width or native_w), int(height or (width if width else native_h))


def is_video(base: Any) -> bool:
    """Whether ComfyUI model ``base`` makes video: its latent format has 3 latent dimensions (B, C, T, H, W)."""
    return int(getattr(base.latent_format, "latent_dimensions", 2)) == 3


def video_frames(frames: int | None) -> int:
    """A video model's length in frames: ``frames``, or :data:`_DEFAULT_FRAMES` when not given."""
    return int(frames if frames is not None else _DEFAULT_FRAMES)


def latent_shape_of(base: Any, vae: Any | None, width: int, height: int, frames: int | None,
                    family: str) -> tuple[int, ...]:
    """One sample's latent shape: ``(C, H/f, W/f)``, or ``(C, (frames - 1) // ft + 1, H/f, W/f)`` for a video model
    (:func:`is_video`), with ``f``/``ft`` the VAE's spatial/temporal compression."""
    latent_format = base.latent_format
    channels = int(latent_format.latent_channels)
    video = is_video(base)
    spatial, temporal = _VIDEO_COMPRESSION.get(type(latent_format).__name__, (8, 4))
    if vae is not None:
        spatial = int(vae.spacial_compression_encode())
        temporal = int(vae.temporal_compression_decode() or temporal)
    if width % spatial or height % spatial or width <= 0 or height <= 0:
        raise ProblemError(f"`width` and `height` must be positive multiples of {spatial} for this model, got "
                           f"{width}x{height}")
    if not video:
        if frames is not None:
            raise ProblemError(f"`frames` applies to video models only; this {family} model makes images")
        return channels, height // spatial, width // spatial
    frames = video_frames(frames)
    if frames < 1:
        raise ProblemError(f"`frames` must be at least 1, got {frames}")
    return channels, (frames - 1) // temporal + 1, height // spatial, width // spatial


def _is_comfyui(path: Path) -> bool:
    return all((path / marker).is_file() for marker in _MARKERS)


def find_comfyui(comfyui: str | os.PathLike[str] | None) -> Path:
    """ComfyUI's root: the folder ``comfyui``, or (None) the pack's grandparent."""
    if comfyui:
        root = Path(comfyui).expanduser().resolve()
        if not _is_comfyui(root):
            raise ProblemError(f"`comfyui` points to {root}, which is not a ComfyUI folder (no main.py, nodes.py "
                               "and comfy/ there)")
        return root
    guess = PACK_ROOT.parent.parent
    if _is_comfyui(guess):
        return guess
    raise ProblemError("ComfyUI was not found: run the trainer from ComfyUI/custom_nodes/<this pack>, or give the "
                       "ComfyUI folder as `comfyui`")


def import_comfy(root: Path, device: str) -> dict[str, Any]:
    """Import ComfyUI from ``root`` into this process (CPU mode for ``device == "cpu"``); returns its modules."""
    root_str = str(root)
    if root_str in sys.path:
        sys.path.remove(root_str)
    sys.path.insert(0, root_str)
    ours = sys.modules.get("nodes")
    if ours is not None and Path(getattr(ours, "__file__", "") or "").resolve().parent.parent == PACK_ROOT:
        for key in [k for k in sys.modules if k == "nodes" or k.startswith("nodes.")]:
            del sys.modules[key]  # this pack's nodes/ package, imported earlier: ComfyUI's nodes.py must win
    try:
        from comfy.cli_args import args as comfy_args

        if torch.device(device).type == "cpu":
            comfy_args.cpu = True  # before comfy.model_management is imported: no CUDA probing
        return comfy_modules()
    except ImportError as exc:
        raise ProblemError(f"ComfyUI at {root} cannot be imported in this Python environment ({exc}); run the "
                           "trainer with ComfyUI's own Python") from None


def comfy_modules() -> dict[str, Any]:
    """The ComfyUI modules the adapter uses, from the ComfyUI already importable in this process."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sampler_helpers
    import comfy.samplers
    import comfy.sd
    import folder_paths

    return {"sd": comfy.sd, "samplers": comfy.samplers, "sampler_helpers": comfy.sampler_helpers,
            "model_management": comfy.model_management, "model_patcher": comfy.model_patcher,
            "folder_paths": folder_paths}


def resolve_checkpoint(name_or_path: str, folder_paths: Any) -> Path:
    """A checkpoint by path, or by name in ComfyUI's ``models/checkpoints`` (and extra paths)."""
    return resolve_file(name_or_path, folder_paths, "ckpt")


def file_sha256(path: Path, cache_dir: Path | None = None) -> str:
    """sha256 of a file's content, remembered per (path, size, mtime) in ``cache_dir`` (checkpoints are large)."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:32]
    memo = cache_dir / "file-hashes" / f"{key}.txt" if cache_dir is not None else None
    if memo is not None and memo.is_file():
        value = memo.read_text().strip()
        if len(value) == 64:
            return value
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    value = digest.hexdigest()
    if memo is not None:
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_suffix(f".{os.getpid()}.tmp")  # several processes (torchrun ranks) may hash at once
            tmp.write_text(value)
            os.replace(tmp, memo)
        except OSError:
            pass
    return value


def build_problem(ckpt: str | None = None, *, unet: str | None = None, clip: Sequence[str] = (),
                  clip_type: str | None = None, vae: str | None = None,
                  comfyui: str | os.PathLike[str] | None = None, device: str = "cpu",
                  prompts: PromptSet | None = None, negative: str = "", cfg: float | None = None,
                  width: int | None = None, height: int | None = None, frames: int | None = None,
                  guidance: float | None = None, shift: float | str | None = None, dtype: str = "auto",
                  name: str | None = None, cache_dir: str | os.PathLike[str] | None = None) -> DistillProblem:
    """The :class:`DistillProblem` of a model loaded with ComfyUI's own loaders (:mod:`trainer.comfy_loading`) from
    the ComfyUI at ``comfyui`` (None: the folder two levels above this pack) on ``device``.

    The model: ``ckpt``, an all-in-one checkpoint (a path, or a name in ComfyUI's ``models/checkpoints``), or
    ``unet``, a diffusion-model-only file (``models/diffusion_models``); ``clip``: text-encoder files
    (``models/text_encoders``) of ComfyUI type ``clip_type`` (default: the family's), needed with ``unet`` and
    replacing a checkpoint's own; ``vae``: a VAE file for the report's images (default: the checkpoint's).
    ``prompts``: the conditioning (default: the built-in prompts); ``negative``: the negative prompt; ``cfg``,
    ``width``, ``height``: None for the family's defaults; ``frames``: video length in frames (video models only);
    ``guidance``: a guidance-distilled model's guidance value (Flux dev; default 3.5); ``shift``: a flow model's
    time shift (:func:`trainer.comfy_loading.apply_shift`; Flux defaults to its resolution rule); ``dtype``: the
    model's weight dtype, "auto", "fp32", "fp16" or "bf16"; ``name``: the output name (default: the model file's name
    without extension); ``cache_dir``: the teacher cache folder, where file sha256s are remembered. Raises
    :class:`~trainer.errors.ProblemError` (one sentence) for a missing file, a file that is not a model, or a family
    it cannot handle.
    """
    if (ckpt is None) == (unet is None):
        raise ProblemError("give exactly one model file: `ckpt` (a checkpoint) or `unet` (a diffusion model)")
    root = find_comfyui(comfyui)
    comfy = import_comfy(root, device)
    folders = comfy["folder_paths"]
    param, model_name = ("ckpt", ckpt) if ckpt is not None else ("unet", unet)
    path = resolve_file(str(model_name), folders, param)
    clip_paths = [resolve_file(str(name), folders, "clip") for name in clip]
    vae_path = resolve_file(vae, folders, "vae") if vae else None
    log.info("loading %s through ComfyUI at %s", path.name, root)
    patcher, text_encoder, own_vae = load_model(comfy, path, param, dtype)
    family = comfy_bridge.model_identity(patcher, fingerprint=False).get("family") or "unknown"
    if clip_paths:
        text_encoder = load_clip(comfy, clip_paths, clip_type or CLIP_TYPES.get(family, "stable_diffusion"))
    elif clip_type:
        raise ProblemError("`clip_type` needs the text-encoder files it describes: give `clip` too")
    if text_encoder is None:
        raise ProblemError(f"'{path.name}' holds no text encoder; give its text-encoder files as `clip`"
                           + (" (and their type as `clip_type`)" if family not in CLIP_TYPES else ""))
    decoder = load_vae(comfy, vae_path) if vae_path is not None else own_vae
    w, h = image_size(family, width, height)
    patcher, shift_text = apply_shift(patcher, shift, w, h, family)
    _, hashes_dir, _ = DistillConfig(cache_dir=None if cache_dir is None else str(cache_dir)).paths()
    identity: dict[str, Any] = {"file": path.name, "sha256": file_sha256(path, hashes_dir)}
    extra: dict[str, Any] = {"checkpoint": path.name}
    if clip_paths:
        identity["text_encoders"] = [{"file": p.name, "sha256": file_sha256(p, hashes_dir)} for p in clip_paths]
        extra["text_encoders"] = ", ".join(p.name for p in clip_paths)
    if shift is not None or shift_text is not None:
        identity["shift"] = extra["shift"] = shift_text or "the model's own"
    source = ModelSource(label=path.name, identity=identity, comfy_root=root, extra_metadata=extra)
    return problem_from_model(comfy, patcher, text_encoder, decoder, source, prompts=prompts, negative=negative,
                              cfg=cfg, width=w, height=h, frames=frames, guidance=guidance,
                              name=name or Path(str(model_name)).stem)


@dataclass
class ModelSource:
    """Where a loaded model came from, for messages, the teacher cache key and the solver metadata."""

    #: What the model is called in messages and the report: a file name, or e.g. ``the connected model``.
    label: str
    #: Whether ``label`` is a name (quoted in messages).
    is_name: bool = True
    #: Added to the model's identity (e.g. the checkpoint's file name and sha256).
    identity: dict[str, Any] = field(default_factory=dict)
    #: The ComfyUI root (its GITS tables serve the ``ipndm-gits`` teacher); None: search a GITS-style grid.
    comfy_root: Path | None = None
    extra_metadata: dict[str, Any] = field(default_factory=dict)
    #: Extra bytes to reserve beyond the weights when the model is loaded for training (ComfyUI model management).
    memory_required: int = 0

    @property
    def quoted(self) -> str:
        return f"'{self.label}'" if self.is_name else self.label


def problem_from_model(comfy: dict[str, Any], patcher: Any, clip: Any, vae: Any | None, source: ModelSource, *,
                       prompts: PromptSet | None, negative: str, cfg: float | None, width: int | None,
                       height: int | None, name: str, frames: int | None = None, guidance: float | None = None,
                       positive_conditioning: Any = None, negative_conditioning: Any = None) -> DistillProblem:
    """The :class:`DistillProblem` of a ComfyUI model (a ``ModelPatcher`` with whatever patches it carries), its
    conditioning and optional VAE. The conditioning is ``positive_conditioning`` / ``negative_conditioning`` (ComfyUI
    CONDITIONING, :class:`~trainer.conditioning.GraphConditioning`) when given, else ``prompts`` and ``negative``
    encoded by ``clip`` (:class:`~trainer.conditioning.PromptConditioning`). The model is loaded onto ComfyUI's
    torch device with its patches applied (ComfyUI's ``load_models_gpu``), and the identity's weights fingerprint is
    taken from the patched weights."""
    info = comfy_bridge.describe_model_sampling(patcher.get_model_object("model_sampling"))
    family = comfy_bridge.model_identity(patcher, fingerprint=False).get("family") or "unknown"
    if not info.learned_ok:
        raise ProblemError(f"{source.quoted} is a {family} model ({info.description or info.kind}): {info.reason}")
    default_cfg = _FAMILY_DEFAULTS.get(family, _OTHER_DEFAULTS)[2]
    cfg = float(cfg) if cfg is not None else default_cfg
    width, height = image_size(family, width, height)
    base = patcher.model
    latent_shape = latent_shape_of(base, vae, width, height, frames, family)
    takes_guidance = guidance_distilled(base)
    if guidance is not None and not takes_guidance:
        raise ProblemError(f"`guidance` applies to guidance-distilled models (Flux dev style); this {family} model "
                           "is guided by `cfg`")
    defaults = {"guidance": FLUX_GUIDANCE} if takes_guidance else {}
    overrides = {"guidance": float(guidance)} if guidance is not None else {}
    constants = {**defaults, **overrides}
    if positive_conditioning is not None:
        conditioner: Any = GraphConditioning(positive_conditioning, negative_conditioning, defaults, overrides)
    elif clip is None:
        raise ProblemError("no text encoder and no conditioning: connect a CLIP or a positive conditioning")
    else:
        conditioner = PromptConditioning(clip, prompts if prompts is not None else load_prompts(None),
                                         negative or "", constants)

    device = torch.device(comfy["model_management"].get_torch_device())
    base.requires_grad_(False)
    comfy["model_management"].load_models_gpu([patcher], memory_required=source.memory_required,
                                               force_full_load=True)
    patcher.pre_run()  # what CFGGuider.outer_sample does before sampling (sets the model's current patcher)
    identity = comfy_bridge.model_identity(patcher)  # after loading: the weights as patched

    def conditions(indices: list[int]) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in conditioner.conditions(indices).items()}

    schedule = info.schedule
    override = comfy_bridge.FloatTimestepOverride(schedule, label="GAS trainer") if info.float_timesteps else None
    model_options = comfy["model_patcher"].create_model_options_clone(patcher.model_options)
    if override is not None:
        model_options = override.install(model_options)
    samplers, helpers = comfy["samplers"], comfy["sampler_helpers"]
    next_time: list[torch.Tensor] = []  # the GAS time given by the solver's hook for the next call

    def hook(t: torch.Tensor) -> None:
        next_time[:] = [t]

    side_constants = {side: conditioner.constants_of(side) for side in ("positive", "negative")}

    def as_cond(context: torch.Tensor, extras: dict[str, torch.Tensor], side: str) -> list[dict[str, Any]]:
        payload: dict[str, Any] = {k[len("extra_"):]: v for k, v in extras.items()}
        payload.update(side_constants[side])
        return helpers.convert_cond([[context, payload]])

    def guided(x: torch.Tensor, sigma: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        positive = as_cond(cond["context"], {k: v for k, v in cond.items() if k.startswith("extra_")}, "positive")
        negative_c = as_cond(cond["uncond_context"], {k[len("uncond_"):]: v for k, v in cond.items()
                                                      if k.startswith("uncond_extra_")}, "negative")
        conds = samplers.process_conds(base, x, {"positive": positive, "negative": negative_c}, x.device)
        return samplers.sampling_function(base, x, sigma, conds["negative"], conds["positive"], cfg,
                                          model_options=model_options, seed=None)

    def denoiser(x: torch.Tensor, sigma: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        """CFG denoiser; a discrete network sees the float timestep of the hook's time, else of ``sigma``."""
        if override is None:
            return guided(x, sigma, cond)
        t = next_time.pop() if next_time else schedule.time_of_sigma(sigma.detach().to(torch.float64))
        with override.at(t):
            return guided(x, sigma, cond)

    decode = None
    if vae is not None:
        def decode(latents: torch.Tensor) -> torch.Tensor:
            comfy["model_management"].load_models_gpu([vae.patcher])
            z = base.process_latent_out(latents).to(vae.vae_dtype).to(vae.device)
            images = vae.process_output(vae.first_stage_model.decode(z).float())  # [0, 1], differentiable
            return images.to(latents.device) * 2.0 - 1.0

    identity.update(source.identity)
    identity.update({"cfg": cfg, "negative": negative or "", "prompts": conditioner.digest, "width": width,
                     "height": height, "dtype": str(base.get_dtype()).replace("torch.", "")})
    metadata = dict(source.extra_metadata)
    guidance_used = conditioner.constants_of("positive").get("guidance") if takes_guidance else None
    if guidance_used is not None:
        identity["guidance"] = metadata["guidance"] = float(guidance_used)
    size = f"{width}x{height}"
    if len(latent_shape) == 4:
        identity["frames"] = metadata["frames"] = video_frames(frames)
        size += f"x{identity['frames']} frames"
    description = (f"{source.label} ({family}, {info.prediction}-prediction, {schedule.describe()}), {size}, "
                   f"cfg {cfg:g}" + (f", guidance {guidance_used:g}" if guidance_used is not None else "")
                   + f", {conditioner.source}")
    decoupled = comfy_bridge.decoupled_mode(info) if override is not None else "resigma"
    return DistillProblem(
        denoiser=denoiser, schedule=schedule, latent_shape=latent_shape, conditions=conditions, decode=decode,
        decoupled=decoupled, timestep_hook=hook if override is not None else None, device=device,
        dtype=torch.float32, identity=identity, name=name, cfg=cfg, description=description,
        gits_sigmas=_gits_sigmas(family, source.comfy_root) if source.comfy_root is not None else None,
        extra_metadata=metadata,
    )


def _gits_sigmas(family: str, root: Path) -> Callable[[int], list[float]] | None:
    """ComfyUI's published GITS tables (SD1.x discrete schedule only) as the ``ipndm-gits`` teacher's grids."""
    if family != "SD15":
        return None

    def sigmas(steps: int) -> list[float]:
        table = comfyui_gits_sigmas(root, steps)
        if table is None:
            raise ProblemError(f"ComfyUI's GITS table has no {steps}-step schedule")
        return table

    return sigmas


def describe(problem: DistillProblem) -> str:
    """One-line JSON of what was loaded (for logs and tests)."""
    return json.dumps({"latent_shape": list(problem.latent_shape), "identity": problem.identity,
                       "decoupled": problem.decoupled})
