"""Teacher trajectories and their on-disk cache.

The teacher integrates the same ODE as the student, from the same start and to the same end, with many more steps:

* start: sample ``i``'s unit noise is ``randn(latent_shape, generator=Generator().manual_seed(seed + i))`` (CPU,
  float32), and the state is ``schedule.initial_state(noise, s_0)`` with ``s_0 = schedule.sigma_of_time(1)``, the
  first sigma of every solver grid;
* end: ``s_N = schedule.sigma_of_time(t_eps)``, the state there, with no final denoise (GAS compares states at
  ``s_N``).

Teachers: ``dpmpp3m`` = DPM-Solver++(3M) (``gas.sample_gas(solver=None)``) on a grid uniform in log-SNR (default, 64
steps; see the README for the convergence measurement) or in GAS time; ``ipndm-gits`` = iPNDM (order 2 by default)
on GITS sigmas with NFE ``n + 1`` (the paper's SD teacher; :mod:`trainer.gits`).

Generation is a pure function of a list of sample indices (:func:`run_teacher` on :func:`sample_noise`), so several
processes can split the indices (torchrun: :meth:`TeacherCache.get` with a :class:`~trainer.distributed.Dist`).
:class:`TeacherCache` stores the results in shards of 64 consecutive indices (``shard-<k>.safetensors`` holding
``indices``, ``noise``, ``latents``, with a sha256 of the tensors in the metadata), written to a temporary file and
renamed into place, in a folder named after a sha256 of the model identity and the teacher settings; a damaged shard
is reported, deleted and regenerated. New samples are merged into a shard under an advisory inter-process file lock
(read, merge, write, rename), so several ranks of one run, or two runs, can fill the same cache at once: no sample
is lost or stored twice, and a reader never sees a partly written shard.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gas import sample_gas
from gas.atomic_file import write_atomically

from .baselines import dpm_grid, ipndm
from .config import DistillConfig
from .distributed import Dist, json_digest, mark_on_every_rank
from .errors import TeacherCacheError, TrainingInterruptedError
from .gits import logsnr_grid, search_gits_sigmas
from .problem import DistillProblem
from .shard_rows import ShardRows

__all__ = [
    "SHARD_SIZE",
    "TeacherCache",
    "TeacherSpec",
    "derive_seed",
    "end_sigmas",
    "kept_sigmas",
    "make_teacher_spec",
    "run_teacher",
    "run_teacher_trajectory",
    "sample_noise",
]

log = logging.getLogger("trainer")

SHARD_SIZE = 64
_SHARD_FORMAT = "gas-teacher-shard"
_SHARD_VERSION = 1
#: Warm-up samples of the GITS-style grid search (taken from the training indices).
GITS_WARMUP = 16


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed derived from ``seed`` and a purpose (e.g. ``("order", epoch)``), stable across runs/platforms."""
    text = json.dumps([seed, *[str(p) for p in parts]])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def sample_noise(indices: Sequence[int], shape: Sequence[int], seed: int) -> torch.Tensor:
    """Unit noise of the given sample indices, ``[n, *shape]`` float32 on CPU (sample ``i`` uses ``seed + i``)."""
    out = torch.empty((len(indices), *shape), dtype=torch.float32)
    for row, i in enumerate(indices):
        out[row] = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(seed) + int(i)))
    return out


def end_sigmas(problem: DistillProblem, t_eps: float) -> tuple[float, float]:
    """``(s_0, s_N)``: the first and last sigma of every solver grid (GAS times 1 and ``t_eps``)."""
    t = torch.tensor([1.0, t_eps], dtype=torch.float64)
    s = problem.schedule.sigma_of_time(t)
    return float(s[0]), float(s[1])


@dataclass(frozen=True)
class TeacherSpec:
    """A fully resolved teacher: the solver, its order and its sigma grid (``s_0 .. s_N``, no trailing 0)."""

    kind: str
    steps: int
    order: int
    grid: str
    sigmas: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "steps": self.steps, "order": self.order, "grid": self.grid,
                "sigmas": [round(s, 12) for s in self.sigmas]}

    def describe(self) -> str:
        ends = f"sigma {self.sigmas[0]:.4g} -> {self.sigmas[-1]:.4g}"
        if self.kind == "dpmpp3m":
            return f"DPM-Solver++(3M), {self.steps} steps uniform in {self.grid}, {ends}"
        return f"iPNDM (order {self.order}) on {self.grid} sigmas, {self.steps} steps, {ends}"


