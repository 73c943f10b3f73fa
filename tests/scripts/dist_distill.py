"""Run under torchrun by tests/test_trainer_distributed.py: the Python API (``trainer.distill``) on the tiny analytic
problem, on every rank, with everything written below ``WORKDIR``.

Usage: torchrun --nproc_per_node=K tests/scripts/dist_distill.py WORKDIR MODE ITERS [--die-at STEP]
[--die-in-teacher CALL] [--die-rank R] [--resume] [--loss-reduce R] [--state-loss W] [--trajectory-from-shards]

``--die-at``: rank R ends its process abruptly (``os._exit``, no clean-up, like a killed process) right after
iteration STEP; ``--die-in-teacher``: at its CALL-th model call while generating teacher samples. Every rank
writes ``WORKDIR/report-<rank>.json`` (``{"rank", "world", "step_log", "solver", "l1"}``) when it finishes (a file
per rank: lines that several processes print at once into one pipe can interleave).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.trainer_helpers import tiny_config, tiny_problem
from trainer.distill import distill
from trainer.distributed import shutdown_distributed

parser = argparse.ArgumentParser()
parser.add_argument("workdir", type=Path)
parser.add_argument("mode", choices=("gs", "gas"))
parser.add_argument("iters", type=int)
parser.add_argument("--die-at", type=int, default=0)
parser.add_argument("--die-in-teacher", type=int, default=0)
parser.add_argument("--die-rank", type=int, default=1)
parser.add_argument("--resume", action="store_true")
parser.add_argument("--loss-reduce", default="mean")
parser.add_argument("--state-loss", type=float, default=0.0)
parser.add_argument("--trajectory-from-shards", action="store_true")
args = parser.parse_args()
if args.trajectory_from_shards:  # read the state loss's trajectory from the cache's shards however small it is
    import trainer.teacher_data

    trainer.teacher_data.TRAJECTORY_MEMORY_BYTES = 0

rank = int(os.environ.get("RANK", "0"))
steps: list[int] = []


def callback(step: int, stats: dict[str, float]) -> None:
    steps.append(step)
    if step == args.die_at and rank == args.die_rank:
        os._exit(17)  # a process that dies: no exception handling, no clean-up


problem = tiny_problem()
if args.die_in_teacher and rank == args.die_rank:
    model_calls = 0
    denoiser = problem.denoiser

    def dying_denoiser(*a: object, **k: object) -> object:
        global model_calls
        model_calls += 1
        if model_calls == args.die_in_teacher:
            os._exit(17)
        return denoiser(*a, **k)

    problem.denoiser = dying_denoiser

config = tiny_config(args.workdir, mode=args.mode, iters=args.iters, ckpt_every=5, train_size=64, val_size=16,
                     eval_batch=8, teacher_batch=8, resume=args.resume, loss_reduce=args.loss_reduce,
                     state_loss=args.state_loss, state_points=4)
result = distill(problem, config, progress=False, callback=callback)
report = {"rank": rank, "world": result.world, "step_log": steps, "solver": str(result.solver_path),
          "l1": result.scores["methods"][result.label]["l1"]}
(args.workdir / f"report-{rank}.json").write_text(json.dumps(report))
shutdown_distributed()
