"""The GAS trainer: distils few-step GS/GAS solvers from a many-step teacher (``python -m trainer``).

Public API::

    from trainer.distill import distill, distill_denoiser
    from trainer import DistillConfig, DistillProblem, DistillResult

* :func:`trainer.distill.distill(problem, config) <trainer.distill.distill>` runs the whole pipeline for a
  :class:`~trainer.problem.DistillProblem` (a k-diffusion-style denoiser, its noise schedule and a source of
  conditioning batches) and returns a :class:`~trainer.distill.DistillResult`.
* :func:`trainer.distill.distill_denoiser(denoiser, schedule, conditions, latent_shape, config)
  <trainer.distill.distill_denoiser>` is the same for your own model without building the problem yourself.
* :func:`trainer.multi_nfe.distill_nfes(problem, config, [4, 6, 8]) <trainer.multi_nfe.distill_nfes>` trains one
  solver per NFE on one shared teacher and writes them into one solver file (``python -m trainer --nfe 4,6,8``).
* :mod:`trainer.demo` holds the built-in analytic teacher (``python -m trainer --demo``).

Every error a user can meet is in :mod:`trainer.errors` (``TrainerError`` and its subclasses; the README's "Errors").
(The functions are not re-exported here: ``trainer.distill`` stays the module.) Importing this package does not
import ComfyUI; only ``python -m trainer --ckpt`` does (``trainer.comfy_adapter``).
"""

from .config import DistillConfig
from .distill import DistillResult
from .errors import ProblemError, TrainerError
from .problem import DistillProblem

__all__ = ["DistillConfig", "DistillProblem", "DistillResult", "ProblemError", "TrainerError"]
