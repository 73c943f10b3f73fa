"""The built-in demo: an analytic, class-conditional Gaussian-mixture "model" with classifier-free guidance.

No ComfyUI, no checkpoint, no download: the data distribution is a mixture of Gaussians over small images, so the
ideal denoiser ``E[x0 | x_s = x]`` is known in closed form, on SD1.5's discrete noise schedule
(:meth:`gas.DiscreteVPSchedule.sd_linear`, sigma 14.61 -> 0.0292). That is enough to run the whole pipeline
(teacher cache, GS/GAS distillation, evaluation, report) on a CPU in a few minutes.

The mixture. Every class ``c`` owns ``M`` components ``k`` with weight ``1/(C*M)``, mean image ``mu_k`` (a coloured
shape on a dark background, drawn procedurally) and covariance ``Sigma_k = U_k diag(d_k) U_k^T + tau^2 I``
(``U_k``: ``D x r`` orthonormal, smooth random patterns). With ``x = x0 + s*eps`` (sigma space) and
``v = x - mu_k``, ``a = tau^2 + s^2``, ``p = U_k^T v``:

* ``log N(x; mu_k, Sigma_k + s^2 I) = -1/2 [ sum_j p_j^2/(d_j+a) + (|v|^2 - |p|^2)/a + sum_j log(d_j+a)
  + (D-r) log a ] + const``
* ``E[x0 | x, k] = mu_k + U_k diag((d+tau^2)/(d+a)) p + tau^2/a (v - U_k p)``
* conditional denoiser ``D_c(x, s)`` = responsibilities over the components of class ``c`` times those means;
  unconditional ``D_u`` over all components; guided ``D = D_u + g (D_c - D_u)`` (CFG on the data prediction, which
  equals CFG on eps at a shared sigma).

A sample index ``i`` is conditioned on class ``i mod C``; its noise comes from the teacher cache's seed rule.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import torch

from gas import DiscreteVPSchedule

from .config import DistillConfig
from .problem import DistillProblem
from .report import BASELINE_REFERENCE, save_grid, scores_table, write_markdown

__all__ = ["DEMO_CFG", "DEMO_DEFAULTS", "GaussianMixtureDenoiser", "make_demo_problem", "run_demo"]

#: Guidance scale of the demo teacher (strong guidance makes the ODE curved, like SD's 7.5).
DEMO_CFG = 4.0

_PALETTE = [
    (0.9, 0.2, 0.2), (0.2, 0.8, 0.3), (0.25, 0.4, 0.95), (0.95, 0.85, 0.2),
    (0.85, 0.3, 0.9), (0.2, 0.85, 0.9), (0.95, 0.55, 0.15), (0.9, 0.9, 0.9),
]


def _shape_mask(kind: int, size: int, cy: float, cx: float) -> torch.Tensor:
    """Soft 0..1 mask of a simple shape centred at (cy, cx) on a size x size grid."""
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                            indexing="ij")
    dy, dx = yy - cy, xx - cx
    r = size / 4.0
    soft = lambda d: torch.sigmoid(d * 3.0)  # noqa: E731  (edge sharpness ~ a third of a pixel)
    kind %= 8
    if kind == 0:  # disc
        return soft(r - torch.sqrt(dy**2 + dx**2))
    if kind == 1:  # square
        return soft(r - torch.maximum(dy.abs(), dx.abs()))
    if kind == 2:  # ring
        d = torch.sqrt(dy**2 + dx**2)
        return soft(r - d) * soft(d - r / 2)
    if kind == 3:  # plus
        arm_h = soft(r / 2.5 - dy.abs()) * soft(r - dx.abs())
        return torch.maximum(arm_h, soft(r / 2.5 - dx.abs()) * soft(r - dy.abs()))
    if kind == 4:  # diamond
        return soft(r * 1.2 - (dy.abs() + dx.abs()))
    if kind == 5:  # horizontal bar
        return soft(r / 2 - dy.abs()) * soft(1.6 * r - dx.abs())
    if kind == 6:  # vertical bar
        return soft(r / 2 - dx.abs()) * soft(1.6 * r - dy.abs())
    return soft(r - torch.maximum(dy.abs(), dx.abs())) * (1 - soft(r / 2 - torch.maximum(dy.abs(), dx.abs())))


def _smooth_basis(rank: int, channels: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """``D x rank`` orthonormal basis of smooth (low-frequency) random image patterns."""
    coarse = torch.randn(rank, channels, 4, 4, generator=gen, dtype=torch.float64)
    fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)
    q, _ = torch.linalg.qr(fine.reshape(rank, -1).T)
    return q  # [D, rank]


class GaussianMixtureDenoiser:
    """Closed-form CFG denoiser ``(x, sigma, cond=class_ids) -> x0`` of a class-conditional Gaussian mixture.

    ``x``: ``[B, C, H, W]`` sigma-space state; ``sigma``: ``[B]`` (or scalar); ``cond``: ``[B]`` int64 class ids.
    Pure torch, differentiable in ``x`` and ``sigma``; computed in float64 internally for a clean analytic teacher.
    """

    def __init__(self, *, channels: int = 3, size: int = 16, classes: int = 8, components: int = 3, rank: int = 6,
                 tau: float = 0.02, cfg: float = DEMO_CFG, texture: float = 0.15, seed: int = 2026) -> None:
        if classes < 1 or components < 1 or rank < 1:
            raise ValueError("classes, components and rank must be positive")
        self.channels, self.size, self.classes, self.components = channels, size, classes, components
        #: Everything that defines the mixture and the guidance (the demo's model identity / cache key).
        self.settings = {"channels": channels, "size": size, "classes": classes, "components": components,
                         "rank": rank, "tau": float(tau), "cfg": float(cfg), "texture": float(texture), "seed": seed}
        self.cfg = float(cfg)
        self.tau2 = float(tau) ** 2
        dim = channels * size * size
        self.dim, self.rank = dim, rank
        gen = torch.Generator().manual_seed(seed)
        means, bases, eigs, labels = [], [], [], []
        for c in range(classes):
            base_col = torch.tensor(_PALETTE[c % len(_PALETTE)], dtype=torch.float64)
            for _m in range(components):
                cy = size / 2 - 0.5 + float(torch.randint(-2, 3, (1,), generator=gen))
                cx = size / 2 - 0.5 + float(torch.randint(-2, 3, (1,), generator=gen))
                mask = _shape_mask(c, size, cy, cx)
                col = (base_col + 0.15 * torch.randn(3, generator=gen, dtype=torch.float64)).clamp(0.05, 1.0)
                col = col[:channels] if channels <= 3 else torch.cat([col, col.new_full((channels - 3,), 0.5)])
                img = -0.7 + mask.unsqueeze(0) * (col.reshape(-1, 1, 1) * 1.5)
                if texture:
                    img = img + texture * torch.sign(torch.randn(img.shape, generator=gen, dtype=torch.float64))
                means.append(img.reshape(-1))
                bases.append(_smooth_basis(rank, channels, size, gen))
                eigs.append(torch.linspace(0.35, 0.08, rank, dtype=torch.float64) ** 2 * dim / 64.0)
                labels.append(c)
        self.means = torch.stack(means)  # [K, D]
        self.bases = torch.stack(bases)  # [K, D, r]
        self.eigs = torch.stack(eigs)  # [K, r]
        self.labels = torch.tensor(labels, dtype=torch.long)  # [K]
        self._cache: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def _tensors(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        if device not in self._cache:
            flat_bases = self.bases.permute(1, 0, 2).reshape(self.dim, -1)  # [D, K*r]
            mu_p = torch.einsum("kd,kdr->kr", self.means, self.bases)  # U_k^T mu_k
            mu_sq = (self.means * self.means).sum(-1)
            self._cache[device] = tuple(t.to(device) for t in (self.means, flat_bases, mu_p, mu_sq, self.eigs,
                                                                self.labels))
        return self._cache[device]

    def _component_logp(self, xf: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``log N(x; mu_k, Sigma_k + s^2 I)`` up to ``-D/2 log 2 pi`` (``[B, K]``), with ``a = tau^2 + s^2``."""
        means, flat_bases, mu_p, mu_sq, eigs, _ = self._tensors(xf.device)
        b, kk, r = xf.shape[0], means.shape[0], self.rank
        p = (xf @ flat_bases).reshape(b, kk, r) - mu_p.unsqueeze(0)  # U_k^T (x - mu_k)   [B, K, r]
        vv = (xf * xf).sum(-1, keepdim=True) - 2.0 * xf @ means.T + mu_sq.unsqueeze(0)  # |x - mu_k|^2  [B, K]
        da = eigs.unsqueeze(0) + a.unsqueeze(-1)  # [B, K, r]
        pp = (p * p).sum(-1)
        logp = -0.5 * ((p * p / da).sum(-1) + (vv - pp) / a + torch.log(da).sum(-1)
                       + (self.dim - r) * torch.log(a))
        return logp, p, da

    def nll(self, x: torch.Tensor, sigma: float, cond: torch.Tensor) -> torch.Tensor:
        """Per-sample negative log-likelihood per dimension (nats) of ``x`` under class ``cond``'s mixture convolved
        with ``N(0, sigma^2 I)`` (the distribution of the exact ODE's state at ``sigma`` without guidance)."""
        b = x.shape[0]
        xf = x.reshape(b, -1).to(torch.float64)
        a = torch.full((b, 1), self.tau2 + float(sigma) ** 2, dtype=torch.float64, device=x.device)
        logp, _, _ = self._component_logp(xf, a)
        own = self.labels.to(x.device).unsqueeze(0) == torch.as_tensor(cond, device=x.device).reshape(-1, 1)
        log_c = torch.logsumexp(logp.masked_fill(~own, -math.inf), dim=1) - math.log(self.components)
        return -(log_c - 0.5 * self.dim * math.log(2 * math.pi)) / self.dim

    def _guided_mean(self, xf: torch.Tensor, s2: torch.Tensor, cls: torch.Tensor | None) -> torch.Tensor:
        """Guided posterior mean for flat float64 states ``xf [B, D]`` at squared sigmas ``s2 [B, 1]``."""
        means, flat_bases, _, _, eigs, labels = self._tensors(xf.device)
        b = xf.shape[0]
        a = self.tau2 + s2  # [B, 1]
        logp, p, da = self._component_logp(xf, a)
        iso = self.tau2 / a  # [B, 1]
        coef = ((eigs.unsqueeze(0) + self.tau2) / da - iso.unsqueeze(-1)) * p  # [B, K, r]

        def mean_under(w: torch.Tensor) -> torch.Tensor:
            # sum_k w_k [mu_k (1 - iso) + iso x + U_k ((shrink - iso) p_k)]
            return (w @ means) * (1.0 - iso) + iso * xf + (w.unsqueeze(-1) * coef).reshape(b, -1) @ flat_bases.T

        # Responsibilities below e^-200 of the largest are exactly irrelevant; clamping them keeps exp() away from
        # subnormal floats, which are ~50x slower on CPUs (forward and backward).
        logp = torch.maximum(logp, logp.detach().amax(dim=1, keepdim=True) - 200.0)
        d_u = mean_under(torch.softmax(logp, dim=1))
        if cls is None or self.cfg == 0.0:
            return d_u
        own = labels.unsqueeze(0) == cls.unsqueeze(1)  # [B, K]
        logp_c = logp.masked_fill(~own, -math.inf)
        logp_c = torch.maximum(logp_c, logp_c.detach().amax(dim=1, keepdim=True) - 200.0)
        d_c = mean_under(torch.softmax(logp_c, dim=1))
        return d_u + self.cfg * (d_c - d_u)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        b = x.shape[0]
        xf = x.reshape(b, -1).to(torch.float64)
        s2 = torch.as_tensor(sigma, device=x.device).to(torch.float64).reshape(-1).expand(b).reshape(b, 1) ** 2
        cls = None if cond is None else torch.as_tensor(cond, device=x.device).reshape(-1).long()
        return self._guided_mean(xf, s2, cls).reshape(x.shape).to(x.dtype)

    def sample_data(self, class_ids: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Exact samples of the class-conditional data distribution (unguided), ``[B, C, H, W]`` float32."""
        out = []
        for c in class_ids.tolist():
            ks = (self.labels == c).nonzero().flatten()
            k = int(ks[torch.randint(len(ks), (1,), generator=gen)])
            z = torch.randn(self.rank, generator=gen, dtype=torch.float64) * self.eigs[k].sqrt()
            e = torch.randn(self.dim, generator=gen, dtype=torch.float64) * math.sqrt(self.tau2)
            out.append(self.means[k] + self.bases[k] @ z + e)
        return torch.stack(out).reshape(-1, self.channels, self.size, self.size).float()


def make_demo_problem(*, channels: int = 3, size: int = 16, classes: int = 8, cfg: float = DEMO_CFG,
                      device: str | torch.device = "cpu", upscale: int = 4, **mixture_kw: float) -> DistillProblem:
    """The demo's :class:`~trainer.problem.DistillProblem`: the mixture denoiser on SD1.5's discrete schedule.

    ``decode`` shows the state itself as an image (nearest-upscaled ``upscale`` times, clipped to [-1, 1]); with
    other than 3 channels the first three (or a grey copy of the first) are shown.
    """
    den = GaussianMixtureDenoiser(channels=channels, size=size, classes=classes, cfg=cfg, **mixture_kw)
    dev = torch.device(device)
    schedule = DiscreteVPSchedule.sd_linear()

    def conditions(indices: list[int]) -> dict[str, torch.Tensor]:
        return {"cond": torch.tensor([i % classes for i in indices], dtype=torch.long, device=dev)}

    def decode(latents: torch.Tensor) -> torch.Tensor:
        img = latents.float()
        img = img[:, :3] if img.shape[1] >= 3 else img[:, :1].expand(-1, 3, -1, -1)
        if upscale > 1:
            img = torch.nn.functional.interpolate(img, scale_factor=upscale, mode="nearest")
        return img.clamp(-1, 1)

    s_end = float(schedule.sigma_of_time(torch.tensor(1e-3, dtype=torch.float64)))

    def sample_nll(latents: torch.Tensor, indices: list[int]) -> torch.Tensor:
        return den.nll(latents, s_end, torch.tensor([i % classes for i in indices]))

    identity = {"family": "demo-gmm", "version": 2, **den.settings}
    return DistillProblem(
        denoiser=den, schedule=schedule, latent_shape=(channels, size, size), sample_nll=sample_nll,
        conditions=conditions, decode=decode, device=dev, dtype=torch.float32, identity=identity, name="demo",
        cfg=cfg, description=f"analytic class-conditional Gaussian mixture ({classes} classes, "
                             f"{channels}x{size}x{size}), CFG {cfg:g}",
    )


#: Options of ``python -m trainer --demo`` that differ from the recipe (see the README's demo section); the
#: iterations and every other optimisation setting are the recipe's.
DEMO_DEFAULTS: dict[str, Any] = {
    "val_size": 512,  # more held-out samples than SD's 128: the demo's metrics need them and they are cheap
    "disc_preset": "small",  # a 3x16x16 latent does not need the 22 M-parameter discriminator
    "eval_every": 500,
    "log_every": 500,
}


def run_demo(config: DistillConfig, modes: list[str], *, nfes: list[int] | None = None, device: str = "cpu",
             cfg: float | None = None, progress: bool = True) -> dict[str, Any]:
    """Distil the demo problem in each mode, print the comparison table and write ``<name>-nfe<N>.md/.png``.

    ``nfes`` (default ``[config.nfe]``): with several, each mode trains one solver per NFE on the shared teacher and
    writes one file, ``<name>-nfe<N1>-<N2>-<mode>.safetensors`` (:func:`trainer.multi_nfe.distill_nfes`), and the
    comparison covers every NFE (``<name>-nfe<N1>-<N2>.md/.png``).

    Returns ``{"results": {mode: DistillResult}, "methods": {...}, "table": str, "seconds": float}`` of the first
    NFE and ``"by_nfe": {nfe: {"results", "methods", "table"}}``. Under torchrun every rank trains and returns the
    same; rank 0 alone prints and writes.
    """
    from .distributed import init_distributed

    t0 = time.time()
    nfes = sorted(set(nfes or [config.nfe]))
    dist = init_distributed(device)
    problem = make_demo_problem(cfg=DEMO_CFG if cfg is None else cfg, device=dist.device)
    progress = progress and dist.is_main
    by_nfe: dict[int, dict[str, Any]] = {n: {} for n in nfes}
    files: list[str] = []
    for mode in modes:
        cfg_m = dataclasses.replace(config, mode=mode, nfe=nfes[0])
        found, path = _demo_mode(problem, cfg_m, nfes, progress, dist)
        files.append(path.name)
        for n in nfes:
            by_nfe[n][mode] = found[n]
    last = by_nfe[nfes[0]][modes[-1]]
    comparisons = {n: _comparison(by_nfe[n], modes) for n in nfes}
    seconds = time.time() - t0
    lines = [f"Demo: {problem.description}; teacher {last.teacher}; {last.scores['n']} held-out samples.", ""]
    for n in nfes:
        _, table, notes = comparisons[n]
        lines += ([f"NFE {n}:"] if len(nfes) > 1 else []) + [table, "", *notes]
    lines.append(f"total time {seconds:.0f} s (" + ", ".join(
        f"{r.label}{f' NFE {n}' if len(nfes) > 1 else ''} training {r.train_seconds:.0f} s"
        for mode in modes for n in nfes for r in [by_nfe[n][mode]]) + ")")
    text = "\n".join(lines)
    if dist.is_main:
        print(text, flush=True)
    if config.report and dist.is_main:
        out_dir = config.paths()[0]
        tag = "-".join(str(n) for n in nfes)
        stem = f"{config.name or problem.name}-nfe{tag}"
        rows = [("teacher", last.samples["teacher"])]
        for n in nfes:
            results, ref = by_nfe[n], by_nfe[n][modes[-1]]
            rows += [(f"{r.label} ({n} NFE)", r.samples[r.label]) for r in results.values()]
            rows += [(f"{name} ({n} NFE)", ref.samples[name]) for name in (BASELINE_REFERENCE, "DPM-Solver++(2M)")]
        decode = problem.decode
        assert decode is not None
        grid = save_grid(out_dir / f"{stem}.png", [(label, decode(lat)) for label, lat in rows])
        write_markdown(out_dir / f"{stem}.md", f"GAS demo, NFE {', '.join(str(n) for n in nfes)}", [
            ("Held-out comparison", text.replace("\n", "  \n")),
            ("Samples", f"Rows: {', '.join(label for label, _ in rows)}; same held-out noise per column.\n\n"
                        f"![samples]({grid.name})"),
        ], {"model": problem.description, "teacher": last.teacher, "solvers": ", ".join(f"`{f}`" for f in files)})
    first = comparisons[nfes[0]]
    return {"results": by_nfe[nfes[0]], "methods": first[0], "table": first[1], "seconds": seconds,
            "by_nfe": {n: {"results": by_nfe[n], "methods": comparisons[n][0], "table": comparisons[n][1]}
                       for n in nfes}}


def _demo_mode(problem: DistillProblem, config: DistillConfig, nfes: list[int], progress: bool,
               dist: Any) -> tuple[dict[int, Any], Any]:
    """One mode of the demo: ``({nfe: DistillResult}, solver file)``; with ``resume`` a file the interrupted run
    finished is evaluated again instead of retrained."""
    from .distill import distill
    from .multi_nfe import distill_nfes, finished_result, multi_paths
    from .outputs import output_paths

    if len(nfes) == 1:
        paths = output_paths(problem, config)
        finished, unfinished = dist.main_decides(lambda: (paths.solver.exists(), paths.state.exists()))
        if config.resume and finished and not unfinished:
            return {nfes[0]: finished_result(problem, config, paths.solver, progress)}, paths.solver
        config.resume = config.resume and unfinished
        return {nfes[0]: distill(problem, config, progress=progress)}, paths.solver
    multi = multi_paths(problem, config, nfes)
    finished, unfinished = dist.main_decides(lambda: (multi.solver.exists(), multi.has_progress()))
    if config.resume and finished and not unfinished:
        return {n: finished_result(problem, dataclasses.replace(config, nfe=n), multi.solver, progress)
                for n in nfes}, multi.solver
    config.resume = config.resume and unfinished
    return distill_nfes(problem, config, nfes, progress=progress).results, multi.solver


def _comparison(results: dict[str, Any], modes: list[str]) -> tuple[dict[str, dict[str, float]], str, list[str]]:
    """The held-out comparison of one NFE's modes: ``(methods, table, notes)``."""
    last = results[modes[-1]]
    nfe = last.solver.nfe
    methods: dict[str, dict[str, float]] = {}
    for mode in modes:
        methods[results[mode].label] = results[mode].scores["methods"][results[mode].label]
    methods.update({k: v for k, v in last.scores["methods"].items() if k not in methods})
    notes = []
    ref = methods.get(BASELINE_REFERENCE, {}).get("l1")
    for label in ("GS", "GAS"):
        if label in methods and ref:
            notes.append(f"{label}: held-out L1 to the teacher is {methods[label]['l1'] / ref:.3f} x "
                         f"DPM-Solver++(3M)'s at the same NFE")
    if "GS" in methods and "GAS" in methods:
        gs, ga = methods["GS"], methods["GAS"]
        line = f"GAS vs GS: distribution distance to the teacher's samples (SWD) {ga['swd']:.4g} vs {gs['swd']:.4g}"
        if "nll" in gs and "nll" in ga:
            line += f"; sample realism (NLL excess) {ga['nll']:.4g} vs {gs['nll']:.4g}"
        notes.append(line)
    return methods, scores_table(methods, nfe), notes
