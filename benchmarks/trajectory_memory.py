"""Memory of the state loss's trajectory cache: held in memory against read from its shards (``trainer.shard_rows``).

Writes a synthetic cache of ``--samples`` teacher outputs of ``1 + 2 P`` latents each (random values, the trainer's
shard format), then, in a fresh process per mode, loads it as the trainer does (``TeacherCache.get``) and reads
training batches from it (200 random batches). Prints the peak resident memory the load added (on Linux it counts
the file pages a process maps, which the system can drop), the anonymous memory the process holds afterwards (its
own, which it cannot), and the time per batch read::

    python -m benchmarks.trajectory_memory                       # SD1.5 at 256 px: latents 4x32x32, 1400 samples
    python -m benchmarks.trajectory_memory --latent 4,64,64      # SD1.5 at 512 px (about 3 GB on disk)
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from trainer.teacher import SHARD_SIZE, TeacherCache


def _cache(root: Path, latent: tuple[int, ...], points: int) -> TeacherCache:
    return TeacherCache(root, {"bench": "trajectory_memory", "latent": list(latent), "points": points}, latent,
                        (1 + 2 * points, *latent))


def write_cache(root: Path, samples: int, latent: tuple[int, ...], points: int) -> None:
    """Shards of random teacher outputs for indices ``0 .. samples - 1``."""
    cache = _cache(root, latent, points)
    gen = torch.Generator().manual_seed(0)
    for shard in range(math.ceil(samples / SHARD_SIZE)):
        idx = range(shard * SHARD_SIZE, min(samples, (shard + 1) * SHARD_SIZE))
        cache.write_shard(shard, {i: (torch.randn(latent, generator=gen),
                                      torch.randn((1 + 2 * points, *latent), generator=gen)) for i in idx})


def _anon_mb() -> float:
    """Anonymous resident memory (MB): what the process holds itself, not file pages the system can drop (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def child(root: Path, samples: int, latent: tuple[int, ...], points: int, in_memory: bool, batch: int) -> dict:
    """Load the cache as the trainer does and read 200 batches: peak RSS growth and anonymous memory growth (MB),
    load seconds, ms per batch."""
    before, anon_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, _anon_mb()
    cache = _cache(root, latent, points)
    t0 = time.perf_counter()
    _, lat = cache.get(list(range(samples)), lambda _: (_ for _ in ()).throw(RuntimeError("missing")),
                       progress=False, in_memory=in_memory)
    load_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(1)
    t0 = time.perf_counter()
    for _ in range(200):
        rows = torch.randperm(samples, generator=gen)[:batch].tolist()
        lat[rows]
    read_ms = (time.perf_counter() - t0) / 200 * 1e3
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rss_mb": (peak - before) / 1024, "anon_mb": _anon_mb() - anon_before, "load_s": load_s,
            "read_ms": read_ms}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=1400)
    ap.add_argument("--latent", default="4,32,32", help="latent shape, comma-separated")
    ap.add_argument("--points", type=int, default=16, help="kept teacher points (1 + 2P latents per sample)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--child", choices=("memory", "shards"), help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    latent = tuple(int(v) for v in args.latent.split(","))
    if args.child:
        out = child(Path(args.dir), args.samples, latent, args.points, args.child == "memory", args.batch)
        print(json.dumps(out))
        return
    gb = 4 * args.samples * (1 + 2 * args.points) * math.prod(latent) / 1e9
    print(f"torch {torch.__version__}; {args.samples} samples x {1 + 2 * args.points} latents {list(latent)} "
          f"float32 = {gb:.2f} GB; batch {args.batch}")
    with tempfile.TemporaryDirectory() as tmp:
        write_cache(Path(tmp), args.samples, latent, args.points)
        print("| trajectory | peak RSS added MB | anonymous MB held after | load s | ms per batch read |")
        print("|---|---:|---:|---:|---:|")
        for mode in ("memory", "shards"):
            cmd = [sys.executable, "-m", "benchmarks.trajectory_memory", "--child", mode, "--dir", tmp,
                   "--samples", str(args.samples), "--latent", args.latent, "--points", str(args.points),
                   "--batch", str(args.batch)]
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            where = "in memory" if mode == "memory" else "read from the shards"
            print(f"| {where} | {res['rss_mb']:.0f} | {res['anon_mb']:.0f} | {res['load_s']:.1f} | "
                  f"{res['read_ms']:.3f} |")


if __name__ == "__main__":
    main()
