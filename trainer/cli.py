"""``python -m trainer``: distil a GS/GAS solver for a checkpoint (through ComfyUI) or run the built-in demo.

    python -m trainer --demo                              # no ComfyUI, no checkpoint: the analytic demo (CPU)
    python -m trainer --ckpt sd15.safetensors --nfe 4     # from ComfyUI/custom_nodes/<this pack>/
    python -m trainer --ckpt sd15.safetensors --nfe 4,6,8 # one solver per NFE, one teacher, one file

This is the only module that knows the command line: it maps the options to the typed arguments of the Python API
(:class:`~trainer.config.DistillConfig`, ``trainer.comfy_adapter.build_problem(ckpt, comfyui=..., ...)``, imported
only for ``--ckpt``, so ``--help`` and ``--demo`` never import ComfyUI) and the parameter names in the library's
error messages back to option names (:func:`option_names`, :meth:`trainer.errors.TrainerError.naming`).

Exit status: 0 done, 2 bad input (one sentence on stderr), 3 training diverged (NaN/inf), 130 interrupted (state
saved; ``--resume`` continues).

Several GPUs: ``torchrun --nproc_per_node=K -m trainer ...`` with the same options (:mod:`trainer.distributed`).
Each process works on ``cuda:LOCAL_RANK`` (made the current device before ComfyUI is imported, so ComfyUI loads the
model there) or, on CPU, with the gloo backend. Rank 0 prints progress and messages; the other ranks log warnings
only (prefixed ``[rank r]``). An error that every rank meets is printed once, by rank 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import (
    DEFAULT_RECIPE,
    DEFAULT_TEACHER_STEPS,
    DISC_FAKES,
    DISC_PRESETS,
    LOSS_REDUCTIONS,
    LR_SCHEDULES,
    PACK_ROOT,
    RECIPES,
    SELECTIONS,
    STATE_ANNEALS,
    TIME_INITS,
    DistillConfig,
)
from .distributed import (
    Dist,
    env_rank,
    env_world,
    init_distributed,
    mark_on_every_rank,
    on_every_rank,
    shutdown_distributed,
)
from .errors import ConfigError, TrainerError

__all__ = ["build_parser", "config_from_args", "main", "option_names"]

log = logging.getLogger("trainer")

#: The defaults the help states: the default recipe's values (``--recipe`` sets the base of every option below it).
_D = DistillConfig.from_recipe(DEFAULT_RECIPE)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" unless the help text already states its default, or the option is a flag."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or action.nargs == 0:
            return text
        return super()._get_help_string(action) or text


class _Parser(argparse.ArgumentParser):
    """Under torchrun only rank 0 prints usage errors (every rank still exits with status 2)."""

    def error(self, message: str) -> Any:
        if env_rank() > 0:
            self.exit(2)
        return super().error(message)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (every option documented with its default)."""
    from .demo import DEMO_CFG, DEMO_DEFAULTS

    def demo(key: str) -> str:
        differs = key in DEMO_DEFAULTS and DEMO_DEFAULTS[key] != getattr(_D, key)
        return f"; {DEMO_DEFAULTS[key]} with --demo" if differs else ""

    p = _Parser(
        prog="python -m trainer",
        description="Distil a few-step GS/GAS solver from a many-step teacher (Generalized Adversarial Solver, "
                    "ICLR 2026). Writes <out>/<name>-nfe<N>-<mode>.safetensors, loadable by the GAS nodes, plus a "
                    "report (.md) and an image grid (.png); with --nfe 4,6,8 one file <name>-nfe4-6-8-<mode> holds "
                    "a solver per NFE.",
        epilog="Several GPUs (or CPU processes): torchrun --nproc_per_node=K -m trainer ... with the same options; "
               "--batch must be divisible by K (trainer/README.md, 'Multi-GPU').",
        formatter_class=_HelpFormatter,
    )
    what = p.add_argument_group("what to distil")
    src = what.add_mutually_exclusive_group()
    src.add_argument("--ckpt", metavar="NAME_OR_PATH", default=None,
                     help="checkpoint file name in ComfyUI's models/checkpoints, or a path; the family is detected "
                          "by ComfyUI")
    src.add_argument("--unet", metavar="NAME_OR_PATH", default=None,
                     help="diffusion-model-only file (SD3.5, Flux, Wan releases) in ComfyUI's models/diffusion_models, "
                          "or a path, loaded as UNETLoader does; needs --clip")
    src.add_argument("--demo", action="store_true",
                     help="built-in analytic teacher (conditional Gaussian mixture with CFG): no ComfyUI, no "
                          "checkpoint; trains GS and GAS and prints the comparison table")
    what.add_argument("--comfyui", metavar="PATH", default=os.environ.get("COMFYUI_PATH"),
                      help="ComfyUI folder (default: $COMFYUI_PATH, else the folder two levels above this pack)")
    what.add_argument("--nfe", type=_nfe_list, default=[_D.nfe], metavar="N[,N...]",
                      help=f"network evaluations (steps) of the learned solver; several, e.g. 4,6,8, train one solver "
                           f"each on one shared teacher and write them into one file (default: {_D.nfe})")
    what.add_argument("--mode", choices=("gs", "gas"), default=None,
                      help="gs: distillation loss only; gas: plus the adversarial loss (default: gas; both with "
                           "--demo)")
    what.add_argument("--clip", metavar="NAME_OR_PATH", action="append", default=None,
                      help="text-encoder file in ComfyUI's models/text_encoders, or a path; repeat for models with "
                           "several (Flux: clip_l and t5xxl); replaces a checkpoint's own")
    what.add_argument("--clip-type", metavar="TYPE", default=None,
                      help="ComfyUI's text-encoder type of --clip (stable_diffusion, sd3, flux, wan, ...; default: "
                           "the model family's)")
    what.add_argument("--vae", metavar="NAME_OR_PATH", default=None,
                      help="VAE file for the report's images (default: the checkpoint's; none with --unet)")
    cond = p.add_argument_group("conditioning")
    cond.add_argument("--prompts", metavar="FILE", default=None,
                      help="prompts file, one per line (default: the built-in list of varied prompts; the last "
                           "sixth of a file with >= 12 prompts is held out for evaluation)")
    cond.add_argument("--negative", metavar="TEXT", default="",
                      help="negative prompt (default: empty, as in the paper)")
    cond.add_argument("--cfg", type=float, default=None,
                      help=f"classifier-free guidance scale (default: the family's, 7.5 for SD1.x; {DEMO_CFG:g} "
                           "with --demo)")
    cond.add_argument("--width", type=int, default=None, help="image width in pixels (default: the family's native, "
                                                              "512 for SD1.x)")
    cond.add_argument("--height", type=int, default=None, help="image height in pixels (default: as --width)")
    cond.add_argument("--frames", type=int, default=None,
                      help="video models: length in frames (default 25)")
    cond.add_argument("--guidance", type=float, default=None,
                      help="guidance-distilled models (Flux dev): the guidance value trained for (default 3.5); "
                           "other models take --cfg")
    cond.add_argument("--shift", default=None, metavar="S|auto",
                      help="flow models: time shift s of sigma = s t / (1 + (s-1) t), as ModelSamplingSD3 / "
                           "ModelSamplingFlux set it; 'auto' (Flux's default) = ModelSamplingFlux's rule at "
                           "--width x --height (default: the model's own)")
    cond.add_argument("--seed", type=int, default=_D.seed,
                      help="seed: teacher noise of sample i is seed+i; data order and discriminator derive from it")
    data = p.add_argument_group(f"data and optimisation (defaults: --recipe {DEFAULT_RECIPE})")
    data.add_argument("--recipe", choices=tuple(RECIPES), default=DEFAULT_RECIPE,
                      help="named training recipe whose values the options below start from (paper: the GAS paper's "
                           "SD recipe; tuned: the recipe bench's best, see the trainer README) (default: "
                           f"{DEFAULT_RECIPE})")
    data.add_argument("--train-size", type=int, default=None,
                      help=f"teacher samples for training, in both modes when given (default: {_D.train_size}; in "
                           f"gas mode --gas-train-size where set)")
    data.add_argument("--gas-train-size", type=int, default=None,
                      help="teacher samples for training in gas mode, 0 = --train-size (default: 0; the recipe "
                           "bench measured 5600 against GS's 1400 as a tie in FD, see benchmarks/README.md)")
    data.add_argument("--val-size", type=int, default=None,
                      help=f"held-out samples for evaluation (default: {_D.val_size}{demo('val_size')})")
    data.add_argument("--batch", type=int, default=None,
                      help=f"global batch size, split evenly over the processes under torchrun (default: {_D.batch})")
    data.add_argument("--iters", type=int, default=None,
                      help=f"training iterations (default: the recipe's, {_D.iters}; "
                           f"{RECIPES['paper']['iters']} with --recipe paper)")
    data.add_argument("--lr", type=float, default=None, help=f"Adam learning rate of the solver (default: {_D.lr:g})")
    data.add_argument("--grad-clip", type=float, default=None,
                      help=f"gradient-norm clip, 0 = off (default: {_D.grad_clip:g})")
    data.add_argument("--ema", type=float, default=None,
                      help=f"EMA decay of the solver parameters (default: {_D.ema:g})")
    data.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None,
                      help=f"solver learning rate over the iterations; cosine decays to 0 at --iters "
                           f"(default: {_D.lr_schedule})")
    data.add_argument("--lr-warmup", type=int, default=None,
                      help=f"iterations of linear lr warm-up (default: {_D.lr_warmup})")
    data.add_argument("--time-init", choices=TIME_INITS, default=None,
                      help=f"initial solver timesteps: uniform in GAS time, or uniform in log-SNR "
                           f"(default: {_D.time_init})")
    data.add_argument("--starts", type=int, default=None,
                      help="multi-start: K short runs from K initial grids (uniform to log-SNR), the best on the "
                           "held-out samples goes on; their iterations count in --iters (default: 1)")
    data.add_argument("--start-iters", type=int, default=None,
                      help="iterations of each start (default: --iters / (5 K))")
    data.add_argument("--select", choices=SELECTIONS, default=None,
                      help="which EMA solver is written: last (the end of training, the paper) or best (the lowest "
                           "held-out L1 of the checks every --eval-every iterations)")
    data.add_argument("--loss", choices=("l1", "lpips"), default=None,
                      help=f"distillation loss: L1 on latents, or LPIPS-VGG on decoded images (needs the VGG "
                           f"weights) (default: {_D.loss})")
    data.add_argument("--loss-reduce", choices=LOSS_REDUCTIONS, default=None,
                      help=f"how a batch's per-sample distances make the loss (default: {_D.loss_reduce}): mean "
                           "(the paper); log, the mean of "
                           "log(distance + 1e-6), which weighs every sample by its relative error (robust to the "
                           "few samples a few-step solver sends to another mode); cauchy, c log(1 + d / c) with c "
                           "--cauchy-scale batch medians (L1 for typical samples, robust to outliers)")
    data.add_argument("--cauchy-scale", type=float, default=None,
                      help=f"c of --loss-reduce cauchy in medians of the batch's distances: a sample at c medians "
                           f"counts half of what L1 would; larger is closer to L1 (default: {_D.cauchy_scale:g})")
    data.add_argument("--state-loss", type=float, default=None,
                      help="weight of a loss on the solver's intermediate states against the teacher's trajectory "
                           f"(0 = the end state only, the paper; default: {_D.state_loss:g}); the teacher cache then "
                           "also keeps --state-points states per sample")
    data.add_argument("--state-points", type=int, default=None,
                      help=f"teacher steps whose state is kept for --state-loss (default: {_D.state_points})")
    data.add_argument("--state-anneal", choices=STATE_ANNEALS, default=None,
                      help="--state-loss weight over training: none (constant) or linear (decayed to 0 at the end) "
                           f"(default: {_D.state_anneal})")
    adv = p.add_argument_group("adversarial (--mode gas)")
    adv.add_argument("--disc-lr", type=float, default=None,
                     help=f"Adam learning rate of the discriminator (default: {_D.disc_lr:g}{demo('disc_lr')})")
    adv.add_argument("--disc-weight", type=float, default=None,
                     help=f"weight of the adversarial loss (default: {_D.disc_weight:g}{demo('disc_weight')})")
    adv.add_argument("--r1-gamma", type=float, default=None,
                     help=f"gamma of the R1 + R2 penalties (default: {_D.r1_gamma:g})")
    adv.add_argument("--r1-every", type=int, default=None,
                     help=f"R1/R2 penalty on every N-th discriminator step only, weighted N times (lazy "
                          f"regularisation; default: {_D.r1_every})")
    adv.add_argument("--disc-every", type=int, default=None,
                     help=f"one discriminator step every N iterations (default: {_D.disc_every})")
    adv.add_argument("--disc-fake", choices=DISC_FAKES, default=None,
                     help="the discriminator's fake batch: fresh = the student on fresh noise (the paper), paired = "
                          f"on the batch's own noises (default: {_D.disc_fake})")
    adv.add_argument("--disc-ramp", type=float, default=None,
                     help="ramp the adversarial weight linearly from 0 over this fraction of the iterations; 0 = "
                          f"full weight from the start (default: {_D.disc_ramp:g})")
    adv.add_argument("--disc-size", choices=tuple(DISC_PRESETS), default=None,
                     help=f"discriminator size: paper = R3GAN latent (22.4 M parameters at 4x64x64), small = for "
                          f"tests and demos (default: {_D.disc_preset}{demo('disc_preset')})")
    tea = p.add_argument_group("teacher")
    tea.add_argument("--teacher", choices=("dpmpp3m", "ipndm-gits"), default=_D.teacher,
                     help="dpmpp3m: DPM-Solver++(3M) with many steps (converged); ipndm-gits: the paper's SD teacher, "
                          "iPNDM on GITS sigmas with NFE n+1")
    tea.add_argument("--teacher-steps", type=int, default=None,
                     help=f"teacher steps (default: the recipe's for dpmpp3m, {RECIPES['tuned']['dpmpp3m_steps']} "
                          f"in tuned and {DEFAULT_TEACHER_STEPS} in paper; NFE+1 for ipndm-gits)")
    tea.add_argument("--teacher-order", type=int, default=_D.teacher_order, choices=(1, 2, 3, 4),
                     help="iPNDM order of the ipndm-gits teacher")
    tea.add_argument("--teacher-batch", type=int, default=_D.teacher_batch, help="samples per teacher batch")
    tea.add_argument("--cache-dir", metavar="DIR", default=None,
                     help=f"teacher cache (default: {PACK_ROOT / 'gas_cache'})")
    out = p.add_argument_group("output, checkpoints, logs")
    out.add_argument("--out", metavar="DIR", default=None,
                     help=f"folder of the solver file and report (default: {PACK_ROOT / 'models' / 'gas_solvers'})")
    out.add_argument("--name", default=None,
                     help="output name: <name>-nfe<N>-<mode>.safetensors, with several NFEs <name>-nfe4-6-8-<mode> "
                          "(default: the checkpoint's file name; "
                          "'demo' with --demo)")
    out.add_argument("--overwrite", action="store_true",
                     help="replace an existing solver file and start over an unfinished run")
    out.add_argument("--resume", action="store_true",
                     help="continue the unfinished run of this output from its last training checkpoint")
    out.add_argument("--run-dir", metavar="DIR", default=None,
                     help=f"training state and logs (default: {PACK_ROOT / 'runs'})")
    out.add_argument("--ckpt-every", type=int, default=None,
                     help=f"iterations between training checkpoints (default: {_D.ckpt_every}{demo('ckpt_every')})")
    out.add_argument("--eval-every", type=int, default=None,
                     help=f"iterations between held-out evaluations (default: {_D.eval_every}{demo('eval_every')})")
    out.add_argument("--log-every", type=int, default=None,
                     help=f"iterations between log lines (default: {_D.log_every}{demo('log_every')})")
    out.add_argument("--csv", action="store_true", help="write a CSV log to <run dir>/<output>/log.csv")
    out.add_argument("--tensorboard", action="store_true", help="write TensorBoard events (needs tensorboard)")
    out.add_argument("--no-report", action="store_true", help="skip the markdown report and the image grid")
    out.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    comp = p.add_argument_group("compute")
    comp.add_argument("--device", default="auto",
                      help="torch device: auto = cuda if available, else cpu (under torchrun: each process takes "
                           "cuda:LOCAL_RANK)")
    comp.add_argument("--dtype", choices=("auto", "fp32", "fp16", "bf16"), default="auto",
                      help="model weight dtype (auto: the loader's choice for the device)")
    comp.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), default=_D.amp,
                      help="autocast of the model calls on CUDA (auto: bf16 where supported, else fp16)")
    comp.add_argument("--no-grad-checkpoint", action="store_true",
                      help="keep every model call's activations instead of recomputing them (faster, memory grows "
                           "with NFE)")
    return p


