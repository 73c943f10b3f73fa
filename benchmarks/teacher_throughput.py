"""Teacher-generation throughput with K processes under torchrun (the trainer's sharded teacher cache).

Usage: ``python -m benchmarks.teacher_throughput [--procs 1 2] [--samples 64] [--steps 32] [--size 32]
[--threads 1] [--device cpu|cuda]``

For each K, ``torchrun --nproc_per_node=K`` runs :func:`trainer.teacher_data.load_teacher` (exactly what the trainer
does before training: rank 0 lists the missing samples, the jobs are dealt out round-robin, every rank merges its
samples into the shared cache under the cache's file lock, all ranks read the shards back) for ``--samples`` samples
of a small UNet-like eps model (``benchmarks.trainer_memory.TinyUNet``) on SD-shaped latents ``4 x size x size``,
with DPM-Solver++(3M) over ``--steps`` steps, into an empty cache. Each process uses ``--threads`` CPU threads (on
CUDA, its own GPU). The table gives the wall-clock seconds from the first to the last barrier on rank 0, samples per
second, and the speed-up over K=1: on a machine with at least K x threads free cores (or K GPUs) the ideal is K.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _worker(samples: int, steps: int, size: int, device: str, cache_dir: str) -> None:
    from benchmarks.trainer_memory import tiny_unet_problem
    from trainer.config import DistillConfig
    from trainer.distributed import init_distributed, shutdown_distributed
    from trainer.runtime import resolve_amp
    from trainer.teacher_data import load_teacher

    dist = init_distributed(device)
    torch.manual_seed(0)
    problem = tiny_unet_problem(dist.device, size)
    config = DistillConfig(train_size=samples, val_size=max(dist.world, 2), teacher_steps=steps, teacher_batch=4,
                           cache_dir=cache_dir, amp="off")
    dist.barrier()
    start = time.perf_counter()
    with torch.no_grad():
        load_teacher(problem, config, resolve_amp("off", dist.device), progress=False, dist=dist)
    dist.barrier()
    seconds = time.perf_counter() - start
    if dist.is_main:
        print(json.dumps({"world": dist.world, "seconds": seconds, "samples": samples + config.val_size}), flush=True)
    shutdown_distributed()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="numbers of processes to compare")
    ap.add_argument("--samples", type=int, default=64, help="training samples to generate (plus a few held-out)")
    ap.add_argument("--steps", type=int, default=32, help="teacher steps (model calls per sample)")
    ap.add_argument("--size", type=int, default=32, help="latent side (64 = SD1.5 at 512 px)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per process")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--worker", nargs=1, metavar="CACHE_DIR", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args.samples, args.steps, args.size, args.device, args.worker[0])
        return

    print(f"teacher generation: tiny UNet eps-model, latents 4x{args.size}x{args.size}, DPM-Solver++(3M) "
          f"{args.steps} steps, {args.samples} samples, device {args.device}, {args.threads} thread(s) per process, "
          f"{os.cpu_count()} CPU cores, torch {torch.__version__}")
    print("| processes | seconds | samples/s | speed-up |")
    print("|---:|---:|---:|---:|")
    base = None
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(REPO)}
    for k in args.procs:
        with tempfile.TemporaryDirectory() as cache:
            cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={k}", "--master_addr=127.0.0.1",
                   f"--master_port={_free_port()}", "-m", "benchmarks.teacher_throughput", "--samples",
                   str(args.samples), "--steps", str(args.steps), "--size", str(args.size), "--device", args.device,
                   "--worker", cache]
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
        rows = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not rows:
            print(f"| {k} | failed: {done.stderr.strip()[-200:]} | | |")
            continue
        r = json.loads(rows[-1])
        rate = r["samples"] / r["seconds"]
        base = base or rate
        print(f"| {k} | {r['seconds']:.1f} | {rate:.2f} | {rate / base:.2f} |", flush=True)


if __name__ == "__main__":
    main()
