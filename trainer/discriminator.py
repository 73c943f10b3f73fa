"""An R3GAN-style discriminator on latents, trained from scratch, for any latent size (docs/method.md section 9).

Layout (widths ``W``, group counts ``G``, ``blocks`` residual blocks per stage, expansion 2, kernel 3):

* input: bias-free 1x1 conv ``C_in -> W[0]``;
* stage ``i``: ``blocks`` x ResidualBlock(``W[i]``, ``G[i]``), then a transition: a low-pass ``[1,2,1]`` x 2
  downsample (depthwise, stride 2, edges zero-padded) and a bias-free 1x1 conv to ``W[i+1]`` when the width changes;
  the last stage ends instead with the "basis": a depthwise valid conv whose kernel is the remaining spatial size,
  then ``Linear(W[-1] -> 1, no bias)``;
* ResidualBlock(C): ``x + conv1x1(2C -> C)(act(gconv3x3(2C, groups)(act(conv1x1(C -> 2C)(x)))))`` with biased
  LeakyReLU(0.2) activations and the last conv zero-initialised (each block starts as the identity);
* He initialisation of the hidden convs, scaled by ``n_blocks ** (-1/4)`` (variance scaling over all blocks for
  3-layer residual branches, as in R3GAN).

Any size: the number of stages is ``1 + #halvings`` needed to bring the larger spatial side to at most 4 (64 -> 5
stages, exactly the paper's 4x64x64 network with 22.4 M parameters; 16 -> 3; 128 -> 6). ``W`` and ``G`` are
truncated to the number of stages, or their last entry repeated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LatentDiscriminator", "stage_count"]


def stage_count(height: int, width: int) -> int:
    """``1 +`` the number of stride-2 halvings (ceil) until ``max(height, width) <= 4``."""
    n, size = 0, max(height, width)
    while size > 4:
        size = (size + 1) // 2
        n += 1
    return n + 1


class _BiasedLeakyReLU(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x + self.bias.reshape(1, -1, 1, 1), 0.2)


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int, groups: int, scale: float) -> None:
        super().__init__()
        hidden = 2 * channels
        self.expand = nn.Conv2d(channels, hidden, 1, bias=False)
        self.act1 = _BiasedLeakyReLU(hidden)
        self.spatial = nn.Conv2d(hidden, hidden, 3, padding=1, groups=groups, bias=False)
        self.act2 = _BiasedLeakyReLU(hidden)
        self.project = nn.Conv2d(hidden, channels, 1, bias=False)
        gain = math.sqrt(2.0 / (1.0 + 0.2**2))
        for conv in (self.expand, self.spatial):
            fan_in = conv.weight[0].numel()
            nn.init.normal_(conv.weight, std=gain / math.sqrt(fan_in) * scale)
        nn.init.zeros_(self.project.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.act2(self.spatial(self.act1(self.expand(x)))))


class _Downsample(nn.Module):
    """Depthwise ``[1,2,1]`` x ``[1,2,1]`` / 16 low-pass filter with stride 2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        kernel = (k[:, None] * k[None, :]) / 16.0
        self.register_buffer("kernel", kernel.expand(channels, 1, 3, 3).clone(), persistent=False)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel.to(x.dtype), stride=2, padding=1, groups=self.channels)


class LatentDiscriminator(nn.Module):
    """``D(latents [B, C, H, W]) -> logits [B]``; see the module docstring."""

    def __init__(self, in_channels: int, height: int, width: int, *, widths: Sequence[int] = (384, 768, 768, 768, 768),
                 groups: Sequence[int] = (48, 96, 96, 96, 96), blocks: int = 2) -> None:
        super().__init__()
        if not widths or len(widths) != len(groups):
            raise ValueError("widths and groups must be non-empty and of equal length")
        n_stages = stage_count(height, width)
        w = [widths[min(i, len(widths) - 1)] for i in range(n_stages)]
        g = [groups[min(i, len(groups) - 1)] for i in range(n_stages)]
        scale = (n_stages * blocks) ** (-0.25)
        self.input = nn.Conv2d(in_channels, w[0], 1, bias=False)
        nn.init.normal_(self.input.weight, std=1.0 / math.sqrt(in_channels))
        layers: list[nn.Module] = []
        h, wd = height, width
        for i in range(n_stages):
            layers.extend(_ResidualBlock(w[i], g[i], scale) for _ in range(blocks))
            if i < n_stages - 1:
                layers.append(_Downsample(w[i]))
                h, wd = (h + 1) // 2, (wd + 1) // 2
                if w[i + 1] != w[i]:
                    conv = nn.Conv2d(w[i], w[i + 1], 1, bias=False)
                    nn.init.normal_(conv.weight, std=1.0 / math.sqrt(w[i]))
                    layers.append(conv)
        self.body = nn.Sequential(*layers)
        self.basis = nn.Conv2d(w[-1], w[-1], (h, wd), groups=w[-1], bias=False)
        nn.init.normal_(self.basis.weight, std=1.0 / math.sqrt(h * wd))
        self.head = nn.Linear(w[-1], 1, bias=False)
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(w[-1]))
        self.input_shape = (in_channels, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"discriminator built for {list(self.input_shape)} latents, got {list(x.shape[1:])}")
        y = self.basis(self.body(self.input(x)))
        return self.head(y.flatten(1)).squeeze(1)
