"""torch.distributed support: one :class:`Dist` per process, built from the torchrun environment.

Under ``torchrun --nproc_per_node=K`` every process (a *rank*) runs the same program with ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` in its environment. :func:`init_distributed` turns that into a :class:`Dist`: it initialises the default
process group when ``WORLD_SIZE > 1`` and none exists yet (backend ``nccl`` when the device is CUDA, else ``gloo``; on
CUDA the rank's device is ``cuda:LOCAL_RANK``, made current with ``torch.cuda.set_device``), reuses a process group the
caller already initialised, and is a single-process no-op (``rank 0`` of ``1``) otherwise. Every helper below is a
no-op, or the identity, for one process, so the trainer has one code path.

How the trainer uses it (see :mod:`trainer.distill` and :mod:`trainer.teacher`):

* teacher generation: rank 0 lists the missing ``(shard, chunk)`` jobs and broadcasts them, job ``j`` goes to rank
  ``j % K``, each rank merges its jobs into the shared cache under the cache's file lock, then all ranks meet at a
  barrier and read the shards back;
* training: the global batch of an iteration is the same on every rank and rank ``r`` takes its contiguous
  :meth:`Dist.local_slice`; gradients are averaged with :meth:`Dist.all_reduce_mean_` before clipping, so every rank
  applies the identical update and the parameters stay identical;
* only rank 0 (:attr:`Dist.is_main`) writes training states, logs, the solver file and the report; decisions about
  files are made once by rank 0 (:meth:`Dist.main_decides`); errors are agreed so every rank raises the same one
  (:meth:`Dist.agree`, :func:`on_every_rank`).

Collectives of the ``nccl`` backend need CUDA tensors: the helpers move their data to the communication device and
back, so callers pass tensors from wherever they live.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as tdist

from .errors import ConfigError, TrainerError

__all__ = ["Dist", "env_rank", "init_distributed", "mark_on_every_rank", "on_every_rank", "shutdown_distributed"]

log = logging.getLogger("trainer")

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)

#: Timeout of every collective in a process group this module creates. Rank 0 alone scores and writes the report
#: while the others wait, and ranks load a large checkpoint at different speeds, so this is generous; a rank that
#: dies is noticed by torchrun, which then stops the others, long before.
PROCESS_GROUP_TIMEOUT = timedelta(minutes=60)

_created_group = False


def env_rank() -> int:
    """This process's rank from the torchrun environment (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0") or 0)


