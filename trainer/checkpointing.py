"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A state is a plain dict of tensors, numbers, strings, lists and dicts, written with ``torch.save`` to a temporary
file and renamed over ``state.pt`` (a crash while writing leaves the previous state intact), and read back with
``torch.load(weights_only=True)`` only (no arbitrary pickles). Contents: ``step``, the solver parameters, the EMA, the
solver's Adam state, the discriminator and its Adam state (GAS), an AMP grad-scaler state (fp16), the CPU/CUDA RNG
states, the config and the teacher-cache key. Data order and the discriminator's fresh noise are pure functions of
(seed, step), so restoring this state and continuing gives the same parameters as a run that never stopped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from gas.atomic_file import write_atomically

from .config import DistillConfig
from .errors import ResumeError

__all__ = ["RESUME_KEYS", "STATE_FORMAT", "STATE_VERSION", "check_compatible", "load_state", "save_state"]

STATE_FORMAT = "gas-trainer-state"
STATE_VERSION = 1
#: Config fields that must match for ``--resume`` (the others, e.g. ``iters`` or ``ckpt_every``, may change).
RESUME_KEYS = ("nfe", "mode", "t_eps", "seed", "train_size", "batch", "lr", "grad_clip", "ema", "loss", "disc_lr",
               "disc_weight", "r1_gamma", "disc_preset", "disc_widths", "disc_groups", "disc_blocks", "lr_schedule",
               "lr_warmup", "time_init", "loss_reduce", "cauchy_scale", "state_loss", "state_points", "state_anneal",
               "disc_fake", "disc_ramp")
#: Values of resume keys that states written before the key existed were trained with.
RESUME_KEY_DEFAULTS: dict[str, Any] = {"lr_schedule": "constant", "lr_warmup": 0, "time_init": "uniform",
                                       "loss_reduce": "mean", "cauchy_scale": 3.0, "state_loss": 0.0,
                                       "state_points": 16, "state_anneal": "none", "disc_fake": "fresh",
                                       "disc_ramp": 0.0}


def save_state(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Atomically write a training state."""
    payload = {"format": STATE_FORMAT, "version": STATE_VERSION, **state}
    return write_atomically(path, lambda tmp: torch.save(payload, tmp))


def load_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a training state (``weights_only=True``); :class:`~trainer.errors.ResumeError` if unusable."""
    path = Path(path)
    if not path.is_file():
        raise ResumeError(f"there is no training state to resume at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ResumeError(f"the training state {path} cannot be read ({type(exc).__name__}); "
                          "start over with `overwrite`") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ResumeError(f"{path} is not a GAS trainer state; start over with `overwrite`")
    if state.get("version") != STATE_VERSION:
        raise ResumeError(f"{path} was written by another trainer version; start over with `overwrite`")
    return state


def _with_training_samples(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with ``train_size`` the count the run trains on (GAS mode's ``gas_train_size`` where set), so that
    a resume compares the samples used, not the unused mode's setting."""
    return {**config, "train_size": DistillConfig.from_dict(config).training_samples}


def check_compatible(saved: dict[str, Any], current: dict[str, Any], saved_key: str, current_key: str,
                     path: Path) -> None:
    """Refuse to resume a state trained with other settings (one sentence naming the first difference)."""
    saved, current = _with_training_samples(saved), _with_training_samples(current)
    for key in RESUME_KEYS:
        a, b = saved.get(key, RESUME_KEY_DEFAULTS.get(key)), current.get(key)
        if isinstance(a, tuple):
            a = list(a)
        if isinstance(b, tuple):
            b = list(b)
        if a != b:
            raise ResumeError(f"the training state {path} used {key}={a!r} but this run has {key}={b!r}; use the "
                              "same settings to resume, or `overwrite` to start over")
    if saved_key != current_key:
        raise ResumeError(f"the training state {path} was trained against another teacher (model, prompts or teacher "
                          "settings changed); use the same settings to resume, or `overwrite` to start over")
