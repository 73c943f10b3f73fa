"""GAS Train Solver: distils a GS/GAS solver for the graph's own MODEL (LoRAs, patches, ModelSampling included).

It runs the trainer's own pipeline (:func:`trainer.distill.distill`: the same teacher cache, loop, checkpoints and
solver file as ``python -m trainer``) on a :class:`~trainer.problem.DistillProblem` built from the graph's MODEL,
CLIP and VAE (:mod:`trainer.graph_problem`), inside ``torch.inference_mode(False)`` (the graph runs in inference
mode; see that module for how gradients reach the solver through weights loaded there).

* Progress: ComfyUI's progress bar on the node follows the teacher generation (samples) and the training
  (iterations); the trainer's console lines go to ComfyUI's log.
* Cancel (ComfyUI's interrupt): the trainer stops after the current teacher batch or iteration, keeping the finished
  teacher samples and the training state; queueing the node again resumes from there.
* Output: ``<ComfyUI models>/gas_solvers/<name>-nfe<N>-<mode>.safetensors`` (with the trainer's .md report and .png
  grid beside it), never replacing a file unless ``overwrite`` is on. Several NFEs (``nfe`` "4, 6") are trained on one
  shared teacher into one file, ``<name>-nfe4-6-<mode>.safetensors`` (:mod:`trainer.multi_nfe`); a cancelled run
  resumes past the NFEs it finished. A file this node wrote for the same model and settings is reused instead of
  refused.
* Memory: the model is loaded by ComfyUI's model management (``load_models_gpu``, room reserved for the backward
  pass) and left to it afterwards; the allocator's cache is emptied at the end.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import comfy.model_management as mm
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io, ui

from . import _trainer, logic, solver_folder, train_logic
from ._gas import core

log = logging.getLogger(__name__)

MODES = ("gas", "gs")
#: Held-out samples shown per row of the preview (and in the trainer's PNG grid).
PREVIEW_SAMPLES = 4
#: Config fields that do not change what is trained (left out of the reuse key).
_NOT_IN_KEY = ("out_dir", "cache_dir", "run_dir", "overwrite", "resume", "ckpt_every", "eval_every", "log_every",
               "csv", "tensorboard", "report", "extra_metadata")


@dataclass
class _Conditioning:
    """What conditions the training: the CLIP (prompts route) or the connected conditionings, and the guidance and
    frame count when given."""

    clip: Any
    positive: Any
    negative: Any
    guidance: float | None
    frames: int | None


@dataclass
class Trained:
    """One NFE's outcome: the file name, its report text, and (when trained now) the preview samples by method."""

    file: str
    text: str
    label: str = ""
    samples: dict[str, torch.Tensor] = field(default_factory=dict)


def _solver_dir() -> str:
    """Where the node writes: ComfyUI's ``models/gas_solvers`` (listed by every GAS node's dropdown)."""
    solver_folder.register()
    return os.path.join(folder_paths.models_dir, logic.FOLDER_NAME)


