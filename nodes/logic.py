"""Everything the nodes decide that does not need ComfyUI: the solver folder, solver files, compatibility checks,
sigma grids and the messages users read. Importable without ComfyUI (the CI tests exercise it directly).

Every refusal is a :class:`~nodes.errors.GASNodeError` (a ``ValueError``) whose message is one plain sentence naming
the solver and what to do; warnings are returned as strings for the caller to log. Whether sigmas fit a solver is the
core's decision (:func:`gas.sigma_fit`); the nodes act on its structured answer and only choose the words.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ._gas import comfy_bridge, core
from .errors import GASNodeError

#: The dropdown entry meaning "no learned solver": DPM-Solver++(3M) on whatever sigmas arrive.
NO_SOLVER = "(none) DPM-Solver++(3M)"
#: ``folder_paths`` key of the solver folder (``models/gas_solvers``, and ``gas_solvers:`` in extra_model_paths.yaml).
FOLDER_NAME = "gas_solvers"
#: The only files the dropdowns list.
EXTENSIONS = frozenset({".safetensors"})
#: Steps of the uniform-time grid when no solver is chosen and ``steps`` is 0 (auto).
DEFAULT_NO_SOLVER_STEPS = 8
#: Largest ``steps`` accepted without a solver.
MAX_NO_SOLVER_STEPS = 100
#: cfg used by GAS KSampler when cfg is 0 (auto) and the solver records none (or there is no solver).
DEFAULT_CFG = 7.5
#: A cfg further than this from the solver's is reported.
CFG_TOLERANCE = 1e-3
#: What to do when sigmas do not fit a learned solver (the end of every mismatch sentence).
SIGMAS_FIX = (f"connect GAS Sigmas (with the same solver and model) to the sampler's sigmas input, or choose "
              f"'{NO_SOLVER}' to sample on any sigmas")


# ----- the solver folder ----------------------------------------------------------------------------------------------


def dropdown_options(names: Iterable[str]) -> list[str]:
    """The solver dropdown: the no-solver entry first, then the sorted ``.safetensors`` names."""
    files = sorted({n for n in names if os.path.splitext(n)[1].lower() in EXTENSIONS})
    return [NO_SOLVER, *files]


def register_folder(table: dict[str, tuple[list[str], set[str]]], paths: Sequence[str],
                    name: str = FOLDER_NAME) -> list[str]:
    """Register ``paths`` under ``name`` in a ``folder_paths.folder_names_and_paths``-style table.

    Paths already there (e.g. from ``extra_model_paths.yaml``, which ComfyUI loads before custom nodes and which
    creates the entry with no extension filter) keep their place and order; the new ones are appended; the extension
    filter becomes ``.safetensors`` only. Returns the folder list now registered.
    """
    existing, _ = table.get(name, ([], set()))
    folders = list(existing)
    known = {os.path.normcase(os.path.abspath(p)) for p in folders}
    for path in paths:
        key = os.path.normcase(os.path.abspath(path))
        if key not in known:
            folders.append(path)
            known.add(key)
    table[name] = (folders, set(EXTENSIONS))
    return folders


def check_solver_name(name: Any, full_path: str | None, searched: Sequence[str]) -> str | None:
    """Why a dropdown value cannot be used (None when it can): not a string, not ``.safetensors``, or not found."""
    if not isinstance(name, str) or not name:
        return f"the solver must be a file name from the dropdown, got {name!r}"
    if name == NO_SOLVER:
        return None
    if os.path.splitext(name)[1].lower() not in EXTENSIONS:
        return f"GAS solver '{name}' is not a .safetensors file; pick a solver from the dropdown"
    if full_path is None:
        where = ", ".join(searched) if searched else "models/gas_solvers"
        return (f"GAS solver '{name}' was not found in the solver folders ({where}); put the file there, or pick "
                "another solver (the dropdown refreshes when the page reloads)")
    return None


def file_key(path: str) -> tuple[str, int, int]:
    """Identity of a file's current content for caching: (real path, mtime in ns, size)."""
    stat = os.stat(path)
    return os.path.realpath(path), stat.st_mtime_ns, stat.st_size


class SolverCache:
    """Loaded solvers keyed by (path, mtime, size): a replaced file is loaded again, an unchanged one is not."""

    def __init__(self, size: int = 16, loader: Callable[[str], Any] | None = None) -> None:
        self.size = size
        self.loader = loader or core.load_solver
        self._items: OrderedDict[tuple[str, int, int], Any] = OrderedDict()

    def load(self, path: str) -> core.GeneralizedSolver:
        """The validated solver in ``path``; a bad file raises :class:`gas.SolverFileError` (one sentence)."""
        try:
            key = file_key(path)
        except OSError:
            raise core.SolverFileError(path, "no such file") from None
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        solver = self.loader(path)
        self._items[key] = solver
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return solver

    def clear(self) -> None:
        self._items.clear()