def make_teacher_spec(problem: DistillProblem, config: DistillConfig) -> TeacherSpec:
    """Resolve the configured teacher into a :class:`TeacherSpec` for this problem (may search a GITS grid)."""
    s0, s_end = end_sigmas(problem, config.t_eps)
    steps = config.resolved_teacher_steps
    if config.teacher == "dpmpp3m":
        if config.teacher_grid == "logsnr":
            sig = logsnr_grid(problem.schedule, s0, s_end, steps)
        else:
            t = torch.linspace(1.0, config.t_eps, steps + 1, dtype=torch.float64)
            sig = problem.schedule.sigma_of_time(t)
        return TeacherSpec("dpmpp3m", steps, 3, config.teacher_grid, tuple(float(v) for v in sig))
    sigmas: list[float] | None = None
    grid = "GITS"
    if problem.gits_sigmas is not None:
        given = [float(v) for v in problem.gits_sigmas(steps)]
        if len(given) == steps + 1 and abs(given[0] / s0 - 1) < 1e-3 and abs(given[-1] / s_end - 1) < 1e-3:
            sigmas = [s0, *given[1:-1], s_end]
        else:
            log.warning("the model's GITS table does not fit this solver's range (%s steps, sigma %.4g -> %.4g); "
                        "searching a GITS-style grid instead", steps, s0, s_end)
    if sigmas is None:
        grid = "GITS-style searched"
        idx = list(range(min(GITS_WARMUP, config.training_samples)))
        noise = sample_noise(idx, problem.latent_shape, config.seed).to(problem.device)
        x = problem.schedule.initial_state(noise, s0).to(problem.dtype)
        sigmas = search_gits_sigmas(problem.denoiser, problem.schedule, x, problem.conditions(idx), s0, s_end, steps)
    return TeacherSpec("ipndm-gits", steps, config.teacher_order, grid, tuple(sigmas))


@torch.no_grad()
def run_teacher(problem: DistillProblem, spec: TeacherSpec, noise: torch.Tensor, cond: dict[str, Any],
                autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
                callback: Callable[[dict[str, Any]], None] | None = None) -> torch.Tensor:
    """Teacher end states (float32, on ``noise``'s device) for a batch of unit noises and their conditioning
    (``callback``: k-diffusion's ``{x, i, sigma, denoised}`` after each model call)."""
    s = torch.tensor(spec.sigmas, dtype=torch.float64)
    x = problem.schedule.initial_state(noise, s[0]).to(problem.dtype)
    with autocast():
        if spec.kind == "dpmpp3m":
            out = sample_gas(problem.denoiser, x, s, extra_args=cond, disable=True, schedule=problem.schedule,
                             callback=callback)
        else:
            out = ipndm(problem.denoiser, x, s, cond, schedule=problem.schedule, order=spec.order, callback=callback)
    return out.float()


def run_teacher_trajectory(problem: DistillProblem, spec: TeacherSpec, noise: torch.Tensor, cond: dict[str, Any],
                           keep: Sequence[int],
                           autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
                           ) -> torch.Tensor:
    """``[B, 1 + 2P, *latent]`` float32: the teacher's end states, then its states and then its denoised outputs at
    the P steps ``keep`` (``trainer.trajectory.kept_steps``)."""
    wanted = {int(k): row for row, k in enumerate(keep)}
    states: list[torch.Tensor | None] = [None] * len(keep)
    denoised: list[torch.Tensor | None] = [None] * len(keep)

    def record(info: dict[str, Any]) -> None:
        row = wanted.get(int(info["i"]))
        if row is not None:
            states[row], denoised[row] = info["x"].float(), info["denoised"].float()

    end = run_teacher(problem, spec, noise, cond, autocast, callback=record)
    if any(t is None for t in states):
        raise ValueError(f"the teacher has {spec.steps} steps; cannot keep steps {list(keep)}")
    return torch.stack([end, *states, *denoised], 1)  # type: ignore[list-item]


def kept_sigmas(problem: DistillProblem, spec: TeacherSpec, keep: Sequence[int]) -> torch.Tensor:
    """``[P]`` float64: the sigmas of the teacher states kept at steps ``keep`` (the first one as the teacher's first
    step treats it, ``schedule.first_sigma``)."""
    return dpm_grid(problem.schedule, torch.tensor(spec.sigmas, dtype=torch.float64))[list(keep)]


