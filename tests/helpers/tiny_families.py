"""Smallest diffusion-model-only files that ComfyUI 0.3.64's own detection classifies as each model family.

Pure torch + safetensors, no ComfyUI import; the building blocks (tensor specs, layers, deterministic initialisation)
are those of :mod:`tests.helpers.tiny_checkpoints` (the tiny SD1.5 checkpoint). Every file holds only the diffusion
model (no ``model.diffusion_model.`` prefix, as the files in ``models/diffusion_models`` that UNETLoader reads): the
text encoders of these families are fixed full-size configurations in ComfyUI (OpenCLIP-H, CLIP-G, T5-XXL, umT5-XXL),
so a test builds the conditioning itself as random tensors of the right shapes.

What keeps each family's detection (``comfy/model_detection.py``, ``comfy/supported_models.py``) and what is shrunk:

* ``sd2v`` (SD20, V_PREDICTION): UNet with model_channels 320, Linear proj_in/proj_out, context 1024, no ADM. SD20
  calls a model V-prediction when ``output_blocks.11.1.transformer_blocks.0.norm1.bias`` has a std above 0.09, so
  the UNet needs 12 output blocks with a transformer in the last: one level (channel_mult [1]), 11 ResBlocks, depth-1
  transformers in input block 1 and output block 11 only, no middle block (about 71M parameters).
* ``sdxl`` (SDXL, EPS): SDXL's exact ``transformer_depth`` [0, 0, 2, 2, 10, 10] (three levels of two ResBlocks),
  context 2048, ADM 2816 (``label_emb``); shrunk to channel_mult [1, 1, 1], no transformers in the output blocks, no
  middle block (about 122M parameters). Latent sides must be multiples of 4.
* ``sd3`` (SD3, FLOW, ModelSamplingDiscreteFlow shift 3): MMDiT ``depth`` 2 (hidden size 64 x depth = 128, 2 joint
  blocks), patch 2, 16 latent channels, RMS q/k norms (SD3.5 style), context 4096, pooled 2048, a 16x16 patch
  position table (latents up to 32x32). About 2M parameters.
* ``flux`` (Flux, FLUX, ModelSamplingFlux): ComfyUI fixes Flux's hidden size (3072), heads (24) and context (4096) and
  detects it by a key of ``double_blocks.0``, so the smallest Flux has one double block and no single block: about
  404M parameters, with the guidance embedding (Flux dev; without it ComfyUI detects FluxSchnell). The largest file.
* ``wan21`` (WAN21_T2V, FLOW, shift 8): Wan dim 128 (heads = dim // 128 = 1), one block, FFN 256, 16 channels, text
  4096. About 1.4M parameters; 5-D latents (B, 16, T, H, W).
* ``wan22`` (WAN22_T2V, the 5B layout: 48 latent channels): as ``wan21`` with in/out dim 48.

All weights are random (fan-in scaled; layers a real model zero-initialises get std 0.01), deterministic for a seed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from .tiny_checkpoints import (
    MODEL_CHANNELS,
    TIME_EMBED_DIM,
    TensorSpec,
    _conv,
    _linear,
    _norm,
    _resblock,
    _spatial_transformer,
    state_dict_from_specs,
)

# ----- UNet families (SD2.x-v, SDXL) ----------------------------------------------------------------------------------

SD2_CONTEXT_DIM = 1024
SD2_RES_BLOCKS = 11
#: The tensor SD20.model_type reads: a std above 0.09 means V-prediction.
SD2_V_MARKER = "output_blocks.11.1.transformer_blocks.0.norm1.bias"
SDXL_CONTEXT_DIM = 2048
SDXL_ADM_CHANNELS = 2816
SDXL_TRANSFORMER_DEPTH = (0, 2, 10)  # per level; ComfyUI's SDXL requires exactly [0, 0, 2, 2, 10, 10]


def _unet_stem(latent_channels: int = 4) -> Iterator[TensorSpec]:
    c = MODEL_CHANNELS
    yield from _linear("time_embed.0", c, TIME_EMBED_DIM)
    yield from _linear("time_embed.2", TIME_EMBED_DIM, TIME_EMBED_DIM)
    yield from _conv("input_blocks.0.0", latent_channels, c)


def _unet_out(latent_channels: int = 4) -> Iterator[TensorSpec]:
    yield from _norm("out.0", MODEL_CHANNELS)
    yield from _conv("out.2", MODEL_CHANNELS, latent_channels, init="small")


def sd2v_specs() -> list[TensorSpec]:
    """SD2.x-768-v: one level of 11 ResBlocks, transformers (Linear projections, context 1024) in input block 1 and
    output block 11, whose norm1 bias gets std 1 so that ComfyUI classifies the model as V-prediction."""
    c = MODEL_CHANNELS
    specs = [*_unet_stem()]
    for i in range(1, SD2_RES_BLOCKS + 1):
        specs += _resblock(f"input_blocks.{i}.0", c, c)
        if i == 1:
            specs += _spatial_transformer(f"input_blocks.{i}.1", c, context_dim=SD2_CONTEXT_DIM, linear=True)
    for i in range(SD2_RES_BLOCKS + 1):  # each output block concatenates one skip (c channels)
        specs += _resblock(f"output_blocks.{i}.0", 2 * c, c)
        if i == SD2_RES_BLOCKS:
            specs += _spatial_transformer(f"output_blocks.{i}.1", c, context_dim=SD2_CONTEXT_DIM, linear=True)
    specs += _unet_out()
    # fan_in init of a 1-D tensor is std 1, far above ComfyUI's 0.09 threshold
    return [TensorSpec(s.name, s.shape, "fan_in") if s.name == SD2_V_MARKER else s for s in specs]


def sdxl_specs() -> list[TensorSpec]:
    """SDXL base: three levels of two ResBlocks with SDXL's transformer depths, ADM (pooled CLIP-G + size embeddings)
    through ``label_emb``, plain ResBlocks on the way up."""
    c = MODEL_CHANNELS
    specs = [*_unet_stem()]
    specs += _linear("label_emb.0.0", SDXL_ADM_CHANNELS, TIME_EMBED_DIM)
    specs += _linear("label_emb.0.2", TIME_EMBED_DIM, TIME_EMBED_DIM)
    block = 1
    for level, depth in enumerate(SDXL_TRANSFORMER_DEPTH):
        for _ in range(2):
            specs += _resblock(f"input_blocks.{block}.0", c, c)
            if depth:
                specs += _spatial_transformer(f"input_blocks.{block}.1", c, context_dim=SDXL_CONTEXT_DIM,
                                              linear=True, depth=depth)
            block += 1
        if level < len(SDXL_TRANSFORMER_DEPTH) - 1:
            specs += _conv(f"input_blocks.{block}.0.op", c, c)  # Downsample
            block += 1
    out = 0
    for level in reversed(range(len(SDXL_TRANSFORMER_DEPTH))):
        for i in range(3):  # num_res_blocks + 1, each with one skip
            specs += _resblock(f"output_blocks.{out}.0", 2 * c, c)
            if level and i == 2:
                specs += _conv(f"output_blocks.{out}.1.conv", c, c)  # Upsample
            out += 1
    specs += _unet_out()
    return specs


# ----- DiT families (SD3, Flux, Wan) ----------------------------------------------------------------------------------

SD3_DEPTH = 2
SD3_HIDDEN = 64 * SD3_DEPTH  # ComfyUI's MMDiT: hidden size 64 x depth, one head per 64 channels
SD3_POS_SIDE = 16
T5_DIM = 4096
SD3_POOLED_DIM = 2048
FLUX_HIDDEN = 3072
FLUX_HEAD_DIM = 128
FLUX_POOLED_DIM = 768
WAN_DIM = 128
WAN_FFN = 256
WAN_FREQ_DIM = 256
FLOW_LATENT_CHANNELS = 16
WAN22_CHANNELS = 48


def _mlp2(name: str, n_in: int, hidden: int, n_out: int | None = None, first: str = "0",
          second: str = "2") -> Iterator[TensorSpec]:
    """Two Linear layers with an activation between them (``name.0`` / ``name.2`` by default)."""
    yield from _linear(f"{name}.{first}", n_in, hidden)
    yield from _linear(f"{name}.{second}", hidden, n_out or hidden)


def _mmdit_block(name: str, pre_only: bool) -> Iterator[TensorSpec]:
    """One half of an MMDiT joint block (DismantledBlock) with RMS q/k norms; ``pre_only``: the last context block."""
    h = SD3_HIDDEN
    yield from _linear(f"{name}.attn.qkv", h, 3 * h)
    yield TensorSpec(f"{name}.attn.ln_q.weight", (64,), "ones")
    yield TensorSpec(f"{name}.attn.ln_k.weight", (64,), "ones")
    if not pre_only:
        yield from _linear(f"{name}.attn.proj", h, h, init="small")
        yield from _mlp2(f"{name}.mlp", h, 4 * h, h, first="fc1", second="fc2")
    yield from _linear(f"{name}.adaLN_modulation.1", h, (2 if pre_only else 6) * h, init="small")


def sd3_specs() -> list[TensorSpec]:
    """SD3.x MMDiT with ``SD3_DEPTH`` joint blocks."""
    h = SD3_HIDDEN
    specs = [*_conv("x_embedder.proj", FLOW_LATENT_CHANNELS, h, k=2)]
    specs.append(TensorSpec("pos_embed", (1, SD3_POS_SIDE * SD3_POS_SIDE, h), "embedding"))
    specs += _mlp2("t_embedder.mlp", 256, h)
    specs += _mlp2("y_embedder.mlp", SD3_POOLED_DIM, h)
    specs += _linear("context_embedder", T5_DIM, h)
    for i in range(SD3_DEPTH):
        specs += _mmdit_block(f"joint_blocks.{i}.context_block", pre_only=i == SD3_DEPTH - 1)
        specs += _mmdit_block(f"joint_blocks.{i}.x_block", pre_only=False)
    specs += _linear("final_layer.adaLN_modulation.1", h, 2 * h, init="small")
    specs += _linear("final_layer.linear", h, 4 * FLOW_LATENT_CHANNELS, init="small")
    return specs


def _flux_stream(name: str) -> Iterator[TensorSpec]:
    """The image or text half of a Flux DoubleStreamBlock."""
    h = FLUX_HIDDEN
    yield from _linear(f"{name}_mod.lin", h, 6 * h, init="small")
    yield from _linear(f"{name}_attn.qkv", h, 3 * h)
    yield TensorSpec(f"{name}_attn.norm.query_norm.scale", (FLUX_HEAD_DIM,), "ones")
    yield TensorSpec(f"{name}_attn.norm.key_norm.scale", (FLUX_HEAD_DIM,), "ones")
    yield from _linear(f"{name}_attn.proj", h, h, init="small")
    yield from _mlp2(f"{name}_mlp", h, 4 * h, h)


def flux_specs() -> list[TensorSpec]:
    """Flux dev: full-width embedders, one double-stream block, guidance embedding, no single-stream block."""
    h = FLUX_HIDDEN
    specs = [*_linear("img_in", 4 * FLOW_LATENT_CHANNELS, h)]
    for embedder, n_in in (("time_in", 256), ("vector_in", FLUX_POOLED_DIM), ("guidance_in", 256)):
        specs += _mlp2(embedder, n_in, h, first="in_layer", second="out_layer")
    specs += _linear("txt_in", T5_DIM, h)
    specs += _flux_stream("double_blocks.0.img")
    specs += _flux_stream("double_blocks.0.txt")
    specs += _linear("final_layer.adaLN_modulation.1", h, 2 * h, init="small")
    specs += _linear("final_layer.linear", h, 4 * FLOW_LATENT_CHANNELS, init="small")
    return specs


def _wan_attention(name: str) -> Iterator[TensorSpec]:
    for proj in ("q", "k", "v"):
        yield from _linear(f"{name}.{proj}", WAN_DIM, WAN_DIM)
    yield from _linear(f"{name}.o", WAN_DIM, WAN_DIM, init="small")
    yield TensorSpec(f"{name}.norm_q.weight", (WAN_DIM,), "ones")
    yield TensorSpec(f"{name}.norm_k.weight", (WAN_DIM,), "ones")


def wan_specs(channels: int = FLOW_LATENT_CHANNELS) -> list[TensorSpec]:
    """Wan text-to-video with one block; ``channels`` 16 (Wan 2.1 / 2.2 14B) or 48 (Wan 2.2 5B)."""
    d = WAN_DIM
    specs = [TensorSpec("patch_embedding.weight", (d, channels, 1, 2, 2), "fan_in"),
             TensorSpec("patch_embedding.bias", (d,), "zeros")]
    specs += _mlp2("text_embedding", T5_DIM, d)
    specs += _mlp2("time_embedding", WAN_FREQ_DIM, d)
    specs += _linear("time_projection.1", d, 6 * d, init="small")
    specs += _wan_attention("blocks.0.self_attn")
    specs += _norm("blocks.0.norm3", d)
    specs += _wan_attention("blocks.0.cross_attn")
    specs += _mlp2("blocks.0.ffn", d, WAN_FFN, d)
    specs.append(TensorSpec("blocks.0.modulation", (1, 6, d), "small"))
    specs += _linear("head.head", d, 4 * channels, init="small")
    specs.append(TensorSpec("head.modulation", (1, 2, d), "small"))
    return specs


# ----- the families ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyFamily:
    """One family: how to build its tensors, and what ComfyUI must detect and a test must feed it.

    ``config`` / ``model_type`` / ``sampling``: ComfyUI's ``type(model_config).__name__``, ``model.model_type.name``
    and the ``model_sampling`` class names (schedule, prediction). ``latent``: a latent shape (batch 1); ``context``:
    (tokens, width) of the cross-attention conditioning; ``pooled``: width of the pooled text embedding (0: none).
    """

    name: str
    specs: Callable[[], list[TensorSpec]]
    config: str
    model_type: str
    sampling: tuple[str, str]
    latent: tuple[int, ...]
    context: tuple[int, int]
    pooled: int = 0
    guidance: float | None = None


FAMILIES: dict[str, TinyFamily] = {f.name: f for f in (
    TinyFamily("sd2v", sd2v_specs, "SD20", "V_PREDICTION", ("ModelSamplingDiscrete", "V_PREDICTION"),
               (1, 4, 4, 4), (8, SD2_CONTEXT_DIM)),
    TinyFamily("sdxl", sdxl_specs, "SDXL", "EPS", ("ModelSamplingDiscrete", "EPS"), (1, 4, 4, 4),
               (8, SDXL_CONTEXT_DIM), pooled=1280),
    TinyFamily("sd3", sd3_specs, "SD3", "FLOW", ("ModelSamplingDiscreteFlow", "CONST"),
               (1, FLOW_LATENT_CHANNELS, 8, 8), (8, T5_DIM), pooled=SD3_POOLED_DIM),
    TinyFamily("flux", flux_specs, "Flux", "FLUX", ("ModelSamplingFlux", "CONST"), (1, FLOW_LATENT_CHANNELS, 8, 8),
               (8, T5_DIM), pooled=FLUX_POOLED_DIM, guidance=3.5),
    TinyFamily("wan21", wan_specs, "WAN21_T2V", "FLOW", ("ModelSamplingDiscreteFlow", "CONST"),
               (1, FLOW_LATENT_CHANNELS, 2, 8, 8), (8, T5_DIM)),
    TinyFamily("wan22", lambda: wan_specs(WAN22_CHANNELS), "WAN22_T2V", "FLOW",
               ("ModelSamplingDiscreteFlow", "CONST"), (1, WAN22_CHANNELS, 2, 8, 8), (8, T5_DIM)),
)}


def family_parameters(name: str) -> int:
    """Number of parameters of a family's tiny diffusion model."""
    total = 0
    for spec in FAMILIES[name].specs():
        count = 1
        for n in spec.shape:
            count *= n
        total += count
    return total


def write_tiny_family(name: str, folder: str | os.PathLike[str], seed: int = 0,
                      dtype: torch.dtype = torch.float16) -> Path:
    """Write family ``name``'s diffusion-model file into ``folder`` (once: an existing file of the same name, which
    encodes family, seed and dtype, is reused) and return its path. Written to a temporary name, then renamed."""
    if name not in FAMILIES:
        raise KeyError(f"unknown tiny family {name!r}; known: {', '.join(FAMILIES)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"tiny_{name}_s{seed}_{str(dtype).removeprefix('torch.')}.safetensors"
    if path.is_file():
        return path
    partial_path = path.with_suffix(".partial")
    metadata = {"gas_tiny_family": f"generator=ComfyUI-GAS tests/helpers/tiny_families.py family={name} seed={seed}"}
    save_file(state_dict_from_specs(FAMILIES[name].specs(), seed, dtype), os.fspath(partial_path), metadata=metadata)
    partial_path.replace(path)
    return path
