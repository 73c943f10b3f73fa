"""Smallest SD1.5-shaped checkpoint that ComfyUI still detects as SD15 / EPS / ModelSamplingDiscrete.

Pure torch + safetensors; no ComfyUI import. The layout follows the facts in shared/design/COMFYUI_NOTES.md 2.2:

* UNet under ``model.diffusion_model.``: model_channels 320, channel_mult [1], one ResBlock, one depth-1
  SpatialTransformer (1x1-conv proj_in, context_dim 768) in the input block, no middle block, two output ResBlocks
  without transformers (about 13.6M parameters).
* CLIP-L text model under ``cond_stage_model.transformer.text_model.`` with the full shapes of ComfyUI's
  ``sd1_clip_config.json`` (12 layers, width 768, MLP 3072, vocab 49408, 77 positions; 123M parameters). ComfyUI
  builds this model whatever the checkpoint holds and leaves missing weights uninitialised, so it cannot be shrunk.
  ``text_projection`` and ``logit_scale`` are left out, as in real SD1.5 files.
* TAESD VAE under ``first_stage_model.`` (``taesd_encoder.*``, ``taesd_decoder.*``, ``vae_scale``, ``vae_shift``).

Initialisation is deterministic for a seed (one ``torch.Generator``, tensors drawn in a fixed order): fan-in-scaled
normal weights, zero biases, unit norm weights, and std-0.01 weights on every layer a real model zero-initialises
(ResBlock ``out_layers.3``, transformer ``proj_out``, the UNet's ``out.2``, the TAESD output convs), so model outputs
stay finite and small.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import save_file

UNET_PREFIX = "model.diffusion_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."
VAE_PREFIX = "first_stage_model."

MODEL_CHANNELS = 320
TIME_EMBED_DIM = 4 * MODEL_CHANNELS
CONTEXT_DIM = 768
LATENT_CHANNELS = 4

CLIP_WIDTH = 768
CLIP_LAYERS = 12
CLIP_MLP = 3072
CLIP_VOCAB = 49408
CLIP_POSITIONS = 77

TAESD_WIDTH = 64

SMALL_STD = 0.01
"""Std of the layers a real model zero-initialises (keeps outputs small but non-degenerate)."""
EMBEDDING_STD = 0.02
"""Std of CLIP's token and position embeddings (CLIP's own initializer_range)."""


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the checkpoint: its name, shape and how it is initialised.

    ``init`` is one of ``"fan_in"`` (normal, std 1/sqrt(fan_in)), ``"small"`` (normal, std ``SMALL_STD``),
    ``"embedding"`` (normal, std ``EMBEDDING_STD``), ``"zeros"``, ``"ones"``.
    """

    name: str
    shape: tuple[int, ...]
    init: str


def _linear(name: str, n_in: int, n_out: int, bias: bool = True, init: str = "fan_in") -> Iterator[TensorSpec]:
    """A Linear layer's weight [n_out, n_in] and optional bias."""
    yield TensorSpec(f"{name}.weight", (n_out, n_in), init)
    if bias:
        yield TensorSpec(f"{name}.bias", (n_out,), "zeros")


def _conv(
    name: str, n_in: int, n_out: int, k: int = 3, bias: bool = True, init: str = "fan_in"
) -> Iterator[TensorSpec]:
    """A Conv2d layer's weight [n_out, n_in, k, k] and optional bias."""
    yield TensorSpec(f"{name}.weight", (n_out, n_in, k, k), init)
    if bias:
        yield TensorSpec(f"{name}.bias", (n_out,), "zeros")


def _norm(name: str, channels: int) -> Iterator[TensorSpec]:
    """A GroupNorm / LayerNorm: unit weight, zero bias."""
    yield TensorSpec(f"{name}.weight", (channels,), "ones")
    yield TensorSpec(f"{name}.bias", (channels,), "zeros")


