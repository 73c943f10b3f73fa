"""Can a discriminator tell a trained solver's samples from the exact ones at all? A diagnostic for GAS mode's FD goal.

    OMP_NUM_THREADS=1 python -m benchmarks.disc_separability --teachers demo,hard,flow --exact-cache exact-cache
    python -m benchmarks.disc_separability --load table.md --png auc.png    # the plot of a printed table

For each teacher and solver it trains the GS solver of ``benchmarks.gas_cost`` (``--recipes``: the "tuned" and
"paper" recipes, and as controls further from the exact ODE "tuned" stopped after 100 and 20 iterations), samples
it on the bench's held-out noises and trains GAS mode's own discriminator
(``trainer.discriminator.LatentDiscriminator`` with the ``tuned`` GAS settings: the small preset, one block per
stage) as a plain classifier, with far more data and steps than GAS mode's discriminator ever gets: the solver's
samples of the first half of the held-out noises against the exact samples of the second half (no noise on both
sides), ``--steps`` Adam steps at ``--lr`` on batches of ``--batch`` per side, the logistic loss
``softplus(-D(exact)) + softplus(D(solver))``. It reports the test AUC on the other pairing (the solver's samples of
the second half against the exact ones of the first): 0.5 is chance.

What it tells: GAS mode's adversarial term only carries a signal where its discriminator can separate the student's
samples from the teacher's. If this classifier, trained on 4096 samples a side for thousands of steps, stays near 0.5
on a solver, GAS mode's discriminator (4 samples a step, 450 steps) cannot do better on it.
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from trainer.config import RECIPES, DistillConfig
from trainer.discriminator import LatentDiscriminator
from trainer.distill import distill

from .gas_cost import VARIANTS, frechet_distance, pooled_features
from .recipe import TEACHERS, bench_config, held_out


def auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(score of a random positive > score of a random negative), ties counting half (the Mann-Whitney statistic):
    for each positive, the negatives below it plus half those equal to it, from two binary searches."""
    neg = neg.double().sort().values
    below = torch.searchsorted(neg, pos.double(), right=False)
    not_above = torch.searchsorted(neg, pos.double(), right=True)
    return float((below + not_above).double().sum() / (2 * len(pos) * len(neg)))