def solver_file_message(name: str, error: Exception) -> str:
    """The user-facing sentence for a solver file that failed to load (the core's reason, with the dropdown name)."""
    problem = getattr(error, "problem", None) or str(error)
    return f"GAS solver '{name}' cannot be used: {problem}"


# ----- grids ----------------------------------------------------------------------------------------------------------


def resolve_steps(steps: int) -> int:
    """The number of steps of a grid without a solver: ``steps``, or the default for 0."""
    n = steps or DEFAULT_NO_SOLVER_STEPS
    if not 1 <= n <= MAX_NO_SOLVER_STEPS:
        raise GASNodeError(f"steps must be 0 (auto) or 1..{MAX_NO_SOLVER_STEPS} without a solver, got {steps}")
    return n


def effective_schedule(solver: core.GeneralizedSolver | None, info: comfy_bridge.SamplingInfo) -> core.NoiseSchedule:
    """The schedule the grid and the sampler use.

    Discrete (SD) models: the model's own schedule (the network is conditioned on that schedule's timesteps; a
    learned solver must have been trained on the same one, see :func:`compatibility`). Flow models with a solver: the
    solver's schedule, because a flow network sees sigma itself (its ODE does not depend on the shift), so the sigmas
    the solver was trained on are right whatever shift the model is currently patched with.
    """
    if solver is not None and info.kind == "flow" and solver.schedule is not None and solver.schedule.space == "flow":
        return solver.schedule
    return info.schedule


def solver_grid(solver: core.GeneralizedSolver | None, schedule: core.NoiseSchedule, steps: int) -> torch.Tensor:
    """The full float64 sigma grid: the solver's learned one, or (no solver) ``steps`` uniform GAS times from 1 to
    ``t_eps = 1e-3``: the grid of an untrained solver (which stores it as float32 logits: equal to ~1e-7)."""
    if solver is not None:
        return solver.sigmas(schedule).detach().to(torch.float64)
    if not schedule.has_time:
        raise GASNodeError("this model's noise schedule has no GAS time grid; with '(none)' use a ComfyUI scheduler "
                           "(e.g. BasicScheduler) for the sigmas instead of GAS Sigmas")
    times = torch.linspace(1.0, 1e-3, steps + 1, dtype=torch.float64)
    return schedule.sigma_of_time(times).detach()


def solver_label(name: str) -> str:
    """How messages name the solver chosen in a dropdown."""
    return f"GAS solver '{name}'"


def check_sigmas(sigmas: torch.Tensor, solver: core.GeneralizedSolver, schedule: core.NoiseSchedule,
                 name: str) -> core.SigmaFit:
    """The core's answer whether ``sigmas`` fit solver ``name`` on ``schedule``; a mismatch raises
    :class:`GASNodeError` with the core's reason in the node's words."""
    fit = core.sigma_fit(sigmas, solver, schedule)
    if not fit.fits:
        raise GASNodeError(fit.message(solver_label(name), SIGMAS_FIX))
    return fit


# ----- compatibility --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """Result of :func:`compatibility`: an error sentence (or None) and warning sentences."""

    error: str | None
    warnings: tuple[str, ...] = ()


def _recorded_model(solver: core.GeneralizedSolver) -> dict[str, Any]:
    model = solver.metadata.get("model")
    return model if isinstance(model, dict) else {}


def model_label(identity: dict[str, Any], info: comfy_bridge.SamplingInfo) -> str:
    """Short description of a model for messages, e.g. ``SD15 (eps, discrete VP, ...)``."""
    family = identity.get("family") or "this model"
    return f"{family} ({info.prediction} prediction, {info.description or info.schedule.describe()})"


