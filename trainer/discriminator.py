"""An R3GAN-style discriminator on latents, trained from scratch, for image latents (C, H, W) and video latents
(C, T, H, W) of any size (docs/method.md section 9).

Layout (widths ``W``, group counts ``G``, ``blocks`` residual blocks per stage, expansion 2, kernel 3; 2-D convs for
image latents, 3-D convs for video latents):

* input: bias-free 1x1 conv ``C_in -> W[0]``;
* stage ``i``: ``blocks`` x ResidualBlock(``W[i]``, ``G[i]``), then a transition: a low-pass ``[1,2,1]`` per halved
  axis downsample (depthwise, stride 2 on those axes, edges zero-padded) and a bias-free 1x1 conv to ``W[i+1]`` when
  the width changes; the last stage ends instead with the "basis": a depthwise valid conv whose kernel is the
  remaining spatial extent, then ``Linear(W[-1] -> 1, no bias)``;
* ResidualBlock(C): ``x + conv1x1(2C -> C)(act(gconv3x3(2C, groups)(act(conv1x1(C -> 2C)(x)))))`` with biased
  LeakyReLU(0.2) activations and the last conv zero-initialised (each block starts as the identity);
* He initialisation of the hidden convs, scaled by ``n_blocks ** (-1/4)`` (variance scaling over all blocks for
  3-layer residual branches, as in R3GAN).

Any size: the number of stages is ``1 + #halvings`` needed to bring the largest spatial axis to at most 4 (64 -> 5
stages, exactly the paper's 4x64x64 network with 22.4 M parameters; 16 -> 3; 128 -> 6). ``W`` and ``G`` are
truncated to the number of stages, or their last entry repeated. Which axes a transition halves: for (H, W) both, at
every transition (the image network); for (T, H, W) each axis still larger than 4 (a short time axis, T <= 4, is
never halved, and the low-pass filter is ``[1]`` along a kept axis), e.g. 16x5x16x16: (5, 16, 16) -> (3, 8, 8) ->
(3, 4, 4), 3 stages, 0.36 M parameters with the ``small`` preset and 14.3 M with the ``paper`` one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LatentDiscriminator", "stage_count"]

#: The convolution of each number of spatial axes.
_CONV: dict[int, type[nn.Conv2d] | type[nn.Conv3d]] = {2: nn.Conv2d, 3: nn.Conv3d}


def stage_count(*sizes: int) -> int:
    """``1 +`` the number of stride-2 halvings (ceil) until ``max(sizes) <= 4``."""
    n, size = 0, max(sizes)
    while size > 4:
        size = (size + 1) // 2
        n += 1
    return n + 1


class _BiasedLeakyReLU(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x + self.bias.reshape(1, -1, *([1] * (x.ndim - 2))), 0.2)


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int, groups: int, scale: float, conv: type[nn.Conv2d] | type[nn.Conv3d]) -> None:
        super().__init__()
        hidden = 2 * channels
        self.expand = conv(channels, hidden, 1, bias=False)
        self.act1 = _BiasedLeakyReLU(hidden)
        self.spatial = conv(hidden, hidden, 3, padding=1, groups=groups, bias=False)
        self.act2 = _BiasedLeakyReLU(hidden)
        self.project = conv(hidden, channels, 1, bias=False)
        gain = math.sqrt(2.0 / (1.0 + 0.2**2))
        for layer in (self.expand, self.spatial):
            fan_in = layer.weight[0].numel()
            nn.init.normal_(layer.weight, std=gain / math.sqrt(fan_in) * scale)
        nn.init.zeros_(self.project.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.act2(self.spatial(self.act1(self.expand(x)))))


class _Downsample(nn.Module):
    """Depthwise low-pass filter, the outer product of ``[1,2,1]/4`` on each halved axis (stride 2) and ``[1]`` on
    each kept axis (stride 1)."""

    def __init__(self, channels: int, halve: Sequence[bool]) -> None:
        super().__init__()
        k, one = torch.tensor([1.0, 2.0, 1.0]), torch.ones(1)
        kernel = torch.ones(())
        for h in halve:
            kernel = kernel[..., None] * (k if h else one)
        kernel = kernel / 4.0 ** sum(halve)
        self.register_buffer("kernel", kernel.expand(channels, 1, *kernel.shape).clone(), persistent=False)
        self.channels = channels
        self.stride = tuple(2 if h else 1 for h in halve)
        self.padding = tuple(1 if h else 0 for h in halve)
        self.conv = F.conv3d if len(halve) == 3 else F.conv2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x, self.kernel.to(x.dtype), stride=self.stride, padding=self.padding, groups=self.channels)


class LatentDiscriminator(nn.Module):
    """``D(latents [B, C, H, W] or [B, C, T, H, W]) -> logits [B]``; see the module docstring.

    ``LatentDiscriminator(C, H, W)`` or ``LatentDiscriminator(C, T, H, W)``: one latent's shape."""

    def __init__(self, in_channels: int, *spatial: int, widths: Sequence[int] = (384, 768, 768, 768, 768),
                 groups: Sequence[int] = (48, 96, 96, 96, 96), blocks: int = 2) -> None:
        super().__init__()
        if len(spatial) not in _CONV or not all(isinstance(s, int) and s > 0 for s in spatial):
            raise ValueError(f"the discriminator needs 2 or 3 positive spatial sizes (H, W) or (T, H, W), got "
                             f"{list(spatial)}")
        if not widths or len(widths) != len(groups):
            raise ValueError("widths and groups must be non-empty and of equal length")
        conv = _CONV[len(spatial)]
        n_stages = stage_count(*spatial)
        w = [widths[min(i, len(widths) - 1)] for i in range(n_stages)]
        g = [groups[min(i, len(groups) - 1)] for i in range(n_stages)]
        scale = (n_stages * blocks) ** (-0.25)
        self.input = conv(in_channels, w[0], 1, bias=False)
        nn.init.normal_(self.input.weight, std=1.0 / math.sqrt(in_channels))
        layers: list[nn.Module] = []
        sizes = list(spatial)
        for i in range(n_stages):
            layers.extend(_ResidualBlock(w[i], g[i], scale, conv) for _ in range(blocks))
            if i < n_stages - 1:
                halve = [True] * len(sizes) if len(sizes) == 2 else [s > 4 for s in sizes]
                layers.append(_Downsample(w[i], halve))
                sizes = [(s + 1) // 2 if h else s for s, h in zip(sizes, halve, strict=True)]
                if w[i + 1] != w[i]:
                    width_conv = conv(w[i], w[i + 1], 1, bias=False)
                    nn.init.normal_(width_conv.weight, std=1.0 / math.sqrt(w[i]))
                    layers.append(width_conv)
        self.body = nn.Sequential(*layers)
        self.basis = conv(w[-1], w[-1], tuple(sizes), groups=w[-1], bias=False)
        nn.init.normal_(self.basis.weight, std=1.0 / math.sqrt(math.prod(sizes)))
        self.head = nn.Linear(w[-1], 1, bias=False)
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(w[-1]))
        self.input_shape = (in_channels, *spatial)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"discriminator built for {list(self.input_shape)} latents, got {list(x.shape[1:])}")
        y = self.basis(self.body(self.input(x)))
        return self.head(y.flatten(1)).squeeze(1)