def classifier_auc(solver_a: torch.Tensor, exact_b: torch.Tensor, solver_b: torch.Tensor, exact_a: torch.Tensor,
                   config: DistillConfig, args: argparse.Namespace, seed: int) -> tuple[float, float]:
    """Train GAS mode's discriminator on (``exact_b`` real, ``solver_a`` fake); return its train and test AUC (test:
    ``exact_a`` against ``solver_b``)."""
    widths, groups = config.disc_architecture()
    torch.manual_seed(seed)
    disc = LatentDiscriminator(*solver_a.shape[1:], widths=widths, groups=groups, blocks=config.disc_blocks)
    opt = torch.optim.Adam(disc.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(solver_a)
    for _ in range(args.steps):
        real = exact_b[torch.randint(n, (args.batch,), generator=gen)].float()
        fake = solver_a[torch.randint(n, (args.batch,), generator=gen)].float()
        loss = (F.softplus(-disc(real)) + F.softplus(disc(fake))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def scores(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([disc(x[i:i + 256].float()) for i in range(0, len(x), 256)])

    return auc(scores(exact_b), scores(solver_a)), auc(scores(exact_a), scores(solver_b))


def load_rows(path: Path) -> list[tuple[str, str, float, float]]:
    """(teacher, solver, FD, test AUC) of each row of a table this script printed."""
    rows = []
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] in TEACHERS:
            rows.append((cells[0], cells[1], float(cells[3]), float(cells[5])))
    return rows


def draw_auc_against_fd(rows: list[tuple[str, str, float, float]], path: Path) -> None:
    """PNG: each solver's test AUC over its FD to the exact ODE (log scale), one colour per teacher (Pillow)."""
    from PIL import Image, ImageDraw

    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]
    teachers = list(dict.fromkeys(r[0] for r in rows))
    w, h, pad = 640, 420, 60
    img = Image.new("RGB", (w, h + 20 * len(teachers)), "white")
    draw = ImageDraw.Draw(img)
    lo = math.floor(math.log10(min(r[2] for r in rows)))
    hi = math.ceil(math.log10(max(r[2] for r in rows)))
    hi = hi if hi > lo else lo + 1

    def to_px(fd: float, auc_value: float) -> tuple[float, float]:
        x = (math.log10(fd) - lo) / (hi - lo)
        y = (min(max(auc_value, 0.4), 1.0) - 0.4) / 0.6
        return pad + (w - 1.5 * pad) * x, h - pad - (h - 1.8 * pad) * y

    draw.rectangle([pad, 0.8 * pad, w - 0.5 * pad, h - pad], outline="black")
    draw.text((pad, 12), "classifier test AUC (0.5 = chance) vs the GS solver's FD to the exact ODE (log)",
              fill="black")
    for value in (0.5, 0.75, 1.0):
        y = to_px(10.0**lo, value)[1]
        draw.line([(pad, y), (w - 0.5 * pad, y)], fill=(200, 200, 200))
        draw.text((12, y - 6), f"{value:.2f}", fill="black")
    for k in range(lo, hi + 1):
        x = to_px(10.0**k, 0.4)[0]
        draw.text((x - 12, h - pad + 6), f"1e{k}", fill="black")
    for j, teacher in enumerate(teachers):
        colour = colours[j % len(colours)]
        for t, name, fd, auc_value in rows:
            if t == teacher:
                x, y = to_px(fd, auc_value)
                draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill=colour)
                draw.text((x + 7, y - 14), name, fill=colour)
        y = h + 5 + 20 * j
        draw.ellipse([14, y + 2, 24, y + 12], fill=colour)
        draw.text((32, y), teacher, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teachers", default="demo,hard,flow")
    ap.add_argument("--recipes", default="tuned,paper,tuned:100,tuned:20",
                    help="the GS solvers, comma-separated: a recipe, or recipe:iterations for a shorter run of it")
    ap.add_argument("--seed", type=int, default=0, help="the solvers' training seed (and the classifier's)")
    ap.add_argument("--nfe", type=int, default=4)
    ap.add_argument("--iters", type=int, default=None, help="the solvers' iterations (default: each recipe's)")
    ap.add_argument("--steps", type=int, default=1500, help="the classifier's Adam steps")
    ap.add_argument("--batch", type=int, default=64, help="the classifier's samples per side and step")
    ap.add_argument("--lr", type=float, default=1e-3, help="the classifier's Adam rate")
    ap.add_argument("--heldout", type=int, default=8192)
    ap.add_argument("--exact-steps", type=int, default=512)
    ap.add_argument("--exact-cache", type=Path, default=None)
    ap.add_argument("--load", type=Path, default=None, help="train nothing: read a table this script printed")
    ap.add_argument("--png", type=Path, default=None, help="with --load: draw its test AUC against FD here")
    args = ap.parse_args(argv)
    if args.load is not None:
        rows = load_rows(args.load)
        for row in rows:
            print(f"| {row[0]} | {row[1]} | FD {row[2]:.4g} | test AUC {row[3]:.3f} |")
        if args.png is not None:
            draw_auc_against_fd(rows, args.png)
        return
    logging.getLogger("trainer").setLevel(logging.WARNING)
    gas = DistillConfig.from_recipe("tuned", **VARIANTS["GAS small, R1 every 16, D every 4, 1 block, weight 0.1"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; NFE {args.nfe}, seed {args.seed}; "
          f"classifier: {args.steps} steps of {args.batch} a side, lr {args.lr}, {args.heldout // 2} samples a side",
          flush=True)
    print("| teacher | GS solver (recipe[:iterations]) | held-out L1 | FD to exact | classifier train AUC | "
          "test AUC |\n|---|---|---:|---:|---:|---:|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for teacher in args.teachers.split(","):
            problem = TEACHERS[teacher]()
            ref = held_out(problem, args.heldout, args.exact_steps, args.exact_cache)
            half = args.heldout // 2
            for solver_name in args.recipes.split(","):
                recipe, _, count = solver_name.partition(":")
                iters = int(count) if count else args.iters or RECIPES[recipe]["iters"]
                cfg = bench_config(recipe, Path(tmp) / f"{teacher}-{recipe}-{count}", f"{teacher}-{recipe}", iters,
                                   mode="gs", nfe=args.nfe, seed=args.seed)
                solver = distill(problem, cfg, progress=False).solver
                with torch.no_grad():
                    out = ref.sample(problem, solver)
                l1 = float((out - ref.exact).abs().mean())
                fd = frechet_distance(pooled_features(out), pooled_features(ref.exact))
                train_auc, test_auc = classifier_auc(out[:half], ref.exact[half:], out[half:], ref.exact[:half],
                                                     gas, args, args.seed)
                print(f"| {teacher} | {solver_name} | {l1:.4f} | {fd:.4g} | {train_auc:.3f} | {test_auc:.3f} |",
                      flush=True)


if __name__ == "__main__":
    main()