def _resblock(name: str, n_in: int, n_out: int) -> Iterator[TensorSpec]:
    """An openaimodel ResBlock (GroupNorm-SiLU-conv, time-embedding Linear, GroupNorm-SiLU-conv, 1x1 skip)."""
    yield from _norm(f"{name}.in_layers.0", n_in)
    yield from _conv(f"{name}.in_layers.2", n_in, n_out)
    yield from _linear(f"{name}.emb_layers.1", TIME_EMBED_DIM, n_out)
    yield from _norm(f"{name}.out_layers.0", n_out)
    yield from _conv(f"{name}.out_layers.3", n_out, n_out, init="small")
    if n_in != n_out:
        yield from _conv(f"{name}.skip_connection", n_in, n_out, k=1)


def _spatial_transformer(name: str, channels: int, *, context_dim: int = CONTEXT_DIM, linear: bool = False,
                         depth: int = 1) -> Iterator[TensorSpec]:
    """A SpatialTransformer of ``depth`` blocks with cross-attention to ``context_dim``: 1x1-conv proj_in/proj_out
    (SD1.x style) or Linear ones (``linear``: SD2.x / SDXL style)."""
    project = _linear if linear else partial(_conv, k=1)
    yield from _norm(f"{name}.norm", channels)
    yield from project(f"{name}.proj_in", channels, channels)
    for i in range(depth):
        block = f"{name}.transformer_blocks.{i}"
        for attn, context in (("attn1", channels), ("attn2", context_dim)):
            yield from _linear(f"{block}.{attn}.to_q", channels, channels, bias=False)
            yield from _linear(f"{block}.{attn}.to_k", context, channels, bias=False)
            yield from _linear(f"{block}.{attn}.to_v", context, channels, bias=False)
            yield from _linear(f"{block}.{attn}.to_out.0", channels, channels)
        yield from _linear(f"{block}.ff.net.0.proj", channels, 2 * 4 * channels)  # GEGLU: value and gate halves
        yield from _linear(f"{block}.ff.net.2", 4 * channels, channels)
        for norm in ("norm1", "norm2", "norm3"):
            yield from _norm(f"{block}.{norm}", channels)
    yield from project(f"{name}.proj_out", channels, channels, init="small")


def unet_specs() -> Iterator[TensorSpec]:
    """The tiny UNet: conv_in, one ResBlock + SpatialTransformer, no middle block, two output ResBlocks, out conv."""
    c = MODEL_CHANNELS
    p = UNET_PREFIX
    yield from _linear(f"{p}time_embed.0", c, TIME_EMBED_DIM)
    yield from _linear(f"{p}time_embed.2", TIME_EMBED_DIM, TIME_EMBED_DIM)
    yield from _conv(f"{p}input_blocks.0.0", LATENT_CHANNELS, c)
    yield from _resblock(f"{p}input_blocks.1.0", c, c)
    yield from _spatial_transformer(f"{p}input_blocks.1.1", c)
    # Each output block concatenates one skip from the input blocks (both have c channels).
    yield from _resblock(f"{p}output_blocks.0.0", 2 * c, c)
    yield from _resblock(f"{p}output_blocks.1.0", 2 * c, c)
    yield from _norm(f"{p}out.0", c)
    yield from _conv(f"{p}out.2", c, LATENT_CHANNELS, init="small")


def clip_specs(prefix: str = CLIP_PREFIX, width: int = CLIP_WIDTH, layers: int = CLIP_LAYERS,
               mlp: int = CLIP_MLP) -> Iterator[TensorSpec]:
    """A full-size CLIP text model; the defaults: CLIP-L (ComfyUI's sd1_clip_config.json shapes)."""
    p = prefix
    yield TensorSpec(f"{p}embeddings.token_embedding.weight", (CLIP_VOCAB, width), "embedding")
    yield TensorSpec(f"{p}embeddings.position_embedding.weight", (CLIP_POSITIONS, width), "embedding")
    for i in range(layers):
        layer = f"{p}encoder.layers.{i}"
        yield from _norm(f"{layer}.layer_norm1", width)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            yield from _linear(f"{layer}.self_attn.{proj}", width, width)
        yield from _norm(f"{layer}.layer_norm2", width)
        yield from _linear(f"{layer}.mlp.fc1", width, mlp)
        yield from _linear(f"{layer}.mlp.fc2", mlp, width)
    yield from _norm(f"{p}final_layer_norm", width)


