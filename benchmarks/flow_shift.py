"""What a learned flow solver should do when the sampled model's shift differs from the one it was trained with.

Usage: ``OMP_NUM_THREADS=1 python -m benchmarks.flow_shift [--iters 400] [--samples 64]``

The teacher is analytic: the demo's class-conditional Gaussian mixture (:class:`trainer.demo.GaussianMixtureDenoiser`,
CFG 4) seen as a flow-matching model, ``x = (1-s) x0 + s eps``, whose exact denoiser is the VE one at
``x/(1-s)``, ``s/(1-s)``. A "resolution" factor ``r`` repeats every pixel ``r x r`` times (the data of the same
images at ``r`` times the width and height): averaging an ``r x r`` block divides the noise by ``r``, so the
denoiser is ``up(D_VE(pool(x)/(1-s), s/(r(1-s))))``, and the shift that keeps the problem the same in GAS time is
``r`` times the base one (the resolution rule of SD3 / Flux: the shift grows with the side length).

For each scenario a 4-step GS solver is trained (the trainer's Python API) at the training shift and sampled at
the new shift in three ways, scored by the held-out L1 to the exact ODE end state from the same start to the same
end sigma (a 512-step DPM-Solver++(3M) solve on a log-SNR-uniform grid):

* ``as trained``: the learned sigmas of the training shift (what the sampler does on a shift mismatch);
* ``re-mapped``: the learned GAS times mapped through the new shift's time map;
* ``retrained``: a solver trained at the new shift (the best a refusal could lead to).

DPM-Solver++(3M) and Euler on the new shift's uniform-time 4-step grid are the baselines. The table also prints the
machine state (torch version, threads) the numbers were taken with.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import gas
from trainer.baselines import ipndm
from trainer.config import DistillConfig
from trainer.demo import GaussianMixtureDenoiser

#: Mixture settings of the flow teacher (the trainer tests' tiny demo mixture).
MIXTURE = {"channels": 2, "size": 8, "classes": 3}
NFE = 4
REFERENCE_STEPS = 512
#: Seeds of the held-out noises (the trainer's teacher uses seed + index from 42 on).
HELDOUT_SEED = 1_000_000
#: Largest sigma the VE form is evaluated at (the denoiser at sigma 1 is its limit, the guided prior mean, to ~1e-9).
SIGMA_CAP = 1.0 - 1e-9


class FlowMixture:
    """Exact flow-matching denoiser ``(x, sigma, cond) -> x0`` of the demo mixture, optionally at ``r`` times the
    resolution (every pixel repeated ``r x r`` times)."""

    def __init__(self, resolution: int = 1, **mixture: Any) -> None:
        self.ve = GaussianMixtureDenoiser(**{**MIXTURE, **mixture})
        self.r = int(resolution)
        self.latent_shape = (self.ve.channels, self.ve.size * self.r, self.ve.size * self.r)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1).expand(x.shape[0])
        s = s.clamp(max=SIGMA_CAP)  # sigma = 1 (pure noise; the flow teacher starts there) is the limit
        keep = (1.0 - s).reshape(-1, 1, 1, 1)
        xs = x.to(torch.float64)
        if self.r > 1:
            xs = F.avg_pool2d(xs, self.r)
        d = self.ve(xs / keep, s / ((1.0 - s) * self.r), cond)  # float64: x/(1-s) is large near s = 1
        if self.r > 1:
            d = F.interpolate(d, scale_factor=self.r, mode="nearest")
        return d.to(x.dtype)

    def conditions(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return {"cond": torch.tensor([i % self.ve.classes for i in indices], dtype=torch.long)}


def heldout(model: FlowMixture, n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``n`` held-out unit noises (own seeds) and their class conditions."""
    noise = torch.stack([torch.randn(model.latent_shape, generator=torch.Generator().manual_seed(HELDOUT_SEED + i))
                         for i in range(n)])
    return noise, model.conditions(list(range(n)))


def solve(model: FlowMixture, noise: torch.Tensor, cond: dict[str, torch.Tensor], sigmas: torch.Tensor,
          schedule: gas.NoiseSchedule, solver: gas.GeneralizedSolver | None = None, euler: bool = False
          ) -> torch.Tensor:
    """End state at ``sigmas[-1]`` from ``sigmas[0] * noise`` (DPM-Solver++(3M) without a solver, or Euler)."""
    x = schedule.initial_state(noise, sigmas[0]).to(torch.float64)
    with torch.no_grad():
        if euler:
            return ipndm(model, x, sigmas, cond, schedule=schedule, order=1)
        return gas.sample_gas(model, x, sigmas, extra_args=cond, disable=True, solver=solver, schedule=schedule)


def reference(model: FlowMixture, noise: torch.Tensor, cond: dict[str, torch.Tensor],
              sigmas: torch.Tensor) -> torch.Tensor:
    """The exact ODE's end state for the grid ``sigmas`` (same start, same end): a fine log-SNR-uniform solve."""
    flow = gas.FlowSchedule(1.0)  # the sigma-space maps of flow states do not depend on the shift
    lam = flow.lam(flow.first_sigma(sigmas[:1].double()))[0], flow.lam(sigmas[-1:].double())[0]
    fine = torch.sigmoid(-torch.linspace(float(lam[0]), float(lam[1]), REFERENCE_STEPS + 1, dtype=torch.float64))
    fine[0], fine[-1] = sigmas[0], sigmas[-1]
    return solve(model, noise, cond, fine, flow)


def l1(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().flatten(1).mean(1).mean())


