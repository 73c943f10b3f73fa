"""What training changes, and so what a checkpoint holds: :class:`RunState`, and starting, resuming and saving it.

The state of a run is the iteration count, the solver's parameters, its Adam state and EMA, for GAS the
discriminator and its Adam state, an AMP grad scaler (fp16), and the CPU/CUDA RNG states; the data order and the
discriminator's fresh noise are pure functions of (seed, step) (:mod:`trainer.batches`), so restoring a state and
continuing gives the parameters of a run that never stopped. The file format is :mod:`trainer.checkpointing`'s.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from gas import GeneralizedSolver

from .checkpointing import check_compatible, load_state, save_state
from .config import DistillConfig
from .discriminator import LatentDiscriminator
from .distributed import Dist, tensors_digest
from .ema import EMA
from .errors import ConfigError
from .outputs import OutputPaths
from .problem import DistillProblem
from .schedule import set_initial_times
from .teacher import derive_seed

__all__ = ["RunState", "save_checkpoint", "start_or_resume"]


class RunState:
    """The trained parameters and optimiser states of one run, on the problem's device, at iteration ``step``."""

    def __init__(self, problem: DistillProblem, config: DistillConfig, *, fp16: bool = False,
                 distributed: bool = False) -> None:
        self.nfe, self.t_eps, self.schedule = config.nfe, config.t_eps, problem.schedule
        self.device = problem.device
        self.distributed = distributed  # the CUDA RNG is per device, so it is not saved under torchrun
        self.solver = GeneralizedSolver(config.nfe, t_eps=config.t_eps, schedule=problem.schedule)
        set_initial_times(self.solver, problem.schedule, config.time_init)
        self.solver.to(self.device)
        self.params = list(self.solver.parameters())
        if config.coef_lr_scale == 1.0:  # one group (the paper; the Adam state of earlier versions resumes)
            self.opt = torch.optim.Adam(self.params, lr=config.lr)
        else:  # the timesteps (mu_logit, t_couple) at lr, the coefficient corrections (a, c) at lr x the scale
            times = [self.solver.mu_logit, self.solver.t_couple]
            coefs = [p for p in self.params if all(p is not q for q in times)]
            self.opt = torch.optim.Adam([{"params": times, "lr_scale": 1.0},
                                         {"params": coefs, "lr_scale": float(config.coef_lr_scale)}], lr=config.lr)
        self.ema = EMA(self.params, config.ema)
        self.disc: LatentDiscriminator | None = None
        self.disc_opt: torch.optim.Optimizer | None = None
        if config.mode == "gas":
            shape = tuple(problem.latent_shape)
            if len(shape) not in (3, 4):
                raise ConfigError(f"the GAS discriminator needs image latents (C, H, W) or video latents "
                                  f"(C, T, H, W), got shape {list(shape)}; use `mode` gs")
            widths, groups = config.disc_architecture()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(config.seed, "discriminator"))
                self.disc = LatentDiscriminator(*shape, widths=widths, groups=groups, blocks=config.disc_blocks)
            self.disc.to(self.device).requires_grad_(False)
            self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=config.disc_lr)
        self.scaler = torch.amp.GradScaler("cuda") if fp16 else None
        self.step = 0
        #: ``select="best"``: the lowest held-out L1 seen, its iteration and its EMA parameters (CPU copies)
        self.best: tuple[float, int, list[torch.Tensor]] | None = None

    def state_dict(self, teacher_key: str, config: DistillConfig) -> dict[str, Any]:
        """The checkpoint's contents (CPU tensors, plus the config and the teacher-cache key it was trained with)."""
        st: dict[str, Any] = {
            "step": self.step, "solver": {k: v.detach().cpu() for k, v in self.solver.state_dict().items()},
            "ema": self.ema.state_dict(), "opt": self.opt.state_dict(), "rng": torch.get_rng_state(),
            "config": config.to_dict(), "teacher_key": teacher_key,
        }
        if torch.cuda.is_available() and self.device.type == "cuda" and not self.distributed:
            st["cuda_rng"] = torch.cuda.get_rng_state_all()
        if self.best is not None:
            st["best"] = {"l1": self.best[0], "step": self.best[1], "ema": [t.clone() for t in self.best[2]]}
        if self.disc is not None and self.disc_opt is not None:
            st["disc"] = {k: v.detach().cpu() for k, v in self.disc.state_dict().items()}
            st["disc_opt"] = self.disc_opt.state_dict()
        if self.scaler is not None:
            st["scaler"] = self.scaler.state_dict()
        return st

    def load_state_dict(self, st: dict[str, Any]) -> None:
        """Continue from a checkpoint's contents (see :meth:`state_dict`)."""
        self.solver.load_state_dict(st["solver"])
        self.opt.load_state_dict(st["opt"])
        self.ema.load_state_dict(st["ema"])
        self.ema.shadow = [s.to(self.device) for s in self.ema.shadow]
        if self.disc is not None and self.disc_opt is not None:
            self.disc.load_state_dict(st["disc"])
            self.disc_opt.load_state_dict(st["disc_opt"])
        if self.scaler is not None and "scaler" in st:
            self.scaler.load_state_dict(st["scaler"])
        torch.set_rng_state(st["rng"])
        if "cuda_rng" in st and torch.cuda.is_available() and not self.distributed:
            torch.cuda.set_rng_state_all(st["cuda_rng"])
        self.step = int(st["step"])
        if "best" in st:
            self.best = (float(st["best"]["l1"]), int(st["best"]["step"]), list(st["best"]["ema"]))

    def reset_ema(self) -> None:
        """Restart the EMA from the current parameters (after the initial grid changed)."""
        self.ema = EMA(self.params, self.ema.decay)

    def note_heldout(self, l1: float) -> None:
        """Remember the EMA parameters when held-out L1 ``l1`` (of the current EMA solver) is the lowest so far."""
        if self.best is None or l1 < self.best[0]:
            self.best = (l1, self.step, [s.detach().cpu().clone() for s in self.ema.shadow])

    def best_solver(self) -> GeneralizedSolver:
        """A CPU solver holding the best EMA parameters noted (:meth:`note_heldout`), else the current EMA's."""
        return self._solver_from(self.best[2] if self.best is not None else self.ema.shadow)

    def ema_solver(self) -> GeneralizedSolver:
        """A CPU copy of the solver holding the EMA parameters (what is evaluated and saved)."""
        return self._solver_from(self.ema.shadow)

    def _solver_from(self, tensors: list[torch.Tensor]) -> GeneralizedSolver:
        out = GeneralizedSolver(self.nfe, t_eps=self.t_eps, schedule=self.schedule)
        with torch.no_grad():
            for p, s in zip(out.parameters(), tensors, strict=True):
                p.copy_(s.detach().cpu())
        return out

    def sync_digest(self) -> str:
        """sha256 of every trained tensor (solver, EMA, discriminator): equal on every rank while in step."""
        tensors = [p.detach() for p in self.params] + list(self.ema.shadow)
        if self.disc is not None:
            tensors += [p.detach() for p in self.disc.parameters()]
        return tensors_digest(tensors)


