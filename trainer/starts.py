"""Multi-start (``starts`` K > 1): K short runs from different initial grids, then the best one goes on.

The few-step solver's loss has separate basins: on the recipe bench the same recipe ends 2-10x apart in held-out L1
depending on the seed or the initial timesteps (``benchmarks/README.md``). Candidate ``k`` starts on the blend
``w_k = k / (K - 1)`` of the uniform and the log-SNR-uniform grid (:func:`trainer.schedule.initial_times`), trains
``start_iters`` iterations of the distillation loss on the same batches as the others (iterations ``1 ..
start_iters`` of the data order and of the learning-rate schedule), and is scored by the held-out L1 of its EMA
solver. The winner continues at iteration ``K * start_iters``: the candidates' iterations count against ``iters``,
so the run costs what a single start of ``iters`` iterations costs, plus K - 1 held-out checks. GAS mode's
discriminator starts with the winner. A run interrupted during the starts repeats them on resume (deterministic);
afterwards the winner's state is a normal training state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .batches import training_batch
from .evaluate import heldout_l1
from .run_state import RunState
from .schedule import set_initial_times
from .steps import StepContext, solver_step
from .teacher_data import TeacherData

__all__ = ["best_start", "start_blends"]

log = logging.getLogger("trainer")


def start_blends(starts: int) -> list[float]:
    """The K blend weights ``k / (K - 1)`` between the uniform (0) and the log-SNR (1) initial grid."""
    return [k / (starts - 1) for k in range(starts)] if starts > 1 else [0.0]


def best_start(ctx: StepContext, make_run: Callable[[], RunState], data: TeacherData) -> RunState:
    """Train every candidate for ``start_iters`` iterations; return the one with the lowest held-out L1, at
    iteration ``starts * start_iters`` (see the module)."""
    config, dist = ctx.config, ctx.dist
    n = config.start_length()
    best: tuple[float, RunState] | None = None
    for k, blend in enumerate(start_blends(config.starts)):
        run = make_run()
        set_initial_times(run.solver, ctx.problem.schedule, config.time_init, blend)
        run.reset_ema()
        disc, run.disc = run.disc, None  # the distillation loss only: GAS's discriminator starts with the winner
        for step in range(1, n + 1):
            run.step = step
            batch = training_batch(ctx.problem, config, step, data.train_noise, data.train_lat, dist, data.train_states)
            solver_step(ctx, run, batch)
        run.disc = disc
        l1 = heldout_l1(ctx.problem, config, run.ema_solver(), data, autocast=ctx.autocast, dist=dist)
        if dist.is_main:
            log.info("start %d of %d (grid blend %.2f uniform -> log-SNR): held-out L1 %.5g after %d iterations",
                     k + 1, config.starts, blend, l1, n)
        if best is None or l1 < best[0]:
            best = (l1, run)
    assert best is not None
    winner = best[1]
    winner.step = config.starts * n
    return winner
