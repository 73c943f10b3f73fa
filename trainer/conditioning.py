"""Where a ComfyUI teacher's conditioning comes from: prompts encoded by a text encoder, or a graph's CONDITIONING.

Both give ``conditions(indices) -> {name: tensor [B, ...]}`` for the sample indices of a batch (the trainer's
teacher cache and batches hold these tensors) and the constant, non-tensor values of each side (for example Flux's
``guidance`` or SDXL's ``width``/``height``), which go into every ComfyUI conditioning dict unchanged:

* :class:`PromptConditioning`: sample ``i`` gets prompt ``prompts.prompt(i)`` encoded once by the ``CLIP``
  (``encode_from_tokens_scheduled``, as CLIPTextEncode does); the negative side is the negative prompt;
* :class:`GraphConditioning`: every sample gets the same ComfyUI CONDITIONING (the first entry of the list: the
  tensor and its dict), as wired in a graph (CLIPTextEncode, CLIPTextEncodeSDXL, FluxGuidance, ...); the negative
  side is the negative CONDITIONING, or the positive one zeroed (ConditioningZeroOut's rule) when none is given.

Tensor names: ``context`` (the cross-attention context), ``extra_<key>`` for tensors of the dict (e.g.
``extra_pooled_output``); the negative side's are prefixed ``uncond_``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

import torch

from .errors import ProblemError
from .prompts import PromptSet

__all__ = ["GraphConditioning", "PromptConditioning", "Side", "pad_tokens"]

#: One side of the conditioning for one sample: its context [1, tokens, dim], tensor extras and constant values.
Side = tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]


def pad_tokens(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Batch cross-attention contexts of different token counts by repeating each to the LCM (as ComfyUI does)."""
    lengths = [t.shape[1] for t in tensors]
    common = math.lcm(*lengths)
    return torch.cat([t.repeat(1, common // t.shape[1], 1) for t in tensors])


def _split(payload: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A conditioning dict's tensors (detached) and its plain values (numbers, strings, booleans)."""
    tensors = {k: v.detach() for k, v in payload.items() if torch.is_tensor(v)}
    constants = {k: v for k, v in payload.items() if isinstance(v, (bool, int, float, str))}
    return tensors, constants


def _batch(sides: list[Side], prefix: str = "") -> dict[str, torch.Tensor]:
    out = {f"{prefix}context": pad_tokens([c for c, _, _ in sides])}
    for key in sorted(set.intersection(*(set(t) for _, t, _ in sides))):
        out[f"{prefix}extra_{key}"] = torch.cat([t[key] for _, t, _ in sides])
    return out


class PromptConditioning:
    """Prompts encoded once each with a ComfyUI ``CLIP``; ``constants`` (e.g. ``{"guidance": 3.5}``) join both
    sides."""

    def __init__(self, clip: Any, prompts: PromptSet, negative: str, constants: Mapping[str, Any]) -> None:
        self.clip = clip
        self.prompts = prompts
        self.negative = negative or ""
        self.constants = dict(constants)
        self.memo: dict[str, Side] = {}
        self.source = f"prompts: {prompts.source}"
        self.digest = prompts.digest()

    def _encode(self, prompt: str) -> Side:
        if prompt not in self.memo:
            with torch.no_grad():
                cond, extras = self.clip.encode_from_tokens_scheduled(self.clip.tokenize(prompt), show_pbar=False)[0]
            tensors, _ = _split(extras)
            self.memo[prompt] = (cond.detach(), tensors, dict(self.constants))
        return self.memo[prompt]

    def conditions(self, indices: list[int]) -> dict[str, torch.Tensor]:
        out = _batch([self._encode(self.prompts.prompt(i)) for i in indices])
        out.update(_batch([self._encode(self.negative)] * len(indices), "uncond_"))
        return out

    def constants_of(self, side: str) -> dict[str, Any]:
        return dict(self.constants)


def _first_entry(conditioning: Any, what: str) -> Side:
    if not isinstance(conditioning, (list, tuple)) or not conditioning:
        raise ProblemError(f"the {what} input is not a ComfyUI CONDITIONING (a list of [tensor, dict] pairs)")
    entry = conditioning[0]
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and torch.is_tensor(entry[0])
            and isinstance(entry[1], Mapping) and entry[0].dim() == 3 and entry[0].shape[0] == 1):
        raise ProblemError(f"the {what} input is not a ComfyUI CONDITIONING of one prompt (a [1, tokens, dim] "
                           "tensor and its dict)")
    if len(conditioning) > 1:
        raise ProblemError(f"the {what} input holds {len(conditioning)} conditionings (combined or concatenated); "
                           "the trainer takes one prompt's conditioning, so connect a single text encode")
    tensors, constants = _split(entry[1])
    return entry[0].detach(), tensors, constants


def _digest(sides: list[Side]) -> str:
    h = hashlib.sha256()
    for context, tensors, constants in sides:
        for name, value in [("context", context), *sorted(tensors.items())]:
            v = value.detach().to("cpu", torch.float32).contiguous()
            h.update(f"{name}{list(v.shape)}".encode())
            h.update(v.numpy().tobytes())
        h.update(repr(sorted(constants.items())).encode())
    return "cond-" + h.hexdigest()[:16]


class GraphConditioning:
    """One prompt's ComfyUI CONDITIONING for every sample; ``negative`` None: the positive one zeroed. Constant
    values: ``defaults``, then the conditioning's own (e.g. FluxGuidance's ``guidance``), then ``overrides``."""

    def __init__(self, positive: Any, negative: Any | None, defaults: Mapping[str, Any],
                 overrides: Mapping[str, Any] | None = None) -> None:
        pos = _first_entry(positive, "positive conditioning")
        if negative is None:
            context, tensors, consts = pos
            neg = (torch.zeros_like(context), {k: torch.zeros_like(v) for k, v in tensors.items()}, dict(consts))
        else:
            neg = _first_entry(negative, "negative conditioning")
        extra = dict(overrides or {})
        self.sides = {"positive": (pos[0], pos[1], {**defaults, **pos[2], **extra}),
                      "negative": (neg[0], neg[1], {**defaults, **neg[2], **extra})}
        self.source = "the connected conditioning" + ("" if negative is not None else " (negative: zeroed)")
        self.digest = _digest(list(self.sides.values()))

    def conditions(self, indices: list[int]) -> dict[str, torch.Tensor]:
        out = _batch([self.sides["positive"]] * len(indices))
        out.update(_batch([self.sides["negative"]] * len(indices), "uncond_"))
        return out

    def constants_of(self, side: str) -> dict[str, Any]:
        return dict(self.sides[side][2])