def compatibility(solver: core.GeneralizedSolver, name: str, info: comfy_bridge.SamplingInfo,
                  identity: dict[str, Any]) -> Verdict:
    """Can solver ``name`` run on a model described by ``info`` / ``identity`` (:mod:`gas.comfy_bridge`)?

    Errors: the model family has no GAS support; the solver was trained for the other kind of schedule (flow vs
    discrete), another discrete schedule, another model family or another prediction type. Warning: the model's
    weights differ from the checkpoint the solver recorded (another checkpoint, or LoRA / quantization).
    """
    recorded = _recorded_model(solver)
    trained_family = recorded.get("family")
    family = identity.get("family")
    where = model_label(identity, info)
    if not info.learned_ok:
        return Verdict(f"GAS solver '{name}' cannot run on {where}: {info.reason}; choose '{NO_SOLVER}'")
    sched = solver.schedule
    trained_for = f"{trained_family} models" if trained_family else "another model family"
    if sched is None or sched.space != info.schedule.space:
        kind = "flow-matching" if sched is not None and sched.space == "flow" else "discrete SD"
        return Verdict(f"GAS solver '{name}' was trained for {trained_for} ({kind} noise schedule) and does not fit "
                       f"{where}; use a solver trained for this model family")
    if info.kind == "discrete" and not sched.matches(info.schedule):
        return Verdict(f"GAS solver '{name}' was trained on another noise schedule ({sched.describe()}) than {where}; "
                       "use a solver trained for this model family")
    if trained_family and family and trained_family != family:
        return Verdict(f"GAS solver '{name}' was trained for {trained_family} models, but this is a {family} model; "
                       "use a solver trained for this model family")
    trained_prediction = recorded.get("prediction")
    if trained_prediction and trained_prediction != info.prediction:
        article = "an" if str(trained_prediction)[:1].lower() in "aeiou" else "a"
        return Verdict(f"GAS solver '{name}' was trained for {article} {trained_prediction}-prediction model, but this "
                       f"model predicts {info.prediction}; use a solver trained for this model")
    warnings = []
    trained_print, model_print = recorded.get("fingerprint"), identity.get("fingerprint")
    same_scheme = str(trained_print).split("-")[0] == str(model_print).split("-")[0]  # older files: another hash
    if trained_print and model_print and same_scheme and trained_print != model_print:
        ckpt = recorded.get("file")
        what = f"checkpoint '{ckpt}'" if ckpt else "another checkpoint"
        warnings.append(f"GAS solver '{name}' was trained on {what}; this model's weights differ (another checkpoint "
                        "of the family, or LoRA/patches/quantization applied). It will run, but the learned steps may "
                        "fit less well.")
    return Verdict(None, tuple(warnings))


def _recorded_number(solver: core.GeneralizedSolver | None, key: str) -> float | None:
    """The finite number stored under ``key`` in the solver's metadata, if any."""
    value = solver.metadata.get(key) if solver is not None else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def trained_cfg(solver: core.GeneralizedSolver | None) -> float | None:
    """The cfg scale recorded in the solver file, if any."""
    return _recorded_number(solver, "cfg")


def cfg_warning(solver: core.GeneralizedSolver | None, name: str, cfg: float | None) -> str | None:
    """A warning when ``cfg`` differs from the scale the solver was trained for (None when it matches or is unknown)."""
    want = trained_cfg(solver)
    if want is None or cfg is None or abs(float(cfg) - want) <= CFG_TOLERANCE:
        return None
    return (f"GAS solver '{name}' was trained for cfg {want:g}, but cfg is {float(cfg):g}; it will run, but the "
            f"learned steps fit cfg {want:g} best.")


def trained_guidance(solver: core.GeneralizedSolver | None) -> float | None:
    """The distilled-guidance value (Flux dev's conditioning ``guidance``) recorded in the solver file, if any."""
    return _recorded_number(solver, "guidance")


def conditioning_guidance(conds: Sequence[dict[str, Any]] | None) -> float | None:
    """The guidance value a guidance-distilled model receives from these conditioning entries (ComfyUI's processed
    ``conds["positive"]``: the ``guidance`` model cond it built, else the raw ``guidance`` value FluxGuidance set);
    None when there is none or the entries disagree."""
    values = set()
    for entry in conds or ():
        model_cond = (entry.get("model_conds") or {}).get("guidance")
        value = getattr(model_cond, "cond", entry.get("guidance"))
        if isinstance(value, torch.Tensor) and value.numel() > 0:
            value = float(value.flatten()[0])
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            values.add(float(value))
    return values.pop() if len(values) == 1 else None


def guidance_warning(solver: core.GeneralizedSolver | None, name: str, guidance: float | None) -> str | None:
    """A warning when the model's distilled guidance differs from the one the solver was trained with."""
    want = trained_guidance(solver)
    if want is None or guidance is None or abs(float(guidance) - want) <= CFG_TOLERANCE:
        return None
    return (f"GAS solver '{name}' was trained with guidance {want:g}, but the conditioning's guidance is "
            f"{float(guidance):g}; it will run, but the learned steps fit guidance {want:g} best (set it with "
            "FluxGuidance).")


