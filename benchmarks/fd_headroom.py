"""How much lower can the FD to the exact ODE go within the solver family? A diagnostic for GAS mode's FD goal.

    OMP_NUM_THREADS=1 python -m benchmarks.fd_headroom --teachers hard,flow --seeds 0 --exact-cache exact-cache

For each teacher and seed it trains the GS solver of ``benchmarks.gas_cost`` (``--recipe``, its iterations by
default), then keeps training that solver's parameters on a direct, differentiable distribution loss instead of any
discriminator: the Frechet distance between the Gaussian fits of the 4x4-pooled end states of ``--batch`` training
noises and of the teacher's samples of the same noises (``benchmarks.gas_cost.pooled_features``), plus
``--l1-weight`` times their mean L1, with Adam at ``--lr`` for ``--steps`` steps. Every ``--every`` steps it scores
the solver on the bench's held-out noises against the exact ODE (L1 and FD, as ``gas_cost`` does).

What it tells: if this oracle loss, which sees the whole batch's statistics at once, lowers the held-out FD below
GS's, the solver family has that much FD left that GS does not take and an adversarial loss could; it costs a
large batch through the solver (``--batch`` x NFE model calls with gradients per step), so it is a measurement, not a
recipe.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import torch

from trainer.config import RECIPES
from trainer.distill import distill
from trainer.problem import DistillProblem
from trainer.runtime import resolve_amp, run_student, start_state
from trainer.teacher import end_sigmas
from trainer.teacher_data import load_teacher

from .gas_cost import frechet_distance, frechet_distance_to, pooled_features
from .recipe import TEACHERS, HeldOut, bench_config, held_out


def polish(problem: DistillProblem, ref: HeldOut, exact_features: torch.Tensor, teacher: str, seed: int,
           args: argparse.Namespace, root: Path) -> None:
    """Train the GS solver of ``seed``, then ``args.steps`` Adam steps on the FD loss; print the held-out rows."""
    cfg = bench_config(args.recipe, root, f"{teacher}-s{seed}", args.iters, mode="gs", nfe=args.nfe, seed=seed,
                       train_size=args.train_size)
    solver = distill(problem, cfg, progress=False).solver
    autocast = resolve_amp("off", problem.device)
    data = load_teacher(problem, cfg, autocast, progress=False)
    s0 = end_sigmas(problem, cfg.t_eps)[0]
    conditions = problem.conditions(list(range(len(data.train_noise))))

    def score(step: int) -> None:
        with torch.no_grad():
            out = ref.sample(problem, solver)
        print(f"| {teacher} | {seed} | {step} | {float((out - ref.exact).abs().mean()):.5f} | "
              f"{frechet_distance(pooled_features(out), exact_features):.5g} |", flush=True)

    score(0)
    params = list(solver.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=args.lr)
    order = torch.Generator().manual_seed(seed)
    for step in range(1, args.steps + 1):
        rows = torch.randperm(len(data.train_noise), generator=order)[:args.batch]
        x = start_state(problem, data.train_noise[rows], s0)
        cond = {k: v[rows] if torch.is_tensor(v) else v for k, v in conditions.items()}
        out = run_student(problem, solver, x, cond, autocast=autocast, differentiable=True)
        target = data.train_lat[rows].float().to(out.device)
        loss = frechet_distance_to(pooled_features(target), eig_floor=1e-12)(pooled_features(out))
        loss = loss + args.l1_weight * (out - target).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % args.every == 0 or step == args.steps:
            score(step)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teachers", default="hard,flow")
    ap.add_argument("--seeds", default="0", help="training seeds, comma-separated")
    ap.add_argument("--nfe", type=int, default=4)
    ap.add_argument("--recipe", choices=tuple(RECIPES), default="tuned")
    ap.add_argument("--iters", type=int, default=None, help="GS training iterations (default: the recipe's)")
    ap.add_argument("--train-size", type=int, default=1400)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--l1-weight", type=float, default=0.0)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--heldout", type=int, default=8192)
    ap.add_argument("--exact-steps", type=int, default=512)
    ap.add_argument("--exact-cache", type=Path, default=None)
    args = ap.parse_args(argv)
    args.iters = args.iters or RECIPES[args.recipe]["iters"]
    logging.getLogger("trainer").setLevel(logging.WARNING)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; NFE {args.nfe}, recipe {args.recipe}, "
          f"train {args.train_size}, FD loss on batches of {args.batch}, lr {args.lr}, L1 weight {args.l1_weight}",
          flush=True)
    print("| teacher | seed | step | held-out L1 | held-out FD to exact |\n|---|---:|---:|---:|---:|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for teacher in args.teachers.split(","):
            problem = TEACHERS[teacher]()
            ref = held_out(problem, args.heldout, args.exact_steps, args.exact_cache)
            exact_features = pooled_features(ref.exact)
            for seed in (int(s) for s in args.seeds.split(",")):
                polish(problem, ref, exact_features, teacher, seed, args, Path(tmp))


if __name__ == "__main__":
    main()
