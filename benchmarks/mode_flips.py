"""Where a few-step solver's held-out error comes from on the recipe bench's mixture teachers: mode flips.

Usage: ``OMP_NUM_THREADS=1 python -m benchmarks.mode_flips [--teacher demo] [--nfe 6] [--seed 1]
[--settings "paper,lr 3e-3+cosine+cauchy 10 loss"] [--heldout 8192] [--exact-cache DIR]``

For each setting it trains the GS solver of ``benchmarks.recipe`` (same config, 2000 iterations by default) and
scores it on the bench's held-out samples. A sample *flips* when the solver's end state lies nearest to another
component mean of its class than the exact ODE's end state does. Printed per setting: the flip rate, the share of
the mean held-out L1 that the flipped samples make, the L1 of the others, and, per solver step, the fraction of the
flipped samples whose denoised output at that step still points to the exact ODE's component (where the solver
takes the wrong turn). Mixture teachers only (``demo``, ``hard``, ``tiny``).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from gas import sample_gas
from trainer.distill import distill
from trainer.losses import l1_latents
from trainer.runtime import start_state

from .recipe import SETTINGS, TEACHERS, held_out, run_config

MIXTURE_TEACHERS = ("demo", "hard", "tiny")


def nearest_component(x: torch.Tensor, means: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Index (within its class) of the component mean nearest to each sample: ``x`` [N, ...], ``means`` [C, M, D],
    ``classes`` [N]."""
    own = means[classes].to(x.device, torch.float32)  # [N, M, D]
    return ((x.flatten(1).float()[:, None, :] - own) ** 2).sum(-1).argmin(1)


def flip_stats(student: torch.Tensor, exact: torch.Tensor, means: torch.Tensor, classes: torch.Tensor
               ) -> dict[str, Any]:
    """Flip mask, the exact end states' components and the split of the mean per-sample L1 between flipped and
    other samples."""
    per_sample = l1_latents(student, exact)
    exact_component = nearest_component(exact, means, classes)
    flip = nearest_component(student, means, classes) != exact_component
    return {"flip": flip, "exact_component": exact_component, "rate": float(flip.float().mean()),
            "l1": float(per_sample.mean()),
            "flip_share": float(per_sample[flip].sum() / per_sample.sum()),
            "l1_others": float(per_sample[~flip].mean()) if bool((~flip).any()) else 0.0}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default="demo", choices=MIXTURE_TEACHERS)
    ap.add_argument("--settings", default="paper,lr 3e-3+cosine+cauchy 10 loss",
                    help="comma-separated, of benchmarks.recipe's settings")
    ap.add_argument("--nfe", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1, help="training seed")
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--train-size", type=int, default=1400)
    ap.add_argument("--val-size", type=int, default=64)
    ap.add_argument("--heldout", type=int, default=8192)
    ap.add_argument("--exact-steps", type=int, default=512)
    ap.add_argument("--exact-cache", type=Path, default=None)
    args = ap.parse_args(argv)
    settings = [s for s in args.settings.split(",") if s]
    for s in settings:
        if s not in SETTINGS:
            ap.error(f"unknown setting {s!r}")
    logging.getLogger("trainer").setLevel(logging.WARNING)
    problem = TEACHERS[args.teacher]()
    den = problem.denoiser
    means = den.means.reshape(den.classes, den.components, -1)
    ref = held_out(problem, args.heldout, args.exact_steps, args.exact_cache)
    classes = ref.cond["cond"]
    for setting in settings:
        with tempfile.TemporaryDirectory() as tmp:
            res = distill(problem, run_config(Path(tmp), args.teacher, setting, args.nfe, args.seed, args),
                          progress=False)
        stats = flip_stats(ref.sample(problem, res.solver), ref.exact, means, classes)
        flip = stats["flip"]
        print(f"{args.teacher} | {setting} | NFE {args.nfe} | seed {args.seed}: held-out L1 {stats['l1']:.5f}; "
              f"{int(flip.sum())} of {len(flip)} samples flip ({100 * stats['rate']:.2f}%), making "
              f"{100 * stats['flip_share']:.0f}% of the mean; L1 of the others {stats['l1_others']:.5f}")
        sigmas = res.solver.sigmas(problem.schedule).detach()
        turns: list[torch.Tensor] = []
        x = start_state(problem, ref.noise, ref.s0)
        with torch.no_grad():
            sample_gas(den, x, sigmas, extra_args=ref.cond, disable=True, solver=res.solver,
                       schedule=problem.schedule,
                       callback=lambda info, turns=turns: turns.append(
                           nearest_component(info["denoised"], means, classes)))
        exact_comp = stats["exact_component"]
        for k, comp in enumerate(turns):
            still = float((comp[flip] == exact_comp[flip]).float().mean()) if bool(flip.any()) else float("nan")
            print(f"  step {k + 1} at sigma {float(sigmas[k]):.3f}: the denoised output points to the exact ODE's "
                  f"component for {100 * still:.0f}% of the flipped samples")


if __name__ == "__main__":
    main()
