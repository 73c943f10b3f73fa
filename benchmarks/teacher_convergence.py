"""How many steps the default teacher needs: solver error against a 2000-step reference on the demo model.

Usage: ``python -m benchmarks.teacher_convergence [--samples 256] [--steps 4 8 16 25 32 50 64 100 200]``

The demo's analytic teacher (``trainer.demo.make_demo_problem``, states in float64) on its held-out noises
(``sample_noise`` of the held-out indices, seed 42), from ``s_0 = sigma(1)`` to ``sigma(t_eps = 1e-3)`` as the
trainer's teacher runs. The reference is DPM-Solver++(3M) with 2000 steps uniform in log-SNR; each entry is the mean
``|x - x_ref|`` of a solver with that many steps: DPM-Solver++(3M) on a log-SNR-uniform grid (the trainer's default
teacher grid) and, on the untrained solver's grid (uniform in GAS time: ``sigma(linspace(1, t_eps, n + 1))``),
DPM-Solver++(3M), DPM-Solver++(2M) and iPNDM of order 4. It also prints how far the 2000-step solutions on the two
grids are apart and the data scale.
"""

from __future__ import annotations

import argparse
import time

import torch


def main(argv: list[str] | None = None) -> None:
    from trainer.baselines import dpmpp_2m, dpmpp_3m, ipndm
    from trainer.demo import make_demo_problem
    from trainer.gits import logsnr_grid
    from trainer.problem import VALIDATION_OFFSET
    from trainer.runtime import start_state
    from trainer.teacher import end_sigmas, sample_noise

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16, 25, 32, 50, 64, 100, 200])
    ap.add_argument("--reference-steps", type=int, default=2000)
    args = ap.parse_args(argv)
    t0 = time.time()
    problem = make_demo_problem()
    problem.dtype = torch.float64
    t_eps = 1e-3
    s0, s_end = end_sigmas(problem, t_eps)
    indices = [VALIDATION_OFFSET + j for j in range(args.samples)]
    x0 = start_state(problem, sample_noise(indices, problem.latent_shape, 42), s0)
    cond = problem.conditions(indices)
    sched, model = problem.schedule, problem.denoiser

    def time_grid(n: int) -> torch.Tensor:  # the untrained solver's grid, for any number of steps
        return sched.sigma_of_time(torch.linspace(1.0, t_eps, n + 1, dtype=torch.float64))

    def logsnr(n: int) -> torch.Tensor:
        return logsnr_grid(sched, s0, s_end, n)

    with torch.no_grad():
        ref = dpmpp_3m(model, x0, logsnr(args.reference_steps), cond, schedule=sched).double()
        ref_time = dpmpp_3m(model, x0, time_grid(args.reference_steps), cond, schedule=sched).double()
        columns = {
            "DPM-Solver++(3M), log-SNR grid": lambda n: dpmpp_3m(model, x0, logsnr(n), cond, schedule=sched),
            "DPM-Solver++(3M), time grid": lambda n: dpmpp_3m(model, x0, time_grid(n), cond, schedule=sched),
            "DPM-Solver++(2M), time grid": lambda n: dpmpp_2m(model, x0, time_grid(n), cond, schedule=sched),
            "iPNDM-4, time grid": lambda n: ipndm(model, x0, time_grid(n), cond, schedule=sched, order=4),
        }
        rows = [[f"{float((run(n).double() - ref).abs().mean()):.1e}" for run in columns.values()]
                for n in args.steps]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.samples} held-out samples, "
          f"reference DPM-Solver++(3M) with {args.reference_steps} log-SNR-uniform steps")
    print(f"{args.reference_steps}-step solutions on the log-SNR and time grids differ by "
          f"{float((ref_time - ref).abs().mean()):.1e}; data scale mean |x| = {float(ref.abs().mean()):.2f}")
    print()
    print("| steps | " + " | ".join(columns) + " |")
    print("|---:|" + "---:|" * len(columns))
    for n, row in zip(args.steps, rows, strict=True):
        print(f"| {n} | " + " | ".join(row) + " |")
    print(f"\n{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
