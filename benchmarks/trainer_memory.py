"""Trainer benchmark: peak memory and time per training iteration vs NFE, with and without per-call checkpointing.

Usage: ``python -m benchmarks.trainer_memory [--nfe 4 6 8 10] [--iters 3] [--device cpu|cuda] [--size 32]
[--ckpt NAME_OR_PATH | --tiny-sd15] [--comfyui PATH]``

The model is, by default, a small UNet-like eps network (conv + GroupNorm + SiLU, two resolutions, skip connection;
about 0.6 M parameters, random frozen weights) on SD-shaped latents ``[batch, 4, size, size]``, wrapped as a CFG-free
k-diffusion denoiser on SD1.5's schedule. With ``--ckpt`` it is a real checkpoint loaded through ComfyUI exactly as
``python -m trainer --ckpt`` loads it (CFG denoiser with the built-in prompts, float timesteps); ``--tiny-sd15`` writes
the tests' tiny SD1.5-shaped checkpoint (random weights, UNet 13.6 M parameters) to a temporary folder and uses that.
Both need ComfyUI (``--comfyui`` or ``$COMFYUI_PATH``).

One iteration is exactly the trainer's GS step (:func:`trainer.steps.solver_step`: student through all N calls with
autograd, L1 to a target, backward, clip, Adam, EMA). Each configuration runs in a fresh subprocess, and the table
reports, per iteration:

* ``saved MB``: bytes of the tensors autograd keeps for the backward pass at the end of the forward pass (counted
  with ``torch.autograd.graph.saved_tensors_hooks``, unique storages). Checkpointed calls keep only their inputs, so
  this is the memory checkpointing saves; it excludes the temporary activations of the one call being recomputed.
* ``peak MB``: on CUDA ``torch.cuda.max_memory_allocated`` during an iteration, minus the allocation before it; on
  CPU the growth of the process's peak resident set size (``ru_maxrss``) over the iterations (an upper bound that
  includes allocator slack; it shows the same trend).
* ``s/it``: median wall-clock seconds per iteration.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import gas
from trainer.problem import DistillProblem


class TinyUNet(nn.Module):
    """eps(x_in, sigma): two resolutions with a skip, sinusoidal embedding of log sigma."""

    def __init__(self, channels: int = 4, width: int = 64) -> None:
        super().__init__()
        self.width = width
        self.emb = nn.Sequential(nn.Linear(32, width), nn.SiLU(), nn.Linear(width, width))

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.GroupNorm(8, cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
                                 nn.GroupNorm(8, cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1))

        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.down = block(width, width)
        self.pool = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.mid = block(2 * width, 2 * width)
        self.up = nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1)
        self.dec = block(2 * width, width)
        self.out = nn.Sequential(nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, channels, 3, padding=1))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(torch.linspace(0, math.log(1000.0), 16, device=x.device))
        arg = torch.log(sigma.float()).reshape(-1, 1) * freqs
        e = self.emb(torch.cat([arg.sin(), arg.cos()], dim=1)).reshape(-1, self.width, 1, 1)
        h0 = self.inp(x) + e
        h1 = self.down(h0) + h0
        h2 = self.mid(self.pool(h1))
        h3 = self.dec(torch.cat([self.up(h2), h1], dim=1))
        return self.out(h3)


def tiny_unet_problem(device: str | torch.device, size: int) -> DistillProblem:
    """The benchmark model (:class:`TinyUNet`, random frozen weights) as a CFG-free problem on SD1.5's schedule."""
    from trainer.problem import DistillProblem

    dev = torch.device(device)
    net = TinyUNet().to(dev).requires_grad_(False)

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.reshape(-1, 1, 1, 1).to(x.dtype)
        return x - s * net(x / torch.sqrt(1 + s * s), sigma)

    return DistillProblem(denoiser=denoiser, schedule=gas.DiscreteVPSchedule.sd_linear(),
                          latent_shape=(4, size, size), conditions=lambda idx: {}, device=dev,
                          identity={"benchmark": "tiny-unet", "size": size}, name="bench")


def _checkpoint_problem(ckpt: str, comfyui: str | None, device: str, size: int) -> DistillProblem:
    """The trainer's own problem for ``ckpt`` (ComfyUI's loader, CFG 7.5, the built-in prompts), ``8*size`` px."""
    from trainer.comfy_adapter import build_problem

    return build_problem(ckpt, comfyui=comfyui or os.environ.get("COMFYUI_PATH"), device=device, width=8 * size,
                         height=8 * size, name="bench")