def _taesd_block(name: str) -> Iterator[TensorSpec]:
    """A TAESD Block(64, 64): three 3x3 convs with biases, identity skip (no parameters)."""
    for i in (0, 2, 4):
        yield from _conv(f"{name}.conv.{i}", TAESD_WIDTH, TAESD_WIDTH)


def taesd_specs() -> Iterator[TensorSpec]:
    """TAESD encoder/decoder (nn.Sequential indices as in ComfyUI's taesd.py) plus vae_scale / vae_shift."""
    w = TAESD_WIDTH
    enc = f"{VAE_PREFIX}taesd_encoder"
    yield from _conv(f"{enc}.0", 3, w)
    yield from _taesd_block(f"{enc}.1")
    for down in (2, 6, 10):  # stride-2 convs without bias, each followed by three Blocks
        yield from _conv(f"{enc}.{down}", w, w, bias=False)
        for j in range(1, 4):
            yield from _taesd_block(f"{enc}.{down + j}")
    yield from _conv(f"{enc}.14", w, LATENT_CHANNELS, init="small")

    dec = f"{VAE_PREFIX}taesd_decoder"
    yield from _conv(f"{dec}.1", LATENT_CHANNELS, w)  # index 0 is Clamp, 2 is ReLU
    for first_block, up_conv in ((3, 7), (8, 12), (13, 17)):  # 3 Blocks, Upsample, conv without bias
        for j in range(3):
            yield from _taesd_block(f"{dec}.{first_block + j}")
        yield from _conv(f"{dec}.{up_conv}", w, w, bias=False)
    yield from _taesd_block(f"{dec}.18")
    yield from _conv(f"{dec}.19", w, 3, init="small")
    yield TensorSpec(f"{VAE_PREFIX}vae_scale", (), "ones")
    yield TensorSpec(f"{VAE_PREFIX}vae_shift", (), "zeros")


def tiny_sd15_specs() -> list[TensorSpec]:
    """Every tensor of the tiny SD1.5 checkpoint, in the (fixed) order they are drawn from the generator."""
    return [*unet_specs(), *clip_specs(), *taesd_specs()]


def _init_tensor(spec: TensorSpec, generator: torch.Generator) -> torch.Tensor:
    """Create one float32 tensor for ``spec``, drawing from ``generator`` in place when it is random."""
    t = torch.empty(spec.shape, dtype=torch.float32)
    if spec.init == "zeros":
        return t.zero_()
    if spec.init == "ones":
        return t.fill_(1.0)
    if spec.init == "fan_in":
        fan_in = math.prod(spec.shape[1:])
        std = 1.0 / math.sqrt(fan_in)
    elif spec.init == "small":
        std = SMALL_STD
    elif spec.init == "embedding":
        std = EMBEDDING_STD
    else:
        raise ValueError(f"unknown init {spec.init!r} for {spec.name}")
    return t.normal_(0.0, std, generator=generator)