def env_world() -> int:
    """The number of processes from the torchrun environment (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def on_every_rank(exc: BaseException) -> bool:
    """Whether ``exc`` was raised identically on every rank (then rank 0 alone reports it)."""
    return bool(getattr(exc, "on_every_rank", False))


def mark_on_every_rank(exc: E) -> E:
    """Mark an error that every rank raises (see :func:`on_every_rank`); returns it."""
    with contextlib.suppress(AttributeError):
        exc.on_every_rank = True  # type: ignore[attr-defined]
    return exc



@dataclass(frozen=True)
class Dist:
    """This process's place among ``world`` processes, and the collectives the trainer needs."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    #: The device this rank computes on (``cuda:LOCAL_RANK`` under torchrun on GPUs).
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: ``"nccl"`` / ``"gloo"`` (None for one process).
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def comm_device(self) -> torch.device:
        """Where collective tensors must live: the current CUDA device for nccl, else the CPU."""
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def describe(self) -> str:
        return f"rank {self.rank} of {self.world} ({self.backend or 'single process'}, {self.device})"

    # ----- collectives ---------------------------------------------------------------------------------------------
    def barrier(self) -> None:
        """Wait until every rank got here."""
        if self.world > 1:
            if self.backend == "nccl":
                tdist.barrier(device_ids=[self.comm_device.index])
            else:
                tdist.barrier()

    def all_reduce_mean_(self, tensors: Sequence[torch.Tensor | None]) -> None:
        """Average ``tensors`` over the ranks, in place (None entries are skipped; a no-op for one process).

        Tensors are flattened into one buffer per dtype, so a whole gradient takes one collective per dtype; every
        rank receives the same sum, so the results are bit-identical across ranks.
        """
        if self.world == 1:
            return
        groups: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            if t is not None:
                groups.setdefault(t.dtype, []).append(t)
        for dtype in sorted(groups, key=str):
            ts = groups[dtype]
            flat = torch.cat([t.detach().reshape(-1).to(self.comm_device) for t in ts])
            tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
            flat.div_(self.world)
            offset = 0
            with torch.no_grad():
                for t in ts:
                    n = t.numel()
                    t.copy_(flat[offset:offset + n].view_as(t))
                    offset += n

    def all_reduce_sum(self, values: Sequence[float]) -> list[float]:
        """Sum of each number over the ranks (float64; the identity for one process)."""
        if self.world == 1:
            return [float(v) for v in values]
        buf = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.comm_device)
        tdist.all_reduce(buf, op=tdist.ReduceOp.SUM)
        return buf.cpu().tolist()

    def any_flag(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank (all-reduce MAX)."""
        if self.world == 1:
            return bool(flag)
        buf = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.comm_device)
        tdist.all_reduce(buf, op=tdist.ReduceOp.MAX)
        return bool(buf.item())

    def broadcast_object(self, obj: T, src: int = 0) -> T:
        """Rank ``src``'s ``obj`` (picklable) on every rank."""
        if self.world == 1:
            return obj
        box = [obj if self.rank == src else None]
        tdist.broadcast_object_list(box, src=src, device=self.comm_device if self.backend == "nccl" else None)
        return box[0]  # type: ignore[return-value]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def all_gather_rows(self, local: torch.Tensor) -> torch.Tensor:
        """Concatenation along dim 0 of every rank's ``local`` (row counts may differ), in rank order, on every rank.

        Returned on ``local``'s device and dtype. Rank ``r``'s rows must be the ``r``-th part of a split such as
        :meth:`local_range`'s for the result to be in the original order.
        """
        if self.world == 1:
            return local
        counts = [int(c) for c in self.all_gather_object(int(local.shape[0]))]
        padded = torch.zeros((max(counts), *local.shape[1:]), dtype=local.dtype, device=self.comm_device)
        padded[:local.shape[0]] = local.to(self.comm_device)
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        tdist.all_gather(parts, padded)
        return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)]).to(local.device)

    # ----- splitting work ------------------------------------------------------------------------------------------
    def local_slice(self, seq: Sequence[T]) -> Sequence[T]:
        """Rank ``r``'s contiguous part of a global batch (its length must be divisible by the number of ranks)."""
        n = len(seq)
        if n % self.world:
            raise ConfigError(f"a batch of {n} cannot be split evenly over {self.world} processes")
        per = n // self.world
        return seq[self.rank * per:(self.rank + 1) * per]

    def local_range(self, n: int) -> tuple[int, int]:
        """``(start, stop)`` of rank ``r``'s contiguous share of ``n`` items (shares differ by at most one)."""
        return self.rank * n // self.world, (self.rank + 1) * n // self.world

    # ----- agreeing ------------------------------------------------------------------------------------------------
    def main_decides(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and give every rank its result, or raise its error on every rank.

        For decisions about files that rank 0 then changes (an existing output, an unfinished run, ...): every rank
        gets the same answer. A :class:`~trainer.errors.TrainerError` from ``fn`` is raised on every rank (marked
        :func:`on_every_rank`); any other exception on rank 0 stops the others with a RuntimeError.
        """
        if self.world == 1:
            return fn()
        outcome: tuple[str, Any] = ("ok", None)
        error: BaseException | None = None
        if self.is_main:
            try:
                outcome = ("ok", fn())
            except TrainerError as exc:
                error, outcome = exc, ("error", exc)
            except Exception as exc:
                error, outcome = exc, ("crash", f"{type(exc).__name__}: {exc}")
        kind, value = self.broadcast_object(outcome)
        if error is not None:
            if kind == "error":
                mark_on_every_rank(error)
            raise error
        if kind == "error":
            raise mark_on_every_rank(value)
        if kind == "crash":
            raise RuntimeError(f"rank 0 failed ({value})")
        return value  # type: ignore[no-any-return]

    def agree(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on every rank; if it raises a :class:`~trainer.errors.TrainerError` on any rank, raise the
        lowest such rank's error on every rank (marked :func:`on_every_rank`). Other exceptions propagate."""
        if self.world == 1:
            return fn()
        error: TrainerError | None = None
        result: Any = None
        try:
            result = fn()
        except TrainerError as exc:
            error = exc
        errors = self.all_gather_object(error)
        first = next(((r, exc) for r, exc in enumerate(errors) if exc is not None), None)
        if first is not None:
            r, exc = first
            if r == self.rank and error is not None:
                exc = error  # our own object, with its traceback
            if r != 0:
                with contextlib.suppress(Exception):
                    exc = type(exc)(f"{exc.template} (on process {r})")
            raise mark_on_every_rank(exc)
        return result  # type: ignore[no-any-return]

    def same_digest(self, digest: str) -> bool:
        """Whether rank 0's ``digest`` equals every rank's (the same answer on every rank)."""
        if self.world == 1:
            return True
        ref = self.broadcast_object(digest)
        return not self.any_flag(ref != digest)


def json_digest(data: Any) -> str:
    """sha256 (hex) of ``data`` as canonical JSON (sorted keys; values JSON cannot hold are written as ``str``)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def tensors_digest(tensors: Sequence[torch.Tensor]) -> str:
    """sha256 of the bytes of ``tensors`` (to check that ranks hold bit-identical parameters)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def init_distributed(device_hint: str | torch.device = "cpu") -> Dist:
    """This process's :class:`Dist` (see the module docstring); ``device_hint`` is the device the work runs on.

    * a process group exists already (the caller's, or one made by an earlier call): reuse it; the device is
      ``device_hint`` unchanged;
    * ``WORLD_SIZE > 1`` (torchrun): initialise the default group from the environment (``env://``): ``nccl`` for a
      CUDA ``device_hint``, whose device becomes ``cuda:LOCAL_RANK`` (made current), else ``gloo``;
    * otherwise: one process, ``Dist(rank=0, world=1, device=device_hint)``.
    """
    global _created_group
    dev = torch.device(device_hint)
    world = env_world()
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if tdist.is_available() and tdist.is_initialized():
        backend = str(tdist.get_backend())
        rank, world = tdist.get_rank(), tdist.get_world_size()
        if world == 1:
            return Dist(device=dev)
        return Dist(rank=rank, world=world, local_rank=local_rank, device=dev, backend=backend)
    if world <= 1:
        return Dist(device=dev)
    if not tdist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if dev.type == "cuda":
        if dev.index is not None and dev.index != local_rank:
            log.warning("process %d (LOCAL_RANK %d) was asked to work on %s: every process should use its own GPU, "
                        "cuda:LOCAL_RANK", env_rank(), local_rank, dev)
        else:
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        backend = "gloo"
    tdist.init_process_group(backend=backend, timeout=PROCESS_GROUP_TIMEOUT)
    _created_group = True
    return Dist(rank=tdist.get_rank(), world=tdist.get_world_size(), local_rank=local_rank, device=dev,
                backend=backend)


def shutdown_distributed(*, all_ranks_here: bool = True) -> None:
    """Destroy the process group if :func:`init_distributed` created it (a process group the caller made stays).

    Call it at the end of a program run under torchrun (the CLI does). With ``all_ranks_here`` (every rank is known to
    have reached this point: success, or an error raised on every rank) it first meets the other ranks at a barrier
    and afterwards collects garbage, so that gloo's worker threads have released every tensor before the interpreter
    exits: a group left to interpreter exit was seen to abort the process about one time in two ("terminate called
    without an active exception", torch 2.14, CPU), and so was destroying it from an ``atexit`` hook. Without it (an
    error of this rank alone, an interrupt) there is no barrier, which could wait for a rank that never comes; the
    process then exits non-zero and torchrun stops the others.
    """
    global _created_group
    if _created_group and tdist.is_available() and tdist.is_initialized():
        with contextlib.suppress(Exception):
            if all_ranks_here:
                tdist.barrier()
            tdist.destroy_process_group()
        gc.collect()
    _created_group = False
