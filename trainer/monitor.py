"""Around the loop: Ctrl-C handling, and what one iteration reports (CSV / TensorBoard logs, progress bar, log lines).

Only rank 0 writes logs and shows progress (:meth:`RunMonitor.disabled` on the others).
"""

from __future__ import annotations

import csv
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from .config import DistillConfig
from .errors import ConfigError

__all__ = ["InterruptGuard", "RunMonitor"]

log = logging.getLogger("trainer")


class InterruptGuard:
    """First Ctrl-C: finish the iteration, save, stop. Second Ctrl-C: stop at once (KeyboardInterrupt)."""

    def __init__(self, announce: bool = True) -> None:
        self.interrupted = False
        self.announce = announce
        self._previous: Any = None
        self._installed = False

    def _handler(self, signum: int, frame: Any) -> None:
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True
        if self.announce:
            log.warning("Ctrl-C: finishing this iteration and saving the training state (press again to abort)")

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)


class RunMonitor:
    """The CSV log and TensorBoard events (optional), the progress bar and the periodic log lines of one run.

    Created before the teacher is generated, so a missing tensorboard package is reported before any work.
    """

    FIELDS = ("step", "seconds", "loss", "distill", "adv", "d_loss", "r1", "r2", "grad_norm", "val_l1", "state")

    def __init__(self, run_dir: Path | None, config: DistillConfig | None, *, progress: bool = False) -> None:
        self.config = config
        self.progress = progress
        self.csv_path = run_dir / "log.csv" if run_dir is not None and config is not None and config.csv else None
        self.tb: Any = None
        self.bar: Any = None
        self.started = time.time()
        if run_dir is not None and config is not None and config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("`tensorboard` needs the tensorboard package: pip install tensorboard") from None
            self.tb = SummaryWriter(str(run_dir / "tb"))

    @classmethod
    def disabled(cls) -> RunMonitor:
        """A monitor that writes and shows nothing (ranks other than 0)."""
        return cls(None, None)

    def start(self, done: int) -> None:
        """Training starts (or resumes) after iteration ``done``: the clock and the progress bar."""
        self.started = time.time()
        if self.progress and self.config is not None:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=self.config.iters, initial=done, desc="train", unit="it", dynamic_ncols=True)

    def iteration(self, step: int, stats: dict[str, float]) -> None:
        """Log iteration ``step``: a CSV row, TensorBoard scalars, the bar, and a log line when it is due."""
        self._write({"step": step, "seconds": time.time() - self.started, **stats})
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{stats[k]:.4g}" for k in ("loss", "distill", "val_l1") if k in stats},
                                 refresh=False)
        if self.config is not None and (step % self.config.log_every == 0 or "val_l1" in stats):
            parts = " ".join(f"{k} {v:.4g}" for k, v in stats.items())
            log.info("iteration %d/%d: %s", step, self.config.iters, parts)  # the CLI writes it above the bar

    def _write(self, row: dict[str, float]) -> None:
        if self.csv_path is not None:
            new = not self.csv_path.exists()
            with open(self.csv_path, "a", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=self.FIELDS, extrasaction="ignore")
                if new:
                    writer.writeheader()
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        if self.tb is not None:
            for key, value in row.items():
                if key != "step":
                    self.tb.add_scalar(key, value, int(row["step"]))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