def shift_warning(solver: core.GeneralizedSolver | None, name: str, info: comfy_bridge.SamplingInfo) -> str | None:
    """A warning when a flow model is patched with another shift than the solver's (its learned sigmas are used as
    trained, see :func:`effective_schedule`)."""
    if solver is None or info.kind != "flow" or solver.schedule is None or solver.schedule.space != "flow":
        return None
    want, have = getattr(solver.schedule, "shift", None), getattr(info.schedule, "shift", None)
    if want is None or have is None or abs(math.log(float(have) / float(want))) <= 1e-3:
        return None
    return (f"GAS solver '{name}' was trained at flow shift {want:g}, but this model's shift is {have:g} "
            f"(ModelSamplingSD3/ModelSamplingFlux, or Flux at another resolution); it samples on its trained sigmas, "
            f"which are exact for the same model at the same resolution; at another resolution train a solver "
            f"there for the best steps.")


def resolve_cfg(cfg: float, solver: core.GeneralizedSolver | None) -> float:
    """GAS KSampler's cfg: the given value, or for 0 (auto) the solver's trained cfg (``DEFAULT_CFG`` if unknown)."""
    if cfg > 0:
        return float(cfg)
    want = trained_cfg(solver)
    return want if want is not None else DEFAULT_CFG


# ----- the info text --------------------------------------------------------------------------------------------------


def _flatten(value: Any, prefix: str = "") -> list[str]:
    if isinstance(value, dict):
        lines = []
        for key in sorted(value, key=str):
            lines += _flatten(value[key], f"{prefix}{key}." if isinstance(value[key], dict) else f"{prefix}{key}")
        return lines
    if isinstance(value, float):
        return [f"{prefix.rstrip('.')}: {value:.6g}"]
    return [f"{prefix.rstrip('.')}: {value}"]


def describe_solver(solver: core.GeneralizedSolver | None, name: str) -> str:
    """A plain-text description of what a solver file was trained for (GAS Solver Info)."""
    if solver is None:
        return (f"{NO_SOLVER}: no learned solver. DPM-Solver++(3M) (first order, then 2M, then 3M) runs on whatever "
                "sigmas the sampler receives; it works with every scheduler and model family.")
    meta = solver.metadata
    model = _recorded_model(solver)
    lines = [f"GAS solver: {name}", f"steps (NFE): {solver.nfe}   t_eps: {solver.t_eps:g}"]
    if model:
        parts = [str(model.get("family") or "unknown family")]
        if model.get("prediction"):
            parts.append(f"{model['prediction']} prediction")
        if model.get("file"):
            parts.append(f"checkpoint {model['file']}")
        if model.get("sha256"):
            parts.append(f"sha256 {str(model['sha256'])[:12]}")
        lines.append("trained for: " + ", ".join(parts))
    else:
        lines.append("trained for: (model not recorded)")
    lines.append(f"schedule: {solver.schedule.describe() if solver.schedule else 'unknown'}")
    cfg = trained_cfg(solver)
    lines.append(f"cfg: {cfg:g}" if cfg is not None else "cfg: (not recorded)")
    mode = meta.get("mode", "unknown")
    lines.append(f"mode: {mode}" + (" (all corrections zero: plain DPM-Solver++(3M))" if solver.is_untrained() else ""))
    for key in ("teacher", "loss", "iterations", "created", "pack_version"):
        if key in meta:
            lines.append(f"{key}: {meta[key]}")
    scores = meta.get("scores")
    if isinstance(scores, dict) and scores:
        lines.append("held-out scores:")
        lines += [f"  {line}" for line in _flatten(scores)]
    elif scores is not None:
        lines.append(f"held-out scores: {scores}")
    else:
        lines.append("held-out scores: (not recorded)")
    if solver.schedule is not None:
        lines.append(f"learned sigmas: {core.format_values(solver.sigmas().tolist(), limit=17)}")
    with torch.no_grad():
        shifts = solver.t_couple.detach().double().tolist()
        used = solver.used_mask()
        a_max = float(solver.a.detach().abs()[used].max()) if used.any() else 0.0
        c_max = float(solver.c.detach().abs()[used].max()) if used.any() else 0.0
    lines.append(f"decoupled time shifts: {core.format_values(shifts, limit=17)}")
    lines.append(f"largest correction: |a| {a_max:.3g}, |c| {c_max:.3g}")
    extra = sorted(set(meta) - {"model", "cfg", "mode", "teacher", "loss", "iterations", "created", "pack_version",
                                "scores", "grid_sigmas"})
    lines += [f"{key}: {meta[key]}" for key in extra]
    return "\n".join(lines)