class GASTrainSolver(io.ComfyNode):
    """Trains a learned few-step solver for the connected model, the way ``python -m trainer`` does."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GASTrainSolver",
            display_name="GAS Train Solver",
            category="sampling/custom_sampling/gas",
            description=("Distils a GS/GAS few-step solver for the connected model (LoRAs and patches included) from "
                         "a many-step teacher and writes it to models/gas_solvers. Long-running: Cancel keeps the "
                         "progress, queueing again resumes."),
            inputs=[
                io.Model.Input("model", tooltip="The model to train for, as the graph feeds it (LoRAs, patches, "
                                                "ModelSampling nodes included); sample with the same model."),
                io.Clip.Input("clip", optional=True,
                              tooltip="Encodes the training prompts (the model's text encoder). Not needed when a "
                                      "conditioning is connected."),
                io.String.Input("prompts", default="", multiline=True,
                                tooltip="Training prompts, one per line ('#' starts a comment; with 12 or more the "
                                        "last sixth is held out for the scores). Empty: the trainer's built-in set "
                                        "of 60 varied prompts (+12 held out)."),
                io.String.Input("negative", default="", tooltip="Negative prompt (empty, as in the paper)."),
                io.Float.Input("cfg", default=0.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale the solver is trained for. 0 = the family's "
                                       "default (7.5 for SD1.x). Sample with the same cfg."),
                io.Int.Input("width", default=512, min=8, max=8192, step=8, tooltip="Image width in pixels."),
                io.Int.Input("height", default=512, min=8, max=8192, step=8, tooltip="Image height in pixels."),
                io.String.Input("nfe", default="4",
                                tooltip=f"Steps (model calls) of the solver, {core.MIN_NFE} to {core.MAX_NFE}; "
                                        "several separated by commas train one solver each on one shared teacher, "
                                        "all in one file (the sampling nodes' steps choose among them)."),
                io.Combo.Input("mode", options=list(MODES), default="gas",
                               tooltip="gas: distillation + adversarial loss (the paper's GAS); gs: distillation "
                                       "loss only (faster, bit-reproducible)."),
                io.Int.Input("iterations", default=0, min=0, max=1_000_000,
                             tooltip="Training iterations (0 = the recipe's: 1800 tuned, 2000 paper)."),
                io.Int.Input("seed", default=42, min=0, max=2**31 - 1, control_after_generate=True,
                             tooltip="Teacher noise (sample i uses seed+i), data order, discriminator."),
                io.String.Input("solver_name", default="",
                                tooltip="Base name of the file: <name>-nfe<N>-<mode>.safetensors (several NFEs: "
                                        "<name>-nfe4-6-<mode>.safetensors). Empty: the checkpoint's file name."),
                io.Boolean.Input("overwrite", default=False,
                                 tooltip="Replace an existing solver file of that name (off: an existing file is an "
                                         "error, unless this node wrote it for the same model and settings)."),
                io.Vae.Input("vae", optional=True,
                             tooltip="Decodes the preview and the report grid (optional; without it the preview "
                                     "shows latents)."),
                io.Int.Input("teacher_steps", default=0, min=0, max=10000, optional=True,
                             tooltip="Teacher steps of DPM-Solver++(3M) on a log-SNR grid (0 = the recipe's: 32 "
                                     "tuned, 64 paper)."),
                io.Int.Input("batch", default=4, min=1, max=1024, optional=True, tooltip="Samples per iteration."),
                io.Float.Input("learning_rate", default=0.0, min=0.0, max=1.0, step=1e-4, round=1e-7,
                               optional=True, tooltip="Adam learning rate of the solver (0 = the recipe's: 0.001 "
                                                      "paper, 0.005 tuned)."),
                io.Int.Input("train_size", default=0, min=0, max=1_000_000, optional=True,
                             tooltip="Teacher samples for training (0 = the recipe's: 1400)."),
                io.Int.Input("val_size", default=128, min=1, max=100_000, optional=True,
                             tooltip="Held-out teacher samples for the scores."),
                io.Int.Input("checkpoint_every", default=100, min=1, max=1_000_000, optional=True,
                             tooltip="Iterations between saved training states (Cancel also saves)."),
                io.Conditioning.Input("conditioning", optional=True,
                                      tooltip="Train for this one prompt's conditioning instead of encoding the "
                                              "prompts (e.g. CLIPTextEncodeSDXL, FluxGuidance, or a model whose "
                                              "text encoder is not a CLIP input here); every sample uses it."),
                io.Conditioning.Input("negative_conditioning", optional=True,
                                      tooltip="The negative side with a connected conditioning (default: the "
                                              "conditioning zeroed, as ConditioningZeroOut)."),
                io.Float.Input("guidance", default=0.0, min=0.0, max=100.0, step=0.1, round=0.01, optional=True,
                               tooltip="Guidance-distilled models (Flux dev): the guidance value trained for. 0 = "
                                       "the conditioning's (FluxGuidance), else 3.5. Sample with the same value."),
                io.Int.Input("frames", default=0, min=0, max=8192, step=4, optional=True,
                             tooltip="Video models: length in frames (0 = 25). Ignored for image models."),
                io.Combo.Input("recipe", options=list(train_logic.RECIPE_NAMES), default=train_logic.DEFAULT_RECIPE,
                               optional=True,
                               tooltip="Training recipe the other settings start from: paper (the GAS paper's SD "
                                       "recipe) or tuned (5x learning rate with cosine decay, a robust loss, a "
                                       "loss on the intermediate states, a 32-step teacher and 1800 iterations; "
                                       "in gas mode a lighter, lazier discriminator); see the trainer README."),
            ],
            outputs=[
                io.Custom("COMBO").Output(display_name="solver",
                                          tooltip="The solver file (with several NFEs the one file holding them "
                                                  "all), for GAS Sampler / GAS Sigmas / GAS KSampler / GAS Model "
                                                  "Patch."),
                io.Image.Output(display_name="preview",
                                tooltip="Rows: teacher, then per NFE the learned solver and DPM-Solver++(3M); same "
                                        "held-out seeds per column."),
                io.String.Output(display_name="report", tooltip="The held-out scores table."),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, nfe: Any = None, solver_name: Any = None, **_: Any) -> bool | str:
        try:
            if isinstance(nfe, str):
                train_logic.parse_nfe(nfe)
            if isinstance(solver_name, str) and solver_name.strip():
                train_logic.check_name(solver_name)
        except logic.GASNodeError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(cls, model: Any, prompts: str, negative: str, cfg: float, width: int, height: int,
                nfe: str, mode: str, iterations: int, seed: int, solver_name: str, overwrite: bool, clip: Any = None,
                vae: Any = None, teacher_steps: int = 0, batch: int = 4, learning_rate: float = 0.0,
                train_size: int = 0, val_size: int = 128, checkpoint_every: int = 100, conditioning: Any = None,
                negative_conditioning: Any = None, guidance: float = 0.0, frames: int = 0,
                recipe: str = train_logic.DEFAULT_RECIPE) -> io.NodeOutput:
        t = _trainer.load()
        errors = t["errors"]
        nfes = train_logic.parse_nfe(nfe)
        if mode not in MODES:
            raise logic.GASNodeError(f"mode must be one of {', '.join(MODES)}, got '{mode}'")
        lineage = t["graph_problem"].model_lineage(cls.hidden.prompt, cls.hidden.unique_id)
        name = train_logic.check_name(solver_name) if str(solver_name).strip() else \
            train_logic.default_name(lineage.file)
        prompt_set = t["prompts"].PromptSet.builtin() if not prompts.strip() else \
            t["prompts"].prompts_from_text(prompts, "node prompts")
        if prompt_set is None:
            raise logic.GASNodeError("the prompts text holds no prompt (one per line, '#' starts a comment); leave "
                                     "it empty to use the built-in prompt set")
        configs = train_logic.node_configs(
            t["config"], recipe, nfes, learning_rate=learning_rate, iterations=iterations, mode=mode, seed=seed,
            **train_logic.sample_counts(train_size), val_size=val_size, batch=batch,
            teacher_steps=teacher_steps or None,
            out_dir=_solver_dir(), name=name, overwrite=overwrite, ckpt_every=checkpoint_every,
            grid_samples=min(PREVIEW_SAMPLES, val_size), disc_preset="paper")
        try:
            for config in configs:
                config.validate()
            if conditioning is not None and prompts.strip():
                log.warning("[GAS] Train Solver: a conditioning is connected, so the prompts text is not used")
            video = t["comfy_adapter"].is_video(model.model)  # the frames widget is ignored for image models
            conditioned = _Conditioning(clip, conditioning, negative_conditioning, guidance or None,
                                        (frames or None) if video else None)
            results = cls._train(t, model, conditioned, vae, configs, prompt_set, negative, cfg, width, height,
                                 name, lineage)
        except errors.TrainingInterruptedError as exc:
            log.warning("[GAS] Train Solver stopped: %s. Queue the node again to resume from there.",
                        train_logic.node_message(exc))
            mm.throw_exception_if_processing_interrupted()
            raise mm.InterruptProcessingException() from None
        except errors.TrainerError as exc:
            raise logic.GASNodeError(train_logic.node_message(exc)) from None
        finally:
            mm.soft_empty_cache()
        preview = cls._preview(t, model, vae, results)
        report = "\n\n".join(r.text for r in results)
        log.info("[GAS] Train Solver done:\n%s", report)
        return io.NodeOutput(results[0].file, preview, report, ui=ui.PreviewImage(preview, cls=cls))

    @classmethod
    def _train(cls, t: dict[str, Any], model: Any, conditioned: _Conditioning, vae: Any, configs: list[Any],
               prompt_set: Any, negative: str, cfg: float, width: int, height: int, name: str,
               lineage: Any) -> list[Trained]:
        """Train the one NFE, or several into one file (the problem, i.e. the loaded model and its prompts, is built
        once)."""
        distill = t["distill"]
        bar = comfy.utils.ProgressBar(1, node_id=cls.hidden.unique_id)

        def on_progress(phase: str, done: int, total: int) -> None:
            if mm.processing_interrupted():  # the loop stops at its next check; the hook would raise mid-step
                return
            if done == 0:
                log.info("[GAS] Train Solver: %s, %d %s", phase, total,
                         "iterations" if phase == "train" else "samples to generate")
            bar.update_absolute(done, max(1, total))

        with torch.inference_mode(False):
            problem = t["graph_problem"].graph_problem(
                model, conditioned.clip, vae, prompts=prompt_set, negative=negative, cfg=cfg or None, width=width,
                height=height, name=name, batch=configs[0].batch, lineage=lineage, cache_dir=configs[0].paths()[1],
                frames=conditioned.frames, guidance=conditioned.guidance,
                positive_conditioning=conditioned.positive, negative_conditioning=conditioned.negative)
            if len(configs) > 1:
                return cls._train_several(t, problem, configs, on_progress)
            config = configs[0]
            file = train_logic.solver_file(name, config.nfe, config.mode)
            config.extra_metadata = {"train_node_key": cls._key(t, problem, config)}
            reused = cls._reuse(file, config.extra_metadata["train_node_key"], config.overwrite)
            if reused is not None:
                return [Trained(file, reused)]
            paths = distill.output_paths(problem, config)
            config.resume = paths.state.exists()
            if config.resume:
                log.info("[GAS] Train Solver: an unfinished run of %s exists in %s; resuming it", paths.stem,
                         paths.run_dir)
            started = time.time()
            result = distill.distill(problem, config, progress=True, on_progress=on_progress,
                                     should_stop=mm.processing_interrupted)
            return [cls._trained(t, file, result, config, time.time() - started)]

    @classmethod
    def _train_several(cls, t: dict[str, Any], problem: Any, configs: list[Any], on_progress: Any) -> list[Trained]:
        """Every NFE on one shared teacher, into one file ``<name>-nfe<N1>-<N2>-<mode>.safetensors``
        (:func:`trainer.multi_nfe.distill_nfes`); an interrupted run resumes past the NFEs it finished."""
        multi, config = t["multi_nfe"], configs[0]
        nfes = [c.nfe for c in configs]
        file = multi.nfe_stem(config.name, nfes, config.mode) + ".safetensors"
        key = cls._key(t, problem, config, nfes)
        config.extra_metadata = {"train_node_key": key}
        reused = cls._reuse(file, key, config.overwrite)
        if reused is not None:
            return [Trained(file, reused)]
        paths = multi.multi_paths(problem, config, nfes)
        config.resume = paths.has_progress()
        if config.resume:
            log.info("[GAS] Train Solver: an unfinished run of %s exists in %s; resuming it", paths.stem,
                     paths.run_dir)
        started = time.time()
        done = multi.distill_nfes(problem, config, nfes, progress=True, on_progress=on_progress,
                                  should_stop=mm.processing_interrupted)
        seconds = time.time() - started
        return [cls._trained(t, file, done.results[n], dataclasses.replace(config, nfe=n), seconds) for n in nfes]

    @staticmethod
    def _key(t: dict[str, Any], problem: Any, config: Any, nfes: list[int] | None = None) -> str:
        """What makes a trained file reusable: the model's identity and every setting that changes the training."""
        settings = {k: v for k, v in config.to_dict().items() if k not in _NOT_IN_KEY}
        if nfes is not None:
            settings["nfe"] = list(nfes)
        return t["distributed"].json_digest({"identity": problem.identity, "config": settings})

    @staticmethod
    def _trained(t: dict[str, Any], file: str, result: Any, config: Any, seconds: float) -> Trained:
        table = t["report"].scores_table(result.scores["methods"], config.nfe)
        text = (f"{file}: {result.label}, NFE {config.nfe}, {config.iters} iterations (this run {seconds:.0f} s), "
                f"teacher {result.teacher}\n{table}")
        return Trained(file, text, result.label, result.samples)

    @classmethod
    def _reuse(cls, file: str, key: str, overwrite: bool) -> str | None:
        """Report text for an existing file this node wrote with the same key; None when there is no file (or it
        is to be replaced); refuses any other existing file."""
        path = solver_folder.full_path(file)
        if path is None or overwrite:
            return None
        try:
            keys = {s.metadata.get("train_node_key") for s in core.load_solver_set(path).solvers}
        except (core.SolverFileError, OSError):
            keys = set()
        if keys != {key}:
            raise logic.GASNodeError(f"a solver named '{file}' already exists in {os.path.dirname(path)}; choose "
                                     "another solver_name, or turn on overwrite to replace it")
        log.info("[GAS] Train Solver: %s was already trained for this model and these settings; using it", file)
        return f"{file}: already trained for this model and these settings (kept as it is)"

    @classmethod
    def _preview(cls, t: dict[str, Any], model: Any, vae: Any,
                 results: list[Trained]) -> torch.Tensor:
        """The preview IMAGE: teacher row, then per trained NFE the learned and DPM-Solver++(3M) rows."""
        report = t["report"]
        rows: list[torch.Tensor] = []
        for result in results:
            samples = result.samples
            if not samples:
                continue
            wanted = ([samples["teacher"]] if not rows else []) + [samples[result.label],
                                                                    samples[report.BASELINE_REFERENCE]]
            rows += [cls._images(report, model, vae, latents) for latents in wanted]
        if not rows:
            return torch.zeros(1, 64, 64, 3)
        return train_logic.preview_grid(rows)

    @staticmethod
    def _images(report: Any, model: Any, vae: Any, latents: torch.Tensor) -> torch.Tensor:
        """``[k, H, W, 3]`` in [0, 1]: decoded by the VAE, or the latents' first channels scaled up 8x; the first
        frame of video latents."""
        if vae is not None:
            images = vae.decode(model.model.process_latent_out(latents)).float().cpu()
            return images[:, 0] if images.dim() == 5 else images
        if latents.dim() == 5:
            latents = latents[:, :, 0]
        images = (report.latents_to_images(latents) + 1.0) / 2.0
        images = torch.nn.functional.interpolate(images, scale_factor=8, mode="nearest")
        return images.permute(0, 2, 3, 1).contiguous()