def _nfe_list(text: str) -> list[int]:
    """``"4"`` -> ``[4]``, ``"4,6,8"`` -> ``[4, 6, 8]`` (ascending, no repeats; the range is checked by the config)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of steps or a comma-separated list of them, e.g. "
                                         "4 or 4,6,8") from None
    if not values:
        raise argparse.ArgumentTypeError("give a number of steps or a comma-separated list of them, e.g. 4 or 4,6,8")
    return sorted(set(values))


#: The option of each Python parameter whose name is not its option's (``--nfe`` <- ``nfe`` is derived from the parser).
_RENAMED = {"out_dir": "--out", "disc_preset": "--disc-size", "grad_checkpoint": "--no-grad-checkpoint",
            "report": "--no-report", "comfyui": "--comfyui (or $COMFYUI_PATH)"}


def option_names(parser: argparse.ArgumentParser | None = None) -> dict[str, str]:
    """Parameter name (``DistillConfig`` field, ``build_problem`` argument) -> command-line option, for the library's
    error messages (:meth:`trainer.errors.TrainerError.naming`)."""
    options = {action.dest: max(action.option_strings, key=len) for action in (parser or build_parser())._actions
               if action.option_strings and action.dest != "help"}
    return {**options, **_RENAMED}


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise mark_on_every_rank(ConfigError(f"--device {name!r} is not a torch device (try auto, cpu or cuda)")) \
            from None
    if env_world() > 1 and dev.type == "cuda" and dev.index is not None:
        raise mark_on_every_rank(ConfigError(
            f"under torchrun every process uses the GPU of its LOCAL_RANK, so --device {name} cannot apply: pass "
            "--device cuda (or auto) and pick GPUs with CUDA_VISIBLE_DEVICES"))
    return name


def config_from_args(args: argparse.Namespace, *, demo: bool = False) -> DistillConfig:
    """The :class:`DistillConfig` of parsed options (``demo``: the demo's defaults where an option was not given)."""
    from .demo import DEMO_DEFAULTS

    base: dict[str, Any] = {**RECIPES[args.recipe], **(DEMO_DEFAULTS if demo else {})}

    def pick(value: Any, key: str) -> Any:
        if value is not None:
            return value
        return base.get(key, getattr(_D, key))

    # an explicit --train-size is the count of both modes unless --gas-train-size is given too
    gas_train_size = args.gas_train_size if args.gas_train_size is not None else \
        0 if args.train_size is not None else pick(None, "gas_train_size")

    return DistillConfig.from_recipe(
        args.recipe, nfe=args.nfe[0], mode=args.mode or "gas", seed=args.seed,
        train_size=pick(args.train_size, "train_size"),
        gas_train_size=gas_train_size,
        val_size=pick(args.val_size, "val_size"),
        batch=pick(args.batch, "batch"), iters=pick(args.iters, "iters"), lr=pick(args.lr, "lr"),
        grad_clip=pick(args.grad_clip, "grad_clip"), ema=pick(args.ema, "ema"),
        lr_schedule=pick(args.lr_schedule, "lr_schedule"), lr_warmup=pick(args.lr_warmup, "lr_warmup"),
        time_init=pick(args.time_init, "time_init"), select=pick(args.select, "select"),
        starts=pick(args.starts, "starts"), start_iters=pick(args.start_iters, "start_iters"),
        loss=pick(args.loss, "loss"), loss_reduce=pick(args.loss_reduce, "loss_reduce"),
        cauchy_scale=pick(args.cauchy_scale, "cauchy_scale"), state_loss=pick(args.state_loss, "state_loss"),
        state_points=pick(args.state_points, "state_points"), state_anneal=pick(args.state_anneal, "state_anneal"),
        disc_lr=pick(args.disc_lr, "disc_lr"), disc_weight=pick(args.disc_weight, "disc_weight"),
        r1_gamma=pick(args.r1_gamma, "r1_gamma"), r1_every=pick(args.r1_every, "r1_every"),
        disc_every=pick(args.disc_every, "disc_every"), disc_preset=pick(args.disc_size, "disc_preset"),
        disc_fake=pick(args.disc_fake, "disc_fake"), disc_ramp=pick(args.disc_ramp, "disc_ramp"),
        teacher=args.teacher,
        teacher_steps=args.teacher_steps, teacher_order=args.teacher_order, teacher_batch=args.teacher_batch,
        grad_checkpoint=not args.no_grad_checkpoint, amp=args.amp, out_dir=args.out, cache_dir=args.cache_dir,
        run_dir=args.run_dir, name=args.name, overwrite=args.overwrite, resume=args.resume,
        ckpt_every=pick(args.ckpt_every, "ckpt_every"), eval_every=pick(args.eval_every, "eval_every"),
        log_every=pick(args.log_every, "log_every"), csv=args.csv, tensorboard=args.tensorboard,
        report=not args.no_report,
    )


class _TqdmHandler(logging.Handler):
    """Log lines that do not break tqdm bars."""

    def emit(self, record: logging.LogRecord) -> None:
        msg = self.format(record)
        try:
            from tqdm.auto import tqdm

            tqdm.write(msg, file=sys.stderr)
        except ImportError:
            print(msg, file=sys.stderr)


def _setup_logging(quiet: bool, rank: int = 0) -> None:
    logger = logging.getLogger("trainer")
    logger.handlers.clear()
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter(f"[rank {rank}] %(message)s" if rank else "%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def _precheck_output(config: DistillConfig, nfes: list[int], name: str, dist: Dist, *,
                     demo_resume: bool = False) -> None:
    """Cheap checks before any model is loaded: NFE etc. (validate), output folder writable, no silent overwrite.

    Rank 0 checks and every rank gets its answer (the same error on every rank)."""
    dist.main_decides(lambda: _precheck_files(config, nfes, name, dist.world, demo_resume))


def _precheck_files(config: DistillConfig, nfes: list[int], name: str, world: int, demo_resume: bool) -> None:
    import dataclasses

    from .multi_nfe import nfe_stem
    from .outputs import check_writable, existing_solver_error

    for nfe in nfes:
        dataclasses.replace(config, nfe=nfe).validate(world)
    out_dir, _, _ = config.paths()
    check_writable(out_dir, "output folder")
    target = out_dir / f"{nfe_stem(config.name or name, nfes, config.mode)}.safetensors"
    if target.exists() and not config.overwrite and not (demo_resume and config.resume):
        raise existing_solver_error(target)


def _run_checkpoint(args: argparse.Namespace, dist: Dist) -> None:
    from .distill import distill
    from .prompts import load_prompts

    config = config_from_args(args)
    model_file = args.ckpt or args.unet
    name = args.name or Path(model_file).stem
    config.name = name
    _precheck_output(config, args.nfe, name, dist)
    prompts = dist.agree(lambda: load_prompts(args.prompts))
    try:
        from .comfy_adapter import build_problem
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.endswith("comfy_adapter"):
            raise ConfigError("this copy of the pack has no ComfyUI adapter (trainer/comfy_adapter.py), so --ckpt "
                              "cannot load checkpoints; try --demo") from None
        raise
    problem = dist.agree(lambda: build_problem(  # every rank loads the model on its own device
        args.ckpt, unet=args.unet, clip=args.clip or (), clip_type=args.clip_type, vae=args.vae,
        comfyui=args.comfyui, device=str(dist.device), prompts=prompts, negative=args.negative, cfg=args.cfg,
        width=args.width, height=args.height, frames=args.frames, guidance=args.guidance, shift=args.shift,
        dtype=args.dtype, name=name, cache_dir=config.paths()[1]))
    if args.prompts:
        problem.extra_metadata.setdefault("prompts", Path(args.prompts).name)
    if len(args.nfe) == 1:
        distill(problem, config, progress=not args.quiet and dist.is_main)
    else:
        from .multi_nfe import distill_nfes

        distill_nfes(problem, config, args.nfe, progress=not args.quiet and dist.is_main)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m trainer``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    rank = env_rank()
    _setup_logging(args.quiet or rank > 0, rank)
    if not args.demo and not args.ckpt and not args.unet:
        if rank == 0:
            parser.print_usage(sys.stderr)
            print("error: give --ckpt NAME_OR_PATH (a checkpoint), --unet NAME_OR_PATH (a diffusion model, with "
                  "--clip) or --demo (the built-in demo)", file=sys.stderr)
        return 2
    all_ranks_here = False  # whether every process ends here together (then the process group ends cleanly)
    try:
        # Under torchrun: the process group, and cuda:LOCAL_RANK as the current device, before ComfyUI is imported.
        dist = init_distributed(_resolve_device(args.device))
        if args.demo:
            from .demo import run_demo

            config = config_from_args(args, demo=True)
            modes = [args.mode] if args.mode else ["gs", "gas"]
            config.name = config.name or "demo"
            for mode in modes:
                config.mode = mode
                _precheck_output(config, args.nfe, config.name, dist, demo_resume=True)
            run_demo(config, modes, nfes=args.nfe, device=str(dist.device), cfg=args.cfg,
                     progress=not args.quiet and dist.is_main)
        else:
            _run_checkpoint(args, dist)
        all_ranks_here = True
        return 0
    except TrainerError as exc:
        all_ranks_here = on_every_rank(exc)
        message = exc.naming(option_names(parser))
        if rank == 0:
            print(f"error: {message}", file=sys.stderr)
        elif not on_every_rank(exc):  # an error of this process alone: rank 0 does not know it
            print(f"[rank {rank}] error: {message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        if rank == 0:
            print("interrupted: finished teacher shards and the last training checkpoint are kept; run the same "
                  "command with --resume to continue", file=sys.stderr)
        return 130
    finally:
        shutdown_distributed(all_ranks_here=all_ranks_here)
