"""In-process ComfyUI checks of the node pack, run as a worker process by tests/test_nodes_comfy_inprocess.py.

``python -m tests.helpers.comfy_checks COMFY_ROOT TINY_CKPT OUT_JSON`` imports ComfyUI into this interpreter (CPU),
loads this repository as a node pack under an arbitrary package name (as ComfyUI does), runs every check below and
writes one JSON report. Importing ComfyUI changes an interpreter for good, hence the separate process.

Checks:

* ``schedules``: :mod:`gas.comfy_bridge` against ComfyUI's own model_sampling objects (SD1.5 discrete EPS, discrete
  V-prediction, SD3-style DiscreteFlow, Flux, and families refused for learned solvers).
* ``identity``: family, prediction and weights fingerprint of the tiny SD1.5 checkpoint, loaded in fp32 and fp16.
* ``timesteps_*``: the timestep embedding the tiny UNet actually computes during a ComfyUI sampling run, compared with
  the embedding of the expected float timesteps (and of ComfyUI's rounded integers).
* ``parity_*``: a solver run through ComfyUI's sampling path (CFGGuider + the pack's KSAMPLER) against
  ``gas.sample_gas`` outside ComfyUI with an independent denoiser around the same UNet.
* ``fallback``: a network that bypasses ComfyUI's wrappers gets one warning and ComfyUI's integer timesteps.
* ``callback``: the progress/preview callback sees every step and the last denoised prediction.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from tests.helpers.paths import REPO_ROOT
from tests.helpers.solvers import perturbed_solver

PACK_NAME = "gas_pack_under_test"
CFG = 7.5


def load_pack(pack_dir: Path = REPO_ROOT, name: str = PACK_NAME) -> ModuleType:
    """Import the node pack as package ``name`` from its ``__init__.py`` (ComfyUI's way: relative imports only)."""
    spec = importlib.util.spec_from_file_location(name, pack_dir / "__init__.py",
                                                  submodule_search_locations=[str(pack_dir)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    importlib.import_module(f"{name}.nodes.extension")  # the root __init__ imports the node modules lazily
    return module


def _ms(cms: ModuleType, schedule_cls: type, prediction_cls: type, **params: Any) -> Any:
    ms = type("ModelSampling", (schedule_cls, prediction_cls), {})()
    if params:
        ms.set_parameters(**params)
    return ms


def check_schedules(cms: ModuleType, gas: ModuleType, bridge: ModuleType) -> dict[str, Any]:
    """The bridge's schedules reproduce ComfyUI's sigma/timestep maps."""
    out: dict[str, Any] = {}
    t = torch.linspace(1.0, 1e-3, 101, dtype=torch.float64)

    eps = _ms(cms, cms.ModelSamplingDiscrete, cms.EPS)
    info = bridge.describe_model_sampling(eps)
    table = eps.sigmas.double()
    knots = torch.arange(1, table.numel() + 1, dtype=torch.float64) / table.numel()
    out["sd15"] = {
        "kind": info.kind, "prediction": info.prediction, "learned_ok": info.learned_ok,
        "float_timesteps": info.float_timesteps, "decoupled": bridge.decoupled_mode(info),
        "exact_linear": info.schedule.to_metadata().get("beta_schedule") == "linear",
        # at the knots the continuous schedule must give ComfyUI's table exactly (up to its float32 storage)
        "knot_rel_err": float(((info.schedule.sigma_of_time(knots) - table).abs() / table).max()),
        "sigma_max_rel_err": abs(info.schedule.sigma_max / float(eps.sigma_max) - 1),
        "network_timestep_at_knots": float((info.schedule.network_timestep(knots)
                                            - torch.arange(table.numel())).abs().max()),
    }
    vpred = _ms(cms, cms.ModelSamplingDiscrete, cms.V_PREDICTION)
    info = bridge.describe_model_sampling(vpred)
    out["vpred"] = {"kind": info.kind, "prediction": info.prediction, "learned_ok": info.learned_ok,
                    "decoupled": bridge.decoupled_mode(info)}

    for name, ms, multiplier in (
        ("sd3", _ms(cms, cms.ModelSamplingDiscreteFlow, cms.CONST, shift=3.0, multiplier=1000), 1000.0),
        ("flux", _ms(cms, cms.ModelSamplingFlux, cms.CONST, shift=1.15), 1.0),
    ):
        info = bridge.describe_model_sampling(ms)
        sched = info.schedule
        u = 0.9999 * t  # FlowSchedule.sigma_of_time(t) = warp(U_MAX * t)
        comfy_sigma = ms.sigma(u * multiplier).double()  # ComfyUI's formula, evaluated in float64
        ours = sched.sigma_of_time(t)
        out[name] = {
            "kind": info.kind, "prediction": info.prediction, "learned_ok": info.learned_ok,
            "float_timesteps": info.float_timesteps, "decoupled": bridge.decoupled_mode(info),
            "shift": sched.shift, "multiplier": sched.multiplier,
            "sigma_max_abs_err": float((ours - comfy_sigma).abs().max()),
            "timestep_max_abs_err": float((sched.network_timestep(t) - ms.timestep(ours).double()).abs().max()),
        }

    zsnr = _ms(cms, cms.ModelSamplingDiscrete, cms.EPS)
    zsnr._register_schedule(zsnr=True)
    refused = {"zsnr": zsnr, "edm": _ms(cms, cms.ModelSamplingContinuousEDM, cms.EDM)}
    lcm_base = importlib.import_module("comfy_extras.nodes_model_advanced").ModelSamplingDiscreteDistilled
    refused["lcm"] = _ms(cms, lcm_base, cms.EPS)
    out["refused"] = {}
    for name, ms in refused.items():
        info = bridge.describe_model_sampling(ms)
        out["refused"][name] = {"learned_ok": info.learned_ok, "reason": info.reason, "kind": info.kind}
    return out


class OutsideDenoiser:
    """CFG denoiser around a raw UNet, written from the formulas (no ComfyUI sampling code). Discrete (eps / v): the
    network sees ``x/sqrt(1+s^2)`` and the float timestep ``1000*t - 1`` of the GAS time given to :meth:`hook`.
    Flow: it sees ``x`` and ``1000*s`` and predicts the velocity, ``D = x - s*v``."""

    def __init__(self, unet: torch.nn.Module, cond: torch.Tensor, uncond: torch.Tensor, cfg: float,
                 prediction: str = "eps") -> None:
        self.unet, self.cond, self.uncond, self.cfg, self.prediction = unet, cond, uncond, cfg, prediction
        self.time: torch.Tensor | None = None

    def hook(self, t: torch.Tensor) -> None:
        self.time = t

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        s = sigma.reshape(-1, 1, 1, 1).to(x.dtype)
        if self.prediction == "flow":
            x_in, timesteps = x, (1000.0 * sigma.float()).repeat(2)
        else:
            assert self.time is not None
            x_in = x / torch.sqrt(1.0 + s * s)
            timesteps = torch.full((2 * x.shape[0],), float(1000.0 * self.time - 1.0), dtype=torch.float32)
        context = torch.cat([self.cond.expand(x.shape[0], -1, -1), self.uncond.expand(x.shape[0], -1, -1)])
        out = self.unet(torch.cat([x_in, x_in]), timesteps, context=context, transformer_options={}).float()
        out_c, out_u = out.chunk(2)
        if self.prediction in ("eps", "flow"):
            d_c, d_u = x - s * out_c, x - s * out_u
        else:  # v-prediction
            d_c = x / (s * s + 1) - out_c * s / torch.sqrt(s * s + 1)
            d_u = x / (s * s + 1) - out_u * s / torch.sqrt(s * s + 1)
        return d_u + (d_c - d_u) * self.cfg


class EmbeddingRecorder:
    """Forward pre-hook on the UNet's ``time_embed``: the sinusoidal embedding it actually receives, per call."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.inputs: list[torch.Tensor] = []
        self.handle = unet.time_embed.register_forward_pre_hook(self._hook)

    def _hook(self, _module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        self.inputs.append(args[0].detach().double().clone())

    def close(self) -> None:
        self.handle.remove()


def _embedding(ts: torch.Tensor, dim: int) -> torch.Tensor:
    from comfy.ldm.modules.diffusionmodules.util import timestep_embedding

    return timestep_embedding(ts.float(), dim, repeat_only=False).double()


def comfy_sample(comfy: Any, model: Any, sampler: Any, sigmas: torch.Tensor, cond: Any, uncond: Any,
                 noise: torch.Tensor, callback: Any = None) -> torch.Tensor:
    """One sampling run through ComfyUI's own path: CFGGuider.sample with the given SAMPLER."""
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(cond, uncond)
    guider.set_cfg(CFG)
    return guider.sample(noise, torch.zeros_like(noise), sampler, sigmas, callback=callback, seed=0)


def timesteps_check(comfy: Any, model: Any, pack: ModuleType, solver: Any, cond: Any, uncond: Any,
                    expected_ts: torch.Tensor, sigmas: torch.Tensor) -> dict[str, Any]:
    """Run the pack's sampler through ComfyUI and compare the UNet's time embeddings with those of the expected
    network timesteps ``expected_ts`` (one per model call)."""
    unet = model.model.diffusion_model
    recorder = EmbeddingRecorder(unet)
    try:
        sampler = pack.nodes.sampler_function.build_sampler(solver, "check")
        comfy_sample(comfy, model, sampler, sigmas, cond, uncond, torch.randn(1, 4, 8, 8))
    finally:
        recorder.close()
    dim = unet.model_channels
    err_float, err_int, batch = 0.0, 0.0, []
    for k, emb in enumerate(recorder.inputs):
        batch.append(emb.shape[0])
        want = _embedding(expected_ts[k].expand(emb.shape[0]), dim)
        rounded = _embedding(expected_ts[k].round().expand(emb.shape[0]), dim)
        err_float = max(err_float, float((emb - want).abs().max()))
        err_int = max(err_int, float((emb - rounded).abs().max()))
    return {"calls": len(recorder.inputs), "batch": batch, "embedding_err_vs_float": err_float,
            "embedding_err_vs_rounded": err_int, "expected_timesteps": expected_ts.tolist()}


def parity_check(comfy: Any, model: Any, pack: ModuleType, solver: Any, sigmas: torch.Tensor, cond: Any,
                 uncond: Any, prediction: str, decoupled: str, schedule: Any = None) -> dict[str, Any]:
    """ComfyUI path vs ``gas.sample_gas`` with :class:`OutsideDenoiser` on the same UNet, same noise. Start and end
    as ComfyUI's KSAMPLER does for an empty latent: ``noise*sqrt(1+s0^2)`` (VE) or ``s0*noise`` (flow), and the flow
    output divided by ``1 - s_N``."""
    gas = pack.gas
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    sampler = pack.nodes.sampler_function.build_sampler(solver, "parity")
    start = time.perf_counter()
    inside = comfy_sample(comfy, model, sampler, sigmas, cond, uncond, noise)
    elapsed = time.perf_counter() - start
    unet = model.model.diffusion_model
    denoiser = OutsideDenoiser(unet, cond[0][0], uncond[0][0], CFG, prediction)
    s0 = sigmas[0].float()
    flow = prediction == "flow"
    x = noise * s0 if flow else noise * torch.sqrt(1.0 + s0 * s0)
    schedule = schedule or gas.DiscreteVPSchedule.sd_linear()
    with torch.no_grad():
        outside = gas.sample_gas(denoiser, x, sigmas, solver=solver, schedule=schedule, decoupled=decoupled,
                                 timestep_hook=None if flow else denoiser.hook)
    if flow:
        outside = outside / (1.0 - sigmas[-1].float())
    outside = model.model.process_latent_out(outside)
    return {"max_abs_diff": float((inside - outside).abs().max()), "max_abs": float(outside.abs().max()),
            "comfy_seconds": elapsed}


def differentiable_check(comfy: Any, model: Any, bridge: ModuleType, schedule: Any, cond: Any,
                         uncond: Any) -> dict[str, Any]:
    """The trainer's use: a patched ModelPatcher, a time that requires grad, one call per ``override.at(t)``, plain
    and under ``torch.utils.checkpoint``; gradients reach the time (outside ComfyUI's inference mode)."""
    override = bridge.FloatTimestepOverride(schedule)
    patched = override.patch(model)
    options = model.model_options.get("transformer_options", {})
    result: dict[str, Any] = {"original_untouched": "wrappers" not in options}

    class OneCall(comfy.samplers.Sampler):
        def sample(self, model_wrap: Any, sigmas: torch.Tensor, extra_args: dict[str, Any], callback: Any,
                   noise: torch.Tensor, latent_image: Any = None, denoise_mask: Any = None,
                   disable_pbar: bool = False) -> torch.Tensor:
            sigma = sigmas[:1].expand(noise.shape[0])
            x = noise * sigmas[0]

            def call(time: torch.Tensor, x_in: torch.Tensor) -> torch.Tensor:
                with override.at(time):
                    return model_wrap(x_in, sigma, **extra_args)

            grads = {}
            for name, checkpointed in (("plain", False), ("checkpoint", True)):
                t = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
                if checkpointed:
                    out = torch.utils.checkpoint.checkpoint(call, t, x, use_reentrant=False)
                else:
                    out = call(t, x)
                out.square().mean().backward()
                grads[name] = float(t.grad)
            result.update(grads)
            return x

    guider = comfy.samplers.CFGGuider(patched)
    guider.set_conds(cond, uncond)
    guider.set_cfg(CFG)
    sigmas = torch.tensor([float(schedule.sigma_of_time(torch.tensor(0.6, dtype=torch.float64))), 0.0])
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.enable_grad():
        guider.sample(noise, torch.zeros_like(noise), OneCall(), sigmas, seed=0)
    result["invocations"] = override.invocations
    result["fallback"] = override.fallback
    return result


def main(argv: list[str]) -> int:
    comfy_root, ckpt, out_path = argv[1], argv[2], Path(argv[3])
    sys.path.insert(0, str(REPO_ROOT))
    from tests.helpers.comfy_env import import_comfy_in_process

    comfy = import_comfy_in_process(comfy_root, cpu=True)
    pack = load_pack()
    gas, bridge = pack.gas, pack.gas.comfy_bridge
    cms = comfy.model_sampling
    torch.manual_seed(0)
    report: dict[str, Any] = {"comfyui_version": importlib.import_module("comfyui_version").__version__}
    report["schedules"] = check_schedules(cms, gas, bridge)

    model, clip, _vae, _ = comfy.sd.load_checkpoint_guess_config(ckpt, output_vae=False, output_clip=True)
    model.model.requires_grad_(False)
    half, _, _, _ = comfy.sd.load_checkpoint_guess_config(ckpt, output_vae=False, output_clip=False,
                                                          model_options={"dtype": torch.float16})
    from safetensors.torch import load_file

    prefix = "model.diffusion_model."
    from_file = {k[len(prefix):]: v for k, v in load_file(ckpt).items() if k.startswith(prefix)}
    report["identity"] = {"fp32": bridge.model_identity(model), "fp16": bridge.model_identity(half),
                          "fp16_dtype": str(half.model.diffusion_model.dtype),
                          "from_file": bridge.fingerprint_state_dict(from_file)}
    del half
    with torch.no_grad():
        cond = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a cat"))
        uncond = clip.encode_from_tokens_scheduled(clip.tokenize(""))

    schedule = gas.DiscreteVPSchedule.sd_linear()
    solver = perturbed_solver(gas=gas)
    grid = solver.sigmas(schedule).detach().float()
    # EPS: decoupled "timestep" -> the UNet sees 1000*(t_k + t_couple_k) - 1
    report["timesteps_eps_solver"] = timesteps_check(comfy, model, pack, solver, cond, uncond,
                                                     schedule.network_timestep(solver.shifted_times().detach()), grid)
    karras = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "karras", 5)
    report["timesteps_no_solver"] = timesteps_check(
        comfy, model, pack, None, cond, uncond, schedule.network_timestep(schedule.time_of_sigma(karras[:-1].double())),
        karras)
    report["parity_eps_solver"] = parity_check(comfy, model, pack, solver, grid, cond, uncond, "eps", "timestep")
    report["parity_no_solver"] = parity_check(comfy, model, pack, None, karras, cond, uncond, "eps", "resigma")

    # V-prediction (ModelSamplingDiscrete node style object patch): decoupled "resigma", called at the shifted sigma
    vpred = model.clone()
    vpred.add_object_patch("model_sampling", _ms(cms, cms.ModelSamplingDiscrete, cms.V_PREDICTION))
    vsolver = perturbed_solver(seed=1, gas=gas, metadata={"model": {"family": "SD15", "prediction": "v"}})
    vgrid = vsolver.sigmas(schedule).detach().float()
    call_times = schedule.clamp_time(vsolver.shifted_times().detach())
    report["timesteps_v_solver"] = timesteps_check(comfy, vpred, pack, vsolver, cond, uncond,
                                                   schedule.network_timestep(call_times), vgrid)
    report["parity_v_solver"] = parity_check(comfy, vpred, pack, vsolver, vgrid, cond, uncond, "v", "resigma")

    # a flow model (what ModelSamplingSD3 does to any model): no override; the network sees 1000 * the call sigma
    flow = model.clone()
    flow.add_object_patch("model_sampling", _ms(cms, cms.ModelSamplingDiscreteFlow, cms.CONST, shift=3.0,
                                                multiplier=1000))
    flow_schedule = gas.FlowSchedule(3.0)
    fsolver = perturbed_solver(seed=2, gas=gas, schedule=flow_schedule,
                            metadata={"cfg": CFG, "model": {"family": "SD15", "prediction": "flow"}})
    fgrid = fsolver.sigmas().detach().float()
    call_sigmas = flow_schedule.sigma_of_time(flow_schedule.clamp_time(fsolver.shifted_times().detach()))
    report["timesteps_flow_solver"] = timesteps_check(comfy, flow, pack, fsolver, cond, uncond,
                                                      1000.0 * call_sigmas.float().double(), fgrid)
    report["parity_flow_solver"] = parity_check(comfy, flow, pack, fsolver, fgrid, cond, uncond, "flow", "resigma",
                                                schedule=flow_schedule)

    # a network that ignores ComfyUI's wrappers (instance attribute on this test's model only)
    records: list[str] = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger().addHandler(handler)
    unet = model.model.diffusion_model
    unet.forward = unet._forward
    integer_ts = model.get_model_object("model_sampling").timestep(grid[:-1]).double()
    try:
        report["timesteps_bypassed"] = timesteps_check(comfy, model, pack, solver, cond, uncond, integer_ts, grid)
    finally:
        del unet.forward
        logging.getLogger().removeHandler(handler)
    report["fallback_warnings"] = [r for r in records if "does not accept ComfyUI diffusion-model wrappers" in r]

    report["differentiable"] = differentiable_check(comfy, model, bridge, schedule, cond, uncond)

    steps_seen: list[int] = []
    last: dict[str, torch.Tensor] = {}

    def callback(step: int, x0: torch.Tensor, x: torch.Tensor, total: int) -> None:
        steps_seen.append(step)
        last["x0"], last["total"] = x0, torch.tensor(total)

    sampler = pack.nodes.sampler_function.build_sampler(solver, "callback")
    comfy_sample(comfy, model, sampler, grid, cond, uncond, torch.randn(1, 4, 8, 8), callback=callback)
    report["callback"] = {"steps": steps_seen, "total": int(last["total"]),
                          "x0_finite": bool(torch.isfinite(last["x0"]).all())}
    report["solver_nfe"] = solver.nfe
    out_path.write_text(json.dumps(report, indent=1, default=lambda v: None if math.isnan(v) else v))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