def start_or_resume(run: RunState, config: DistillConfig, paths: OutputPaths, teacher_key: str,
                    dist: Dist | None = None) -> None:
    """With ``config.resume`` load the unfinished run's state (every rank reads rank 0's file), refusing one trained
    with other settings; otherwise remove a previous run's state and log (``overwrite``: start over)."""
    dist = dist or Dist()
    if config.resume:
        def resume() -> None:
            st = load_state(paths.state)
            check_compatible(st.get("config", {}), config.to_dict(), st.get("teacher_key", ""), teacher_key,
                             paths.state)
            run.load_state_dict(st)

        dist.agree(resume)
    elif paths.state.exists() and dist.is_main:
        paths.state.unlink()
        with contextlib.suppress(OSError):
            (paths.run_dir / "log.csv").unlink()


def save_checkpoint(run: RunState, config: DistillConfig, paths: OutputPaths, teacher_key: str,
                    dist: Dist | None = None) -> None:
    """Check that the ranks still train in step, then write the state (rank 0)."""
    dist = dist or Dist()
    if dist.distributed and not dist.same_digest(run.sync_digest()):
        raise RuntimeError(f"the processes' parameters differ at iteration {run.step}: they no longer train in step "
                           "(a bug; please report it)")
    if dist.is_main:
        save_state(paths.state, run.state_dict(teacher_key, config))