def _checksum(indices: torch.Tensor, noise: torch.Tensor, latents: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in (indices, noise, latents):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


class TeacherCache:
    """Shards of teacher samples in ``root/teacher-<key>/`` (see the module docstring).

    ``key_data`` is everything the teacher output depends on; its sha256 names the folder and is checked in every
    shard. ``generate(indices) -> (noise, latents)`` produces missing samples (CPU float32).
    """

    def __init__(self, root: str | Path, key_data: dict[str, Any], latent_shape: Sequence[int],
                 target_shape: Sequence[int] | None = None) -> None:
        self.key = json_digest(key_data)
        self.latent_shape = tuple(latent_shape)
        #: The shape of a sample's stored teacher output: the latent's, or ``[1 + 2P, *latent]`` with its trajectory.
        self.target_shape = tuple(target_shape) if target_shape is not None else self.latent_shape
        self.dir = Path(root) / f"teacher-{self.key[:20]}"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            manifest = self.dir / "key.json"
            if not manifest.exists():
                text = json.dumps(key_data, indent=2, sort_keys=True, default=str)
                write_atomically(manifest, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        except OSError as exc:
            raise TeacherCacheError(f"cannot use the teacher cache folder {self.dir} ({exc.strerror or exc})") from None

    # ----- files ---------------------------------------------------------------------------------------------------
    def shard_path(self, shard: int) -> Path:
        return self.dir / f"shard-{shard:07d}.safetensors"

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Advisory inter-process lock around read-merge-write of a shard (POSIX; elsewhere renames stay atomic)."""
        try:
            import fcntl
        except ImportError:
            yield
            return
        with open(self.dir / ".lock", "a+") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def read_shard(self, shard: int, *, locked: bool = False) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """The samples stored in a shard (``{}`` if absent; a damaged shard is reported and deleted).

        ``locked``: the caller holds the cache lock. A shard that reads as damaged is read again under the lock before
        it is deleted, so a reader never deletes a shard another process has just replaced with a good one.
        """
        path = self.shard_path(shard)
        if not path.exists():
            return {}
        try:
            return self._load(path, shard)
        except Exception as exc:  # damaged in any way: report, delete, regenerate
            if not locked:
                with self._lock():
                    return self.read_shard(shard, locked=True)
            log.warning("teacher cache shard %s is damaged (%s); it will be regenerated", path.name, exc)
            with contextlib.suppress(OSError):
                path.unlink()
            return {}

    def _load(self, path: Path, shard: int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as handle:
            meta = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        if meta.get("format") != _SHARD_FORMAT or meta.get("key") != self.key:
            raise ValueError("it belongs to other settings")
        idx, noise, lat = tensors.get("indices"), tensors.get("noise"), tensors.get("latents")
        if idx is None or noise is None or lat is None:
            raise ValueError("tensors are missing")
        n = idx.numel()
        shape = (n, *self.latent_shape)
        if tuple(noise.shape) != shape or tuple(lat.shape) != (n, *self.target_shape):
            raise ValueError(f"unexpected shapes {list(noise.shape)} / {list(lat.shape)}")
        if meta.get("sha256") != _checksum(idx, noise, lat):
            raise ValueError("checksum mismatch")
        if (idx // SHARD_SIZE != shard).any() or idx.unique().numel() != n:
            raise ValueError("indices out of place")
        if not (torch.isfinite(lat).all() and torch.isfinite(noise).all()):
            raise ValueError("non-finite values")
        return {int(i): (noise[r], lat[r]) for r, i in enumerate(idx.tolist())}

    def write_shard(self, shard: int, entries: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Write (replace) a shard atomically."""
        from safetensors.torch import save_file

        order = sorted(entries)
        idx = torch.tensor(order, dtype=torch.int64)
        noise = torch.stack([entries[i][0] for i in order]).float().contiguous()
        lat = torch.stack([entries[i][1] for i in order]).float().contiguous()
        meta = {"format": _SHARD_FORMAT, "version": str(_SHARD_VERSION), "key": self.key,
                "sha256": _checksum(idx, noise, lat)}
        write_atomically(self.shard_path(shard),
                         lambda tmp: save_file({"indices": idx, "noise": noise, "latents": lat}, tmp, metadata=meta))

    def merge(self, shard: int, new: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Add samples to a shard: read, merge and write it back atomically, under the cache's inter-process lock.

        Samples already there are replaced by the same values (the teacher is a pure function of the index), so two
        processes or runs merging into one shard at once lose nothing and duplicate nothing.
        """
        with self._lock():
            # shards are only written under this lock, so a shard's temporary file found now was left by a writer
            # that was killed mid-write (SIGKILL or SIGTERM skip its clean-up): remove it
            for stale in self.dir.glob(".shard-*.tmp"):
                stale.unlink(missing_ok=True)
            merged = self.read_shard(shard, locked=True)
            merged.update(new)
            self.write_shard(shard, merged)

    # ----- main entry ------------------------------------------------------------------------------------------------
    def get(self, indices: Sequence[int], generate: Callable[[list[int]], tuple[torch.Tensor, torch.Tensor]], *,
            batch: int = 16, progress: bool = True, desc: str = "teacher", dist: Dist | None = None,
            report: Callable[[int, int], None] | None = None, should_stop: Callable[[], bool] | None = None,
            in_memory: bool = True) -> tuple[torch.Tensor, torch.Tensor | ShardRows]:
        """``(noise, latents)`` of ``indices`` in that order, generating and storing the missing ones shard by shard.
        With ``in_memory`` False the latents stay in the shards and come as :class:`~trainer.shard_rows.ShardRows`
        (read on demand; no process holds them all), the noises still as a tensor.

        The missing samples of each shard are cut into jobs of at most ``batch`` samples. One process generates them
        all; under torch.distributed (``dist`` with K ranks) rank 0 lists the jobs and broadcasts the list, job ``j``
        goes to rank ``j % K``, each rank merges its samples into the shards (:meth:`merge`, once per shard), and
        after a barrier every rank reads the shards back. Every rank must call this with the same arguments. An
        interruption loses at most the shard a process was generating; a sample that is still missing at the end is
        a :class:`~trainer.errors.TeacherCacheError` on every rank.

        ``report(done, total)`` is called with the samples generated so far (this process's); ``should_stop()`` is
        asked after every job: when it answers True the samples generated so far are stored and
        :class:`~trainer.errors.TrainingInterruptedError` is raised (one process only).
        """
        dist = dist or Dist()
        indices = [int(i) for i in indices]

        def kept(sample: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
            # a shard's tensors map its file: a kept view would keep the whole file mapped, so the noise is copied
            return sample if in_memory else (sample[0].clone(), None)

        by_shard: dict[int, list[int]] = {}
        for i in indices:
            by_shard.setdefault(i // SHARD_SIZE, []).append(i)
        found: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        jobs: list[tuple[int, list[int]]] = []
        if dist.is_main:
            for shard, wanted in sorted(by_shard.items()):
                stored = self.read_shard(shard)
                found.update({i: kept(stored[i]) for i in wanted if i in stored})
                todo = sorted({i for i in wanted if i not in stored})
                jobs.extend((shard, todo[start:start + batch]) for start in range(0, len(todo), batch))
        jobs = dist.broadcast_object(jobs)
        mine = jobs[dist.rank::dist.world]
        total = sum(len(chunk) for _, chunk in jobs)
        if total and dist.is_main:
            on = f" on {dist.world} processes" if dist.world > 1 else ""
            log.info("%s: generating %d of %d samples into %s%s", desc, total, len(set(indices)), self.dir, on)
        if mine:
            bar = _progress(sum(len(chunk) for _, chunk in mine), desc, progress and dist.is_main)
            todo_here, done_here = sum(len(chunk) for _, chunk in mine), 0
            if report is not None:
                report(0, todo_here)
            try:
                pending_shard, pending = -1, {}
                for shard, chunk in mine:
                    if should_stop is not None and should_stop():
                        if pending:
                            self.merge(pending_shard, pending)
                        raise TrainingInterruptedError(
                            f"stopped while generating teacher samples ({desc}); the {done_here} samples generated "
                            f"so far are kept in {self.dir}")
                    if shard != pending_shard and pending:
                        self.merge(pending_shard, pending)
                        found.update({i: kept(v) for i, v in pending.items()})
                        pending = {}
                    pending_shard = shard
                    noise, lat = generate(chunk)
                    pending.update({i: (noise[r].cpu(), lat[r].cpu()) for r, i in enumerate(chunk)})
                    bar.update(len(chunk))
                    done_here += len(chunk)
                    if report is not None:
                        report(done_here, todo_here)
                if pending:
                    self.merge(pending_shard, pending)
                    found.update({i: kept(v) for i, v in pending.items()})
            finally:
                bar.close()
        if dist.world > 1:
            dist.barrier()  # every rank's samples are in the shards now
            reread = sorted(by_shard) if not dist.is_main else sorted({shard for shard, _ in jobs})
            for shard in reread:
                stored = self.read_shard(shard)
                found.update({i: kept(stored[i]) for i in by_shard[shard] if i in stored})
        lost = sorted({i for i in indices if i not in found})
        if dist.any_flag(bool(lost)):
            raise mark_on_every_rank(TeacherCacheError(
                f"the teacher cache {self.dir} lacks {len(lost) or 'some'} samples right after generating them "
                f"(first missing index {lost[0] if lost else 'on another process'}); another program may have deleted "
                "or damaged shards: run the command again"))
        noise = torch.stack([found[i][0] for i in indices])
        if not in_memory:
            shards = {shard: self.shard_path(shard) for shard in by_shard}
            return noise, ShardRows(shards, SHARD_SIZE, indices, self.target_shape)
        lat = torch.stack([found[i][1] for i in indices])  # type: ignore[misc]
        return noise, lat


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="sample", dynamic_ncols=True)