def _one(nfe: int, ckpt: bool, iters: int, device: str, size: int, batch: int, checkpoint: str | None = None,
         comfyui: str | None = None) -> dict[str, float]:
    from trainer.batches import training_batch
    from trainer.config import DistillConfig
    from trainer.run_state import RunState
    from trainer.runtime import resolve_amp
    from trainer.steps import StepContext, solver_step
    from trainer.teacher import end_sigmas

    torch.manual_seed(0)
    problem = (_checkpoint_problem(checkpoint, comfyui, device, size) if checkpoint
               else tiny_unet_problem(device, size))
    dev = problem.device
    shape = problem.latent_shape
    cfg = DistillConfig(nfe=nfe, mode="gs", batch=batch, train_size=max(batch, 16), grad_checkpoint=ckpt, amp="off")
    s0, _ = end_sigmas(problem, cfg.t_eps)
    ctx = StepContext(problem, cfg, resolve_amp("off", dev), s0)
    run = RunState(problem, cfg)
    noise = torch.randn(cfg.train_size, *shape)
    target = torch.randn(cfg.train_size, *shape) * 0.5

    # autograd-saved bytes of one forward pass
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        except RuntimeError:
            pass
        return t

    from trainer.runtime import run_student, start_state

    x = start_state(problem, noise[:batch], s0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run_student(problem, run.solver, x, problem.conditions(list(range(batch))),
                          autocast=ctx.autocast, differentiable=True, grad_checkpoint=ckpt)
    saved_mb = sum(seen.values()) / 2**20
    del out

    times, peaks = [], []
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(iters):
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        run.step += 1
        solver_step(ctx, run, training_batch(problem, cfg, run.step, noise, target))
        if dev.type == "cuda":
            torch.cuda.synchronize()
            peaks.append((torch.cuda.max_memory_allocated() - base) / 2**20)
        times.append(time.perf_counter() - start)
    if dev.type != "cuda":
        peaks.append((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024)  # KiB on Linux
    return {"saved_mb": saved_mb, "peak_mb": max(peaks), "s_per_it": statistics.median(times)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nfe", type=int, nargs="+", default=[4, 6, 8, 10])
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=32, help="latent side (64 = SD1.5 at 512 px)")
    ap.add_argument("--batch", type=int, default=4)
    model = ap.add_mutually_exclusive_group()
    model.add_argument("--ckpt", help="a checkpoint (name in ComfyUI's models/checkpoints, or path) instead of the "
                                      "tiny UNet")
    model.add_argument("--tiny-sd15", action="store_true",
                       help="the tests' tiny SD1.5-shaped checkpoint (random weights), written to a temporary folder")
    ap.add_argument("--comfyui", help="ComfyUI folder for --ckpt / --tiny-sd15 (default: $COMFYUI_PATH)")
    ap.add_argument("--one", nargs=2, metavar=("NFE", "CKPT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        res = _one(int(args.one[0]), args.one[1] == "1", args.iters, args.device, args.size, args.batch, args.ckpt,
                   args.comfyui)
        print(json.dumps(res))
        return
    if args.tiny_sd15:
        from tests.helpers.tiny_checkpoints import write_tiny_sd15

        folder = tempfile.mkdtemp(prefix="gas-bench-")
        args.ckpt = str(write_tiny_sd15(Path(folder) / "tiny_sd15.safetensors"))
    try:
        _table(args)
    finally:
        if args.tiny_sd15:
            shutil.rmtree(folder, ignore_errors=True)


def _table(args: argparse.Namespace) -> None:
    model = (f"{Path(args.ckpt).name} through ComfyUI, CFG, latents {args.batch}x4x{args.size}x{args.size}"
             if args.ckpt else f"tiny UNet eps-model, latents {args.batch}x4x{args.size}x{args.size}")
    print(f"trainer iteration (GS, L1), {model}, device {args.device}, torch {torch.__version__}")
    peak_name = "CUDA peak MB" if args.device.startswith("cuda") else "RSS growth MB"
    print(f"| NFE | checkpointing | saved MB | {peak_name} | s/it |")
    print("|---:|---|---:|---:|---:|")
    for nfe in args.nfe:
        for ckpt in (True, False):
            cmd = [sys.executable, "-m", "benchmarks.trainer_memory", "--one", str(nfe), "1" if ckpt else "0",
                   "--iters", str(args.iters), "--device", args.device, "--size", str(args.size),
                   "--batch", str(args.batch)]
            cmd += ["--ckpt", args.ckpt] if args.ckpt else []
            cmd += ["--comfyui", args.comfyui] if args.comfyui else []
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
            if done.returncode != 0:
                print(f"| {nfe} | {'per call' if ckpt else 'off'} | failed: {done.stderr.strip()[-200:]} | | |")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"| {nfe} | {'per call' if ckpt else 'off'} | {r['saved_mb']:.2f} | {r['peak_mb']:.0f} | "
                  f"{r['s_per_it']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
