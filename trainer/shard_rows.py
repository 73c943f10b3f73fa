"""Teacher outputs read from the cache's shards on demand, for outputs too large to hold in memory.

The state loss's training samples carry ``1 + 2P`` latents each (the end state, then P kept states and their
denoised outputs; :mod:`trainer.trajectory`): 33 latents per sample, about 3 GB for 1400 SD1.5 samples at 512 px
and 12 GB for SDXL at 1024 px. :class:`ShardRows` keeps each shard memory-mapped (safetensors) and reads only the
rows a batch asks for, so the resident memory is the operating system's page cache, shared by every process of a
torchrun run, instead of one full copy per process.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["ShardRows"]


class ShardRows:
    """``rows[positions]``: the stored teacher outputs of ``indices[p]`` for each ``p`` in ``positions``, stacked,
    as ``[len(positions), *shape[1:]]`` float32 (CPU), restricted to ``part`` of each sample's first dimension.

    ``shards`` maps a shard's number to its file; every index must be stored in the shard ``index // shard_size``
    (the caller has checked the shards, :meth:`trainer.teacher.TeacherCache.get`).
    """

    def __init__(self, shards: dict[int, Path], shard_size: int, indices: Sequence[int],
                 target_shape: Sequence[int], part: slice = slice(None)) -> None:
        from safetensors import safe_open

        self._handles: list[Any] = []  # kept open: the slices read through them
        self._slices: dict[int, Any] = {}
        rows_of: dict[int, dict[int, int]] = {}
        for shard, path in sorted(shards.items()):
            handle = safe_open(str(path), framework="pt", device="cpu")
            self._handles.append(handle)
            self._slices[shard] = handle.get_slice("latents")
            rows_of[shard] = {int(i): r for r, i in enumerate(handle.get_tensor("indices").tolist())}
        self._where = [(int(i) // shard_size, rows_of[int(i) // shard_size][int(i)]) for i in indices]
        self._first = range(int(target_shape[0]))[part]
        self._rest = tuple(int(d) for d in target_shape[1:])
        if self._first.step != 1:
            raise ValueError("ShardRows reads contiguous parts only")

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self._where), len(self._first), *self._rest)

    def __len__(self) -> int:
        return len(self._where)

    def select(self, part: slice) -> ShardRows:
        """The same rows restricted to ``part`` of each sample's (current) first dimension."""
        view = object.__new__(ShardRows)
        view._handles, view._slices, view._where, view._rest = self._handles, self._slices, self._where, self._rest
        view._first = self._first[part]
        if view._first.step != 1:
            raise ValueError("ShardRows reads contiguous parts only")
        return view

    def __getitem__(self, positions: Sequence[int]) -> torch.Tensor:
        if isinstance(positions, int):
            raise TypeError("ShardRows takes a list of positions")
        parts = []
        for p in positions:
            shard, row = self._where[int(p)]
            parts.append(self._slices[shard][row:row + 1, self._first.start:self._first.stop])
        if not parts:
            return torch.empty((0, *self.shape[1:]), dtype=torch.float32)
        return torch.cat(parts).float()
