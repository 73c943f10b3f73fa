"""The evaluation report next to a solver: a markdown table and a PNG image grid (teacher / trained / baseline)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gas.atomic_file import write_atomically

__all__ = ["BASELINE_REFERENCE", "first_frame", "latents_to_images", "save_grid", "scores_table", "write_markdown"]

#: The baseline every table compares against (the untrained solver).
BASELINE_REFERENCE = "DPM-Solver++(3M)"


def _fmt(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def scores_table(methods: dict[str, dict[str, float]], nfe: int, *, reference: str = BASELINE_REFERENCE,
                 nfe_of: dict[str, int] | None = None) -> str:
    """Markdown table, one row per method: held-out L1, LPIPS (if any), SWD, and L1 relative to ``reference``."""
    has_lpips = any("lpips" in m for m in methods.values())
    has_nll = any("nll" in m for m in methods.values())
    head = (["method", "NFE", "L1 to teacher ↓"] + (["LPIPS ↓"] if has_lpips else []) + ["SWD ↓"]
            + (["NLL excess ↓"] if has_nll else []) + [f"L1 / {reference}"])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    ref = methods.get(reference, {}).get("l1")
    for name, m in methods.items():
        ratio = f"{m['l1'] / ref:.3f}" if ref else "—"
        row = [name, str((nfe_of or {}).get(name, nfe)), _fmt(m.get("l1"))]
        if has_lpips:
            row.append(_fmt(m.get("lpips")))
        row.append(_fmt(m.get("swd")))
        if has_nll:
            row.append(_fmt(m.get("nll")))
        row.append(ratio)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def first_frame(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` as it is; of video ``[B, C, T, H, W]`` (or more axes) the first frame ``[B, C, H, W]``."""
    while x.ndim > 4:
        x = x[:, :, 0]
    return x


def latents_to_images(latents: torch.Tensor) -> torch.Tensor:
    """A viewable ``[B, 3, H, W]`` image in [-1, 1] from arbitrary latents (first 3 channels, scaled to +-3 std; the
    first frame of video latents)."""
    x = first_frame(latents.float())
    x = x[:, :3] if x.shape[1] >= 3 else x[:, :1].expand(-1, 3, *x.shape[2:])
    scale = 3.0 * x.std().clamp_min(1e-6)
    return (x / scale).clamp(-1, 1)


def save_grid(path: str | os.PathLike[str], rows: Sequence[tuple[str, torch.Tensor]], *, cell: int = 128) -> Path:
    """PNG with one labelled row per ``(label, images [k, 3, H, W] in [-1, 1])``; written atomically."""
    from PIL import Image, ImageDraw

    path = Path(path)
    cols = max(int(imgs.shape[0]) for _, imgs in rows) if rows else 0
    label_w, pad = 150, 4
    canvas = Image.new("RGB", (label_w + cols * (cell + pad) + pad, len(rows) * (cell + pad) + pad), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    for r, (label, imgs) in enumerate(rows):
        y = pad + r * (cell + pad)
        draw.text((8, y + cell // 2 - 6), label, fill=(235, 235, 235))
        arr = ((imgs.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        for c in range(arr.shape[0]):
            tile = Image.fromarray(arr[c].permute(1, 2, 0).numpy(), mode="RGB")
            tile = tile.resize((cell, cell), Image.NEAREST if tile.width < cell // 2 else Image.BILINEAR)
            canvas.paste(tile, (label_w + pad + c * (cell + pad), y))
    return write_atomically(path, lambda tmp: canvas.save(tmp, format="PNG"))


def write_markdown(path: str | os.PathLike[str], title: str, sections: Sequence[tuple[str, str]],
                   info: dict[str, Any]) -> Path:
    """Markdown report: a title, a bullet list of ``info`` and the given ``(heading, body)`` sections."""
    path = Path(path)
    lines = [f"# {title}", ""]
    lines += [f"* **{k}**: {v}" for k, v in info.items()]
    for heading, body in sections:
        lines += ["", f"## {heading}", "", body]
    text = "\n".join(lines) + "\n"
    return write_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
