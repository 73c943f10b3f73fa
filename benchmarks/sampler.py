"""Sampler overhead benchmark: time per step of ``gas.sample_gas`` vs k-diffusion's ``sample_dpmpp_3m_sde(eta=0)``.

Usage: ``python -m benchmarks.sampler [--repeats 5] [--device cpu|cuda] [--model-ms 10]``

The model is a small stack of 3x3 convolutions on SD-latent-sized input (batch 4, 4x64x64) whose depth is calibrated
so one call costs about ``--model-ms`` milliseconds on the chosen device. Reported per step: the whole sampler
(model included) for each method, the overhead of GAS relative to k-diffusion, the solver's own arithmetic measured
with a free model (``D(x) = 0.5*x``), and the arithmetic GAS adds over k-diffusion as a share of one model call (the
figure that does not drift with machine load). Target: GAS adds at most 3% per step over k-diffusion.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from functools import partial

import torch

import gas


class ConvModel(torch.nn.Module):
    def __init__(self, depth: int, width: int = 32) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = [torch.nn.Conv2d(4, width, 3, padding=1)]
        for _ in range(depth):
            layers += [torch.nn.SiLU(), torch.nn.Conv2d(width, width, 3, padding=1)]
        layers += [torch.nn.SiLU(), torch.nn.Conv2d(width, 4, 3, padding=1)]
        self.net = torch.nn.Sequential(*layers)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
        return x - sigma.reshape(-1, 1, 1, 1) * self.net(x) * 0.01


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_call(fn, device, repeats: int) -> float:
    return time_interleaved([fn], device, repeats)[0]


def time_interleaved(fns, device, repeats: int) -> list[float]:
    """Median seconds per call of each function, measured round-robin so that load drift hits all alike."""
    for fn in fns:
        fn()
    sync(device)
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, samples, strict=True):
            start = time.perf_counter()
            fn()
            sync(device)
            bucket.append(time.perf_counter() - start)
    return [statistics.median(bucket) for bucket in samples]


def calibrate(device: torch.device, target_ms: float, x: torch.Tensor) -> ConvModel:
    sigma = torch.ones(x.shape[0], device=device)
    best = ConvModel(0).to(device)
    for depth in range(0, 64):
        model = ConvModel(depth).to(device)
        ms = 1e3 * time_call(lambda m=model: m(x, sigma), device, 5)
        best = model
        if ms >= target_ms:
            break
    return best


def trained_looking(nfe: int) -> gas.GeneralizedSolver:
    solver = gas.GeneralizedSolver(nfe, schedule=gas.DiscreteVPSchedule.sd_linear())
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        solver.t_couple.copy_(0.005 * torch.randn(nfe, generator=gen))
        solver.a.copy_(0.01 * torch.randn(nfe, nfe, generator=gen) * solver.used_mask())
        solver.c.copy_(0.01 * torch.randn(nfe, nfe, generator=gen) * solver.used_mask())
    return solver


def run_kdiff(model, x0: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    from k_diffusion.sampling import sample_dpmpp_3m_sde

    return sample_dpmpp_3m_sde(model, x0, grid, disable=True, eta=0.0, noise_sampler=lambda *_: None)


def run_gas(model, x0: torch.Tensor, grid: torch.Tensor, solver: gas.GeneralizedSolver | None) -> torch.Tensor:
    two_m = "k-diffusion" if solver is None else "gas"
    return gas.sample_gas(model, x0, grid, solver=solver, disable=True, two_m=two_m)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sampler", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9, help="timed runs per cell (median); default %(default)s")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model-ms", type=float, default=10.0, help="target cost of one model call")
    parser.add_argument("--nfe", type=int, nargs="+", default=[4, 6, 8, 10])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import k_diffusion.sampling  # noqa: F401  (import once, quietly)

    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(4, 4, 64, 64, device=device)
    model = calibrate(device, args.model_ms, x)
    sigma = torch.ones(4, device=device)
    model_ms = 1e3 * time_call(lambda: model(x, sigma), device, args.repeats)
    free = lambda x, s, **_: 0.5 * x  # noqa: E731

    print(f"device {device}, batch 4x4x64x64, model call {model_ms:.2f} ms, median of {args.repeats} runs\n")
    header = ("NFE", "k-diff 3M ms/step", "GAS 3M ms/step", "GAS learned ms/step", "overhead 3M",
              "overhead learned", "GAS arithmetic ms/step", "k-diff arithmetic ms/step", "added / model call")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for nfe in args.nfe:
        solver = trained_looking(nfe)
        grid = solver.sigmas().detach().float().to(device)
        x0 = x * float(grid[0])

        kdiff = partial(run_kdiff, model, x0, grid)
        gas_3m = partial(run_gas, model, x0, grid, None)
        gas_learned = partial(run_gas, model, x0, grid, solver)
        free_gas = partial(run_gas, free, x0, grid, solver)
        free_kdiff = partial(run_kdiff, free, x0, grid)
        t_k, t_g, t_l = (t / nfe for t in time_interleaved([kdiff, gas_3m, gas_learned], device, args.repeats))
        a_g, a_k = (t / nfe for t in time_interleaved([free_gas, free_kdiff], device, 4 * args.repeats))
        row = (str(nfe), f"{1e3 * t_k:.2f}", f"{1e3 * t_g:.2f}", f"{1e3 * t_l:.2f}", f"{100 * (t_g / t_k - 1):+.1f}%",
               f"{100 * (t_l / t_k - 1):+.1f}%", f"{1e3 * a_g:.3f}", f"{1e3 * a_k:.3f}",
               f"{100 * (a_g - a_k) / (model_ms / 1e3):+.1f}%")
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
