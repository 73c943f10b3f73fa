"""Tiny problems and configs shared by the trainer tests (CPU, seconds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.config import DistillConfig
from trainer.demo import make_demo_problem
from trainer.problem import DistillProblem


def tiny_problem(**kw: Any) -> DistillProblem:
    """The demo mixture at 2x8x8 with 3 classes (fast enough for many training iterations)."""
    args = {"channels": 2, "size": 8, "classes": 3, "upscale": 2}
    args.update(kw)
    return make_demo_problem(**args)


def tiny_config(tmp: Path, **kw: Any) -> DistillConfig:
    """Small sizes, everything written below ``tmp``, the small discriminator."""
    args: dict[str, Any] = {
        "nfe": 4, "mode": "gs", "train_size": 32, "val_size": 32, "batch": 4, "iters": 20, "teacher_steps": 24,
        "teacher_batch": 32, "eval_batch": 32, "disc_preset": "small", "ckpt_every": 5, "eval_every": 1000,
        "log_every": 1000, "grid_samples": 4, "out_dir": str(tmp / "out"), "cache_dir": str(tmp / "cache"),
        "run_dir": str(tmp / "runs"),
    }
    args.update(kw)
    return DistillConfig(**args)
