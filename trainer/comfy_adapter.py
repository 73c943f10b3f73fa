"""A checkpoint loaded through ComfyUI's own model loading, as a :class:`~trainer.problem.DistillProblem`.

``build_problem(ckpt, comfyui=...)`` finds ComfyUI (``comfyui``, or the folder two levels above this pack, i.e.
``ComfyUI/`` when the pack sits in ``ComfyUI/custom_nodes/``), imports it with its root first on ``sys.path``
(ComfyUI's ``nodes.py`` must win over this pack's ``nodes/`` package), loads the checkpoint with
``comfy.sd.load_checkpoint_guess_config`` (family detected by ComfyUI), encodes the prompts with the checkpoint's own
text encoder and returns a differentiable CFG denoiser built from ComfyUI's sampling functions:

    D(x, s) = sampling_function(model, x, s, uncond, cond, cfg)     (ComfyUI's CFG on denoised outputs)

Discrete-schedule networks see the float timestep of each GAS time through :class:`gas.comfy_bridge
.FloatTimestepOverride` (``decoupled="timestep"`` for eps-prediction, exact; ``"resigma"`` otherwise). Gradients flow:
outside the node graph nothing in this path runs under ``no_grad``/``inference_mode``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gas import comfy_bridge

from .config import PACK_ROOT, DistillConfig
from .errors import ProblemError
from .gits import comfyui_gits_sigmas
from .problem import DistillProblem
from .prompts import PromptSet, load_prompts

__all__ = ["ModelSource", "build_problem", "comfy_modules", "file_sha256", "find_comfyui", "import_comfy",
           "problem_from_model", "resolve_checkpoint"]

log = logging.getLogger("trainer")

_MARKERS = ("main.py", "nodes.py", "folder_paths.py", "comfy/sd.py")
#: (native width, default cfg) by ComfyUI model_config class name; other families fall back to (512, 7.5).
_FAMILY_DEFAULTS: dict[str, tuple[int, float]] = {
    "SD15": (512, 7.5), "SD20": (768, 7.5), "SD21UnclipL": (768, 7.5), "SD21UnclipH": (768, 7.5),
    "SDXL": (1024, 7.0), "SDXLRefiner": (1024, 7.0), "SSD1B": (1024, 7.0), "Segmind_Vega": (1024, 7.0),
    "KOALA_700M": (1024, 7.0), "KOALA_1B": (1024, 7.0), "SD3": (1024, 5.0), "Flux": (1024, 1.0),
    "FluxSchnell": (1024, 1.0), "AuraFlow": (1024, 3.5),
}
#: Flux-dev style models take their (distilled) guidance as a conditioning value, not through CFG.
_FLUX_GUIDANCE = 3.5


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
    candidate = Path(name_or_path).expanduser()
    if candidate.is_file():
        return candidate.resolve()
    found = folder_paths.get_full_path("checkpoints", name_or_path)
    if found:
        return Path(found)
    raise ProblemError(f"the checkpoint '{name_or_path}' (`ckpt`) was found neither as a file nor in ComfyUI's "
                       "models/checkpoints folders")


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


def _load(comfy: dict[str, Any], path: Path, dtype: str) -> tuple[Any, Any, Any]:
    options: dict[str, Any] = {}
    if dtype != "auto":
        options["dtype"] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    try:
        with torch.no_grad():  # some text encoders copy weights in place while loading
            out = comfy["sd"].load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True,
                                                           model_options=options)
    except Exception as exc:  # safetensors/pickle errors, unknown layouts: ComfyUI raises many kinds
        raise ProblemError(f"'{path.name}' is not a checkpoint ComfyUI can load ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else 'no details'})") from None
    model, clip, vae = out[0], out[1], out[2]
    if model is None:
        raise ProblemError(f"'{path.name}' holds no diffusion model that ComfyUI recognises")
    if clip is None:
        raise ProblemError(f"'{path.name}' holds no text encoder; the trainer needs an all-in-one checkpoint")
    return model, clip, vae


def _pad_tokens(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Batch cross-attention contexts of different token counts by repeating each to the LCM (as ComfyUI does)."""
    lengths = [t.shape[1] for t in tensors]
    common = math.lcm(*lengths)
    return torch.cat([t.repeat(1, common // t.shape[1], 1) for t in tensors])


class PromptEncoder:
    """Encodes prompts once with the checkpoint's text encoder; ``batch(prompts)`` gives batched conditioning."""

    def __init__(self, clip: Any, extra: dict[str, Any]) -> None:
        self.clip = clip
        self.extra = extra
        self.memo: dict[str, tuple[torch.Tensor, dict[str, Any]]] = {}

    def encode(self, prompt: str) -> tuple[torch.Tensor, dict[str, Any]]:
        if prompt not in self.memo:
            with torch.no_grad():
                cond, extras = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(prompt), show_pbar=False)[0]
            kept = {k: v for k, v in extras.items() if torch.is_tensor(v)}
            self.memo[prompt] = (cond.detach(), kept)
        return self.memo[prompt]

    def batch(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        encoded = [self.encode(p) for p in prompts]
        out = {"context": _pad_tokens([c for c, _ in encoded])}
        for key in sorted(set.intersection(*(set(e) for _, e in encoded))):
            out[f"extra_{key}"] = torch.cat([e[key] for _, e in encoded])
        return out


def build_problem(ckpt: str, *, comfyui: str | os.PathLike[str] | None = None, device: str = "cpu",
                  prompts: PromptSet | None = None, negative: str = "", cfg: float | None = None,
                  width: int | None = None, height: int | None = None, dtype: str = "auto", name: str | None = None,
                  cache_dir: str | os.PathLike[str] | None = None) -> DistillProblem:
    """The :class:`DistillProblem` of checkpoint ``ckpt`` (a path, or a name in ComfyUI's ``models/checkpoints``)
    loaded through the ComfyUI at ``comfyui`` (None: the folder two levels above this pack) on ``device``.

    ``prompts``: the conditioning (default: the built-in prompts); ``negative``: the negative prompt; ``cfg``,
    ``width``, ``height``: None for the family's defaults (``height`` defaults to ``width``); ``dtype``: the model's
    weight dtype, "auto", "fp32", "fp16" or "bf16"; ``name``: the output name (default: the checkpoint's file name
    without extension); ``cache_dir``: the teacher cache folder, where the checkpoint's sha256 is remembered
    (default: the pack's, as :meth:`DistillConfig.paths`). Raises :class:`~trainer.errors.ProblemError` (one
    sentence) for a missing checkpoint, a file that is not a model, or a family it cannot handle.
    """
    root = find_comfyui(comfyui)
    comfy = import_comfy(root, device)
    path = resolve_checkpoint(ckpt, comfy["folder_paths"])
    log.info("loading %s through ComfyUI at %s", path.name, root)
    patcher, clip, vae = _load(comfy, path, dtype)
    _, hashes_dir, _ = DistillConfig(cache_dir=None if cache_dir is None else str(cache_dir)).paths()
    source = ModelSource(label=path.name, identity={"file": path.name, "sha256": file_sha256(path, hashes_dir)},
                         comfy_root=root, extra_metadata={"checkpoint": path.name})
    return problem_from_model(comfy, patcher, clip, vae, source, prompts=prompts, negative=negative, cfg=cfg,
                              width=width, height=height, name=name or Path(ckpt).stem)


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
                       height: int | None, name: str) -> DistillProblem:
    """The :class:`DistillProblem` of a ComfyUI model (a ``ModelPatcher`` with whatever patches it carries), its
    text encoder and optional VAE. The model is loaded onto ComfyUI's torch device with its patches applied (ComfyUI's
    ``load_models_gpu``), and the identity's weights fingerprint is taken from the patched weights."""
    info = comfy_bridge.describe_model_sampling(patcher.get_model_object("model_sampling"))
    family = comfy_bridge.model_identity(patcher, fingerprint=False).get("family") or "unknown"
    if not info.learned_ok:
        raise ProblemError(f"{source.quoted} is a {family} model ({info.description or info.kind}): {info.reason}")
    native, default_cfg = _FAMILY_DEFAULTS.get(family, (512, 7.5))
    cfg = float(cfg) if cfg is not None else default_cfg
    height = int(height or width or native)
    width = int(width or native)
    base = patcher.model
    downscale = int(vae.spacial_compression_encode()) if vae is not None else 8
    if width % downscale or height % downscale or width <= 0 or height <= 0:
        raise ProblemError(f"`width` and `height` must be positive multiples of {downscale} for this model, got "
                           f"{width}x{height}")
    channels = int(base.latent_format.latent_channels)
    latent_shape = (channels, height // downscale, width // downscale)

    device = torch.device(comfy["model_management"].get_torch_device())
    base.requires_grad_(False)
    comfy["model_management"].load_models_gpu([patcher], memory_required=source.memory_required,
                                               force_full_load=True)
    patcher.pre_run()  # what CFGGuider.outer_sample does before sampling (sets the model's current patcher)
    identity = comfy_bridge.model_identity(patcher)  # after loading: the weights as patched

    extra: dict[str, Any] = {}
    if family.startswith("Flux") and family != "FluxSchnell":
        extra["guidance"] = _FLUX_GUIDANCE
    encoder = PromptEncoder(clip, extra)
    prompts = prompts if prompts is not None else load_prompts(None)
    negative = negative or ""

    def conditions(indices: list[int]) -> dict[str, torch.Tensor]:
        pos = encoder.batch([prompts.prompt(i) for i in indices])
        neg = encoder.batch([negative] * len(indices))
        out = {k: v.to(device) for k, v in pos.items()}
        out.update({f"uncond_{k}": v.to(device) for k, v in neg.items()})
        return out

    schedule = info.schedule
    override = comfy_bridge.FloatTimestepOverride(schedule, label="GAS trainer") if info.float_timesteps else None
    model_options = comfy["model_patcher"].create_model_options_clone(patcher.model_options)
    if override is not None:
        model_options = override.install(model_options)
    samplers, helpers = comfy["samplers"], comfy["sampler_helpers"]
    next_time: list[torch.Tensor] = []  # the GAS time given by the solver's hook for the next call

    def hook(t: torch.Tensor) -> None:
        next_time[:] = [t]

    def as_cond(context: torch.Tensor, extras: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
        payload: dict[str, Any] = {k[len("extra_"):]: v for k, v in extras.items()}
        payload.update(extra)
        return helpers.convert_cond([[context, payload]])

    def guided(x: torch.Tensor, sigma: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        positive = as_cond(cond["context"], {k: v for k, v in cond.items() if k.startswith("extra_")})
        negative_c = as_cond(cond["uncond_context"], {k[len("uncond_"):]: v for k, v in cond.items()
                                                      if k.startswith("uncond_extra_")})
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
    identity.update({"cfg": cfg, "negative": negative, "prompts": prompts.digest(), "width": width, "height": height,
                     "dtype": str(base.get_dtype()).replace("torch.", "")})
    description = (f"{source.label} ({family}, {info.prediction}-prediction, {schedule.describe()}), {width}x{height}, "
                   f"cfg {cfg:g}, prompts: {prompts.source}")
    decoupled = comfy_bridge.decoupled_mode(info) if override is not None else "resigma"
    return DistillProblem(
        denoiser=denoiser, schedule=schedule, latent_shape=latent_shape, conditions=conditions, decode=decode,
        decoupled=decoupled, timestep_hook=hook if override is not None else None, device=device,
        dtype=torch.float32, identity=identity, name=name, cfg=cfg, description=description,
        gits_sigmas=_gits_sigmas(family, source.comfy_root) if source.comfy_root is not None else None,
        extra_metadata={**source.extra_metadata, **({"guidance": extra["guidance"]} if "guidance" in extra else {})},
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