def state_dict_from_specs(specs: Iterable[TensorSpec], seed: int = 0,
                          dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Initialise ``specs`` in order from one generator seeded with ``seed`` (deterministic), cast to ``dtype``."""
    generator = torch.Generator().manual_seed(seed)
    return {spec.name: _init_tensor(spec, generator).to(dtype) for spec in specs}


def tiny_sd15_state_dict(seed: int = 0, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Build the tiny SD1.5 state dict in memory (deterministic for ``seed``), cast to ``dtype``."""
    return state_dict_from_specs(tiny_sd15_specs(), seed, dtype)


def write_tiny_sd15(path: str | os.PathLike[str], seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """Write the tiny SD1.5 checkpoint (about 278 MB in fp16) to ``path`` as safetensors and return the path.

    The parent directory is created if needed. The file is byte-identical for the same ``seed`` and ``dtype``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # One metadata key only: safetensors writes several keys in a random (hash map) order, so the file would differ
    # from run to run.
    metadata = {"gas_tiny_sd15": f"generator=ComfyUI-GAS tests/helpers/tiny_checkpoints.py seed={seed} dtype={dtype}"}
    save_file(tiny_sd15_state_dict(seed, dtype), os.fspath(path), metadata=metadata)
    return path


#: LoRA targets of the tiny UNet, ``kohya key -> (fan_in, fan_out)``: every attention projection of its transformer.
TINY_ATTENTION_LORA_LAYERS = {
    f"lora_unet_input_blocks_1_1_transformer_blocks_0_{attn}_{proj}": (fan_in, 320)
    for attn, context in (("attn1", 320), ("attn2", 768))
    for proj, fan_in in (("to_q", 320), ("to_k", context), ("to_v", context), ("to_out_0", 320))
}
#: The tiny UNet's first time-embedding layer alone (a LoRA there changes every step's output strongly).
TINY_TIME_EMBED_LORA_LAYERS = {"lora_unet_time_embed_0": (320, 1280)}


def write_tiny_lora(path: Path, layers: dict[str, tuple[int, int]] = TINY_ATTENTION_LORA_LAYERS, *, rank: int = 4,
                    seed: int = 0, scale: float = 0.1) -> Path:
    """A random kohya-format LoRA (``lora_down``/``lora_up``/``alpha`` per layer, ComfyUI's ``lora_unet_*`` keys) on
    ``layers`` of the tiny SD1.5 UNet: ``down ~ scale N(0, 1)`` of shape (rank, fan_in), ``up`` (fan_out, rank)."""
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for key, (fan_in, fan_out) in layers.items():
        tensors[f"{key}.lora_down.weight"] = scale * torch.randn(rank, fan_in, generator=gen)
        tensors[f"{key}.lora_up.weight"] = scale * torch.randn(fan_out, rank, generator=gen)
        tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, str(path))
    return path


#: Stand-alone text encoders (ComfyUI's models/text_encoders layout): name -> (width, layers, MLP width); CLIP-G is
#: ComfyUI's clip_config_bigg.json.
TEXT_ENCODERS = {"clip_l": (CLIP_WIDTH, CLIP_LAYERS, CLIP_MLP), "clip_g": (1280, 32, 5120)}


def write_text_encoder(path: str | os.PathLike[str], kind: str = "clip_l", seed: int = 0,
                       dtype: torch.dtype = torch.float16) -> Path:
    """Write a random full-size CLIP text encoder ``kind`` ("clip_l": 246 MB, "clip_g": 1.39 GB in fp16) as a
    stand-alone file (``text_model.*`` plus ``text_projection.weight``, as ComfyUI's ``clip_l.safetensors`` /
    ``clip_g.safetensors``); written once (an existing file is reused), to a temporary name first."""
    path = Path(path)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    width, layers, mlp = TEXT_ENCODERS[kind]
    specs = [*clip_specs("text_model.", width, layers, mlp), TensorSpec("text_projection.weight", (width, width),
                                                                        "fan_in")]
    partial = path.with_suffix(".partial")
    metadata = {"gas_tiny_text_encoder": f"generator=ComfyUI-GAS tests/helpers/tiny_checkpoints.py {kind} seed={seed}"}
    save_file(state_dict_from_specs(specs, seed, dtype), os.fspath(partial), metadata=metadata)
    partial.replace(path)
    return path


def write_clip_l(path: str | os.PathLike[str], seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """:func:`write_text_encoder` of CLIP-L."""
    return write_text_encoder(path, "clip_l", seed, dtype)
