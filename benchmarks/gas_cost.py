"""GAS mode's cost and distribution gain against GS on the recipe bench's teachers: a table.

    OMP_NUM_THREADS=1 python -m benchmarks.gas_cost --teachers demo,hard,flow --json gas.jsonl
    python -m benchmarks.gas_cost --load gas.jsonl                     # the table again, from the saved runs

For each teacher and seed, a GS solver (``--recipe``, the paper's by default) and GAS solvers with the discriminator
settings of each variant, at one NFE, trained through the public ``trainer.distill.distill``. Scores on held-out
noises the training never sees, against the exact probability-flow ODE solution (``benchmarks.recipe.exact_solution``):

* **L1**: mean |x - x_exact|;
* **FD**: the Frechet distance between the Gaussian fits of the solver's and the exact samples' features, the latents
  average-pooled to at most 4x4 per channel (at most 64 features, well estimated from the 8192 held-out samples):
  ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)``; a distribution distance, as GAS's adversarial
  loss targets (L1 to paired samples cannot see a mean-regressed, too smooth sample set);
* **train s**: the training loop's seconds, and its ratio to GS's on the same seed;
* **teacher s**: the teacher's seconds for the variant's training set (each training set generated and timed once per
  teacher and seed, in a cache folder of its own), and (teacher + train) against GS's.

Every variant trains on the recipe's samples (1400) unless ``--train-size`` gives one count for all;
``--gas-train-size`` gives the GAS variants their own.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from trainer.config import RECIPES
from trainer.distill import distill

from .recipe import TEACHERS, bench_config, held_out, timed_teacher, warm_up

#: Variants: name -> DistillConfig overrides of the recipe (mode and every discriminator setting a recipe may change).
VARIANTS: dict[str, dict[str, Any]] = {
    "GS": {"mode": "gs"},
    "GAS small": {"mode": "gas", "disc_preset": "small", "disc_weight": 1.0, "r1_every": 1, "disc_every": 1},
    "GAS small, R1 every 16, D every 4, 1 block": {"mode": "gas", "disc_preset": "small", "r1_every": 16,
                                                   "disc_every": 4, "disc_blocks": 1, "disc_weight": 1.0},
    "GAS small, R1 every 16, D every 2, 1 block": {"mode": "gas", "disc_preset": "small", "r1_every": 16,
                                                   "disc_every": 2, "disc_blocks": 1, "disc_weight": 1.0},
    "GAS small, R1 every 16, D every 4, 1 block, weight 0.1": {"mode": "gas", "disc_preset": "small", "r1_every": 16,
                                                               "disc_every": 4, "disc_blocks": 1, "disc_weight": 0.1},
    "GAS small, R1 every 16, D every 4, 1 block, weight 0.3": {"mode": "gas", "disc_preset": "small", "r1_every": 16,
                                                               "disc_every": 4, "disc_blocks": 1, "disc_weight": 0.3},
}
# a faster-learning discriminator (the paper's 1e-5 gives it few effective steps at one D step every 4 iterations),
# alone, with more discriminator steps, or with a heavier adversarial weight
_TUNED_GAS = VARIANTS["GAS small, R1 every 16, D every 4, 1 block, weight 0.1"]
for _rate in ("1e-4", "1e-3"):
    VARIANTS[f"GAS small, R1 every 16, D every 4, 1 block, weight 0.1, D lr {_rate}"] = {
        **_TUNED_GAS, "disc_lr": float(_rate)}
    VARIANTS[f"GAS small, R1 every 16, D every 4, 1 block, weight 0.3, D lr {_rate}"] = {
        **_TUNED_GAS, "disc_lr": float(_rate), "disc_weight": 0.3}
for _rate in ("1e-5", "1e-4", "1e-3"):  # relativistic pairs of one noise (the student's and the teacher's sample)
    VARIANTS[f"GAS paired, weight 0.1, D lr {_rate}"] = {**_TUNED_GAS, "disc_fake": "paired", "disc_lr": float(_rate)}
    VARIANTS[f"GAS paired, weight 0.3, D lr {_rate}"] = {**_TUNED_GAS, "disc_fake": "paired", "disc_lr": float(_rate),
                                                         "disc_weight": 0.3}
VARIANTS["GAS paired, weight 0.1, D lr 1e-3, no R1"] = {**_TUNED_GAS, "disc_fake": "paired", "disc_lr": 1e-3,
                                                        "r1_gamma": 0.0}
VARIANTS["GAS, weight 0.1, D lr 1e-3, no R1, D every 1"] = {**_TUNED_GAS, "disc_lr": 1e-3, "r1_gamma": 0.0,
                                                            "disc_every": 1}
for _ramp in ("0.25", "0.5"):  # the adversarial weight ramped in from 0 (the discriminator's first opinions unweighted)
    VARIANTS[f"GAS, weight 0.1, ramp {_ramp}"] = {**_TUNED_GAS, "disc_ramp": float(_ramp)}
VARIANTS["GAS small, R1 every 16, D every 2, 1 block, weight 0.1, D lr 1e-3"] = {
    **_TUNED_GAS, "disc_lr": 1e-3, "disc_every": 2}


@dataclass
class CostResult:
    teacher: str
    variant: str
    seed: int
    l1: float
    fd: float
    train_seconds: float
    teacher_seconds: float = math.nan  #: runs saved before the teacher was timed have none


def pooled_features(x: torch.Tensor) -> torch.Tensor:
    """``[N, C * h * w]`` with ``h, w <= 4``: each channel average-pooled (video latents: frames folded into C)."""
    x = x.double()
    if x.ndim == 5:
        x = x.flatten(1, 2)
    h, w = min(4, x.shape[-2]), min(4, x.shape[-1])
    return F.adaptive_avg_pool2d(x, (h, w)).flatten(1)


def frechet_distance_to(target: torch.Tensor, eig_floor: float = 0.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fd(b)``: the Frechet distance (a 0-dim tensor, differentiable in ``b``) between the Gaussian fits of feature
    sets ``target`` and ``b`` ``[N, D]`` (float64); ``target``'s mean, covariance and its square root are computed
    once. ``eig_floor``: the floor of the middle term's eigenvalues before their square root (> 0 keeps the gradient
    finite at a zero eigenvalue)."""
    mu_a, cov_a = target.mean(0), torch.cov(target.T)
    vals, vecs = torch.linalg.eigh(cov_a)
    root_a = (vecs * vals.clamp_min(0).sqrt()) @ vecs.T

    def fd(b: torch.Tensor) -> torch.Tensor:
        cov_b = torch.cov(b.T)
        middle = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(eig_floor).sqrt().sum()
        return (mu_a - b.mean(0)).square().sum() + cov_a.trace() + cov_b.trace() - 2 * middle

    return fd


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between the Gaussian fits of feature sets ``a`` and ``b`` ``[N, D]`` (float64)."""
    return float(frechet_distance_to(a)(b))


def stats_printer(every: int) -> Callable[[int, dict[str, float]], None] | None:
    """With ``every`` > 0: a training callback that prints the losses of iterations 1, 1 + every, ... (the
    discriminator steps there when ``every`` is a multiple of ``disc_every``); ``adv`` near ln 2 = 0.693 is a
    discriminator that cannot tell the student's samples from the teacher's."""
    if every <= 0:
        return None
    keys = ("loss", "distill", "state", "adv", "d_loss", "r1")

    def show(step: int, stats: dict[str, float]) -> None:
        if step % every == 1 % every:
            print(f"    iteration {step}: " + " ".join(f"{k} {stats[k]:.4f}" for k in keys if k in stats), flush=True)

    return show


def run(args: argparse.Namespace, root: Path) -> list[CostResult]:
    warm_up(root)
    results: list[CostResult] = []
    counts = {} if args.train_size is None else {"train_size": args.train_size, "gas_train_size": 0}
    if args.gas_train_size is not None:
        counts["gas_train_size"] = args.gas_train_size
    for teacher in args.teachers:
        problem = TEACHERS[teacher]()
        ref = held_out(problem, args.heldout, args.exact_steps, args.exact_cache)
        exact_features = pooled_features(ref.exact)
        sets: dict[tuple[Any, ...], tuple[str, float]] = {}  # per training set: its cache folder and teacher seconds
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for variant in args.variants:
                cfg = bench_config(args.recipe, root, f"{teacher}-{list(VARIANTS).index(variant)}-s{seed}", args.iters,
                                   nfe=args.nfe, seed=seed, **counts, **VARIANTS[variant])
                cfg, teacher_seconds = timed_teacher(problem, cfg, root, teacher, sets, ref.autocast)
                res = distill(problem, cfg, progress=False, callback=stats_printer(args.stats_every))
                out = ref.sample(problem, res.solver)
                r = CostResult(teacher, variant, seed, float((out - ref.exact).abs().mean()),
                               frechet_distance(pooled_features(out), exact_features), res.train_seconds,
                               teacher_seconds)
                results.append(r)
                print(f"  {teacher} | {variant} | seed {seed} | {cfg.training_samples} samples | L1 {r.l1:.4f} | "
                      f"FD {r.fd:.4g} | teacher {r.teacher_seconds:.1f}s train {r.train_seconds:.1f}s", flush=True)
                if args.json is not None:
                    with args.json.open("a") as f:
                        f.write(json.dumps(asdict(r)) + "\n")
    return results


def format_table(results: list[CostResult]) -> str:
    """Per (teacher, variant): mean L1, mean FD, mean teacher and train seconds, and the mean ratios to GS on the same
    seeds of the training time and of teacher + training (runs saved without the teacher's time: "-")."""
    gs = {(r.teacher, r.seed): r for r in results if r.variant == "GS"}
    lines = ["| teacher | variant | mean L1 | mean FD to exact | teacher s | train s | train / GS "
             "| teacher + train / GS |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else math.nan

    def shown(value: float, fmt: str) -> str:
        return "-" if math.isnan(value) else format(value, fmt)

    keys = list(dict.fromkeys((r.teacher, r.variant) for r in results))
    for teacher, variant in keys:
        runs = [r for r in results if (r.teacher, r.variant) == (teacher, variant)]
        pairs = [(r, gs[(teacher, r.seed)]) for r in runs if (teacher, r.seed) in gs]
        ratio = mean([r.train_seconds / g.train_seconds for r, g in pairs])
        total = mean([(r.teacher_seconds + r.train_seconds) / (g.teacher_seconds + g.train_seconds) for r, g in pairs])
        lines.append(f"| {teacher} | {variant} | {mean([r.l1 for r in runs]):.4f} | {mean([r.fd for r in runs]):.4g} | "
                     f"{shown(mean([r.teacher_seconds for r in runs]), '.1f')} | "
                     f"{mean([r.train_seconds for r in runs]):.1f} | {ratio:.2f}x | {shown(total, '.2f')}"
                     f"{'' if math.isnan(total) else 'x'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teachers", default="demo,hard,flow")
    ap.add_argument("--variants", default=";".join(VARIANTS), help=f"separated by ';', of: {'; '.join(VARIANTS)}")
    ap.add_argument("--nfe", type=int, default=4)
    ap.add_argument("--recipe", choices=tuple(RECIPES), default="paper",
                    help="the training recipe every variant starts from (default: paper)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0, help="the first training seed (to add seeds to a saved run)")
    ap.add_argument("--iters", type=int, default=None, help="training iterations (default: the recipe's)")
    ap.add_argument("--train-size", type=int, default=None,
                    help="teacher samples for training, for every variant (default: the recipe's per mode)")
    ap.add_argument("--gas-train-size", type=int, default=None,
                    help="teacher samples for training of the GAS variants (default: the recipe's, or --train-size)")
    ap.add_argument("--heldout", type=int, default=8192, help="held-out samples (the FD's and L1's)")
    ap.add_argument("--exact-steps", type=int, default=512)
    ap.add_argument("--exact-cache", type=Path, default=None,
                    help="folder to keep the held-out exact solutions in between runs (default: computed each run)")
    ap.add_argument("--stats-every", type=int, default=0, metavar="N",
                    help="print the training losses (adversarial and discriminator ones included) every N iterations")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--load", type=Path, nargs="+", default=None)
    args = ap.parse_args(argv)
    if args.load:
        results = [CostResult(**json.loads(line)) for p in args.load for line in p.read_text().splitlines() if line]
    else:
        args.teachers = args.teachers.split(",")
        args.variants = [v.strip() for v in args.variants.split(";") if v.strip()]
        args.iters = args.iters or RECIPES[args.recipe]["iters"]
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; NFE {args.nfe}, iters {args.iters}, "
              f"train {args.train_size or 'per the recipe'}, held-out {args.heldout} vs exact ODE, seeds {args.seeds}",
              flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            results = run(args, Path(tmp))
    print(format_table(results))


if __name__ == "__main__":
    main()
