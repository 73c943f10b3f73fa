"""The demo's quality table: ``python -m trainer --demo`` in a temporary folder, GS and GAS at one NFE.

Usage: ``python -m benchmarks.demo_quality [--nfe 4] [--iters N] [--keep DIR]``

Prints the held-out table (L1 to the teacher, sliced Wasserstein distance to the teacher's samples, L1 relative to
DPM-Solver++(3M)) for the trained GS and GAS solvers and the same-NFE baselines, the two acceptance ratios and the
run time. Everything (teacher cache, solvers, report) goes to a temporary folder unless ``--keep DIR``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> None:
    from trainer.cli import _setup_logging
    from trainer.config import DEFAULT_RECIPE, DistillConfig
    from trainer.demo import DEMO_DEFAULTS, run_demo

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nfe", type=int, default=4)
    ap.add_argument("--iters", type=int, default=None, help="training iterations (default: the recipe's)")
    ap.add_argument("--keep", metavar="DIR", default=None, help="write everything here instead of a temporary folder")
    ap.add_argument("--progress", action="store_true", help="show progress bars")
    args = ap.parse_args(argv)
    _setup_logging(quiet=True)
    logging.getLogger("trainer").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        iters = {"iters": args.iters} if args.iters else {}
        cfg = DistillConfig.from_recipe(DEFAULT_RECIPE, **DEMO_DEFAULTS, **iters, nfe=args.nfe, name="demo",
                                        overwrite=True, out_dir=str(root / "out"), cache_dir=str(root / "cache"),
                                        run_dir=str(root / "runs"))
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        run_demo(cfg, ["gs", "gas"], progress=args.progress)


if __name__ == "__main__":
    main()