#: GS recipe of the benchmark's solvers (the trainer's defaults except these; lr 1e-2 and EMA 0.99 suit 4 parameters'
#: worth of a tiny problem, 512 training samples keep the held-out score close to the training one).
RECIPE: dict[str, Any] = {"iters": 2000, "lr": 1e-2, "ema": 0.99, "train_size": 512, "batch": 16}


def train(model: FlowMixture, shift: float, root: Path, name: str, **recipe: Any) -> gas.GeneralizedSolver:
    """A 4-step GS solver for ``model`` at ``shift``, trained with the trainer's Python API (teacher: 64-step
    DPM-Solver++(3M) on the log-SNR grid); ``recipe`` overrides :data:`RECIPE`."""
    from trainer.distill import distill_denoiser

    cfg = DistillConfig(**{**RECIPE, **recipe}, nfe=NFE, mode="gs", val_size=32, teacher_steps=64, teacher_batch=128,
                        eval_batch=64, ckpt_every=100_000, eval_every=100_000, log_every=100_000, report=False,
                        out_dir=str(root / "out"), cache_dir=str(root / "cache"), run_dir=str(root / "runs"),
                        name=name, overwrite=True)
    res = distill_denoiser(model, gas.FlowSchedule(shift), model.conditions, model.latent_shape, cfg, progress=False,
                           name=name, identity={"family": "flow-gmm", "resolution": model.r, **model.ve.settings})
    return res.solver


@dataclass
class Row:
    scenario: str
    values: dict[str, float]


def heldout_l1(model: FlowMixture, solver: gas.GeneralizedSolver | None, schedule: gas.NoiseSchedule,
               noise: torch.Tensor, cond: dict[str, torch.Tensor], euler: bool = False) -> float:
    """Held-out L1 of ``solver`` (None: the untrained grid's DPM-Solver++(3M) or Euler) sampled on ``schedule``."""
    grid_solver = solver if solver is not None else gas.GeneralizedSolver(NFE, schedule=schedule)
    sigmas = grid_solver.sigmas(schedule).detach().double()
    out = solve(model, noise, cond, sigmas, schedule, solver, euler=euler)
    return l1(out, reference(model, noise, cond, sigmas))


def scenario(label: str, train_model: FlowMixture, train_shift: float, model: FlowMixture, shift: float,
             root: Path, samples: int, cache: dict[tuple[int, float], gas.GeneralizedSolver], **recipe: Any) -> Row:
    """One table row: a solver trained on (``train_model``, ``train_shift``) sampled on (``model``, ``shift``)."""
    def trained(m: FlowMixture, a: float) -> gas.GeneralizedSolver:
        if (m.r, a) not in cache:
            cache[(m.r, a)] = train(m, a, root / f"r{m.r}-a{a:g}", f"flow-r{m.r}-a{a:g}", **recipe)
        return cache[(m.r, a)]

    noise, cond = heldout(model, samples)
    new = gas.FlowSchedule(shift)
    solver = trained(train_model, train_shift)
    values = {
        "as trained": heldout_l1(model, solver, solver.schedule, noise, cond),
        "re-mapped": heldout_l1(model, solver, new, noise, cond),
        "retrained": heldout_l1(model, trained(model, shift), new, noise, cond),
        "DPM++(3M)": heldout_l1(model, None, new, noise, cond),
        "Euler": heldout_l1(model, None, new, noise, cond, euler=True),
    }
    return Row(label, values)


def table(rows: list[Row], first: str = "scenario") -> str:
    cols = list(rows[0].values)
    lines = [f"| {first} | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    lines += [f"| {r.scenario} | " + " | ".join(f"{r.values[c]:.3g}" for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def acceptance(model: FlowMixture, solver: gas.GeneralizedSolver, shift: float, samples: int) -> Row:
    """The learned solver at its own shift against DPM-Solver++(3M) and Euler at the same 4 steps (L1 ratios)."""
    noise, cond = heldout(model, samples)
    sched = gas.FlowSchedule(shift)
    gs = heldout_l1(model, solver, sched, noise, cond)
    dpm = heldout_l1(model, None, sched, noise, cond)
    euler = heldout_l1(model, None, sched, noise, cond, euler=True)
    return Row(f"{shift:g}", {"GS": gs, "DPM++(3M)": dpm, "Euler": euler, "DPM++(3M) / GS": dpm / gs,
                              "Euler / GS": euler / gs})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=RECIPE["iters"], help="GS training iterations per solver")
    ap.add_argument("--samples", type=int, default=64, help="held-out samples per row")
    args = ap.parse_args(argv)
    logging.getLogger("trainer").setLevel(logging.WARNING)
    t0 = time.time()
    base, big = FlowMixture(1), FlowMixture(2)
    cache: dict[tuple[int, float], gas.GeneralizedSolver] = {}
    run = {"samples": args.samples, "cache": cache, "iters": args.iters}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = [
            scenario("same model, shift 1 -> 3", base, 1.0, base, 3.0, root, **run),
            scenario("same model, shift 3 -> 1", base, 3.0, base, 1.0, root, **run),
            scenario("2x resolution, shift 1 -> 2", base, 1.0, big, 2.0, root, **run),
            scenario("2x resolution, shift 3 -> 6", base, 3.0, big, 6.0, root, **run),
        ]
    accept = [acceptance(base, cache[(1, a)], a, args.samples) for a in (1.0, 3.0)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {NFE} steps, GS {args.iters} iterations, "
          f"{args.samples} held-out samples, {time.time() - t0:.0f} s")
    print("held-out L1 to the exact ODE end state, solver trained at one shift and sampled at another:")
    print(table(rows))
    print("\nthe learned solver at its own shift:")
    print(table(accept, first="shift"))


if __name__ == "__main__":
    main()
