"""Which samples iteration ``k`` trains on: a pure function of (seed, k), so a resumed run sees the same batches.

Epoch ``e`` is a permutation of the training indices seeded by (seed, e), cut into ``training_samples // batch``
batches (the remainder is dropped); the discriminator's fake batch starts from fresh noise seeded by (seed, k). Under
torchrun rank ``r`` takes its contiguous share of the global batch and of that noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .config import DistillConfig
from .distributed import Dist
from .problem import DistillProblem
from .shard_rows import ShardRows
from .teacher import derive_seed

__all__ = ["Batch", "batch_indices", "fake_noise", "training_batch"]


def batch_indices(config: DistillConfig, step: int) -> list[int]:
    """Training indices of iteration ``step`` (1-based): epoch ``e`` is a permutation seeded by (seed, e), cut into
    ``training_samples // batch`` batches (remainder dropped). A pure function of (config, step)."""
    per_epoch = config.training_samples // config.batch
    epoch, pos = divmod(step - 1, per_epoch)
    perm = torch.randperm(config.training_samples, generator=torch.Generator().manual_seed(
        derive_seed(config.seed, "order", epoch)))
    return perm[pos * config.batch:(pos + 1) * config.batch].tolist()


def fake_noise(config: DistillConfig, step: int, shape: Sequence[int]) -> torch.Tensor:
    """Fresh noise for the discriminator's fake batch at ``step`` (pure function of seed and step)."""
    gen = torch.Generator().manual_seed(derive_seed(config.seed, "fake", step))
    return torch.randn(tuple(shape), generator=gen)


@dataclass
class Batch:
    """This rank's share of one iteration's global batch."""

    step: int
    #: Training indices of this rank's share, and the share's offset and the size of the global batch.
    indices: list[int]
    offset: int
    global_size: int
    #: The teacher's unit noises (CPU), end states (on the problem's device) and the conditioning of ``indices``.
    noise: torch.Tensor
    real: torch.Tensor
    cond: dict[str, torch.Tensor]
    #: With the state loss on: the teacher's kept states and denoised outputs ``[b, 2P, *latent]`` (device); else None.
    states: torch.Tensor | None = None

    def fake_noise(self, config: DistillConfig) -> torch.Tensor:
        """This rank's share of the discriminator's fresh noise of this iteration."""
        full = fake_noise(config, self.step, (self.global_size, *self.noise.shape[1:]))
        return full[self.offset:self.offset + len(self.indices)]


def training_batch(problem: DistillProblem, config: DistillConfig, step: int, train_noise: torch.Tensor,
                   train_lat: torch.Tensor, dist: Dist | None = None,
                   train_states: torch.Tensor | ShardRows | None = None) -> Batch:
    """This rank's batch of iteration ``step`` from the training set (the teacher's noises and end states, and its
    kept trajectory where the state loss is on, in memory or read from the cache's shards)."""
    dist = dist or Dist()
    global_idx = batch_indices(config, step)
    idx = list(dist.local_slice(global_idx))
    return Batch(step=step, indices=idx, offset=dist.rank * len(idx), global_size=len(global_idx),
                 noise=train_noise[idx], real=train_lat[idx].to(problem.device),
                 cond=problem.conditions(idx),
                 states=None if train_states is None else train_states[idx].to(problem.device))
