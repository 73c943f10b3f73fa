"""Writes the example workflows of this folder (UI format, as ComfyUI's frontend saves them) and their thumbnails.

    python example_workflows/make_examples.py            # rewrite the .json and .jpg files next to this script
    python example_workflows/make_examples.py --check    # exit 1 if a committed .json differs from what this writes

Each workflow references the standard SD1.5 checkpoint ``v1-5-pruned-emaonly.safetensors`` and the solver file
``sd15-nfe4-gas.safetensors`` (a 4-step GAS solver for SD1.5 in ``models/gas_solvers``). The thumbnails are title
cards drawn with Pillow (a diagram of the graph), not renders. Needs only the standard library and Pillow.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
SOLVER = "sd15-nfe4-gas.safetensors"
LORA = "my_lora.safetensors"
POSITIVE = "a photograph of a red fox in a snowy forest, golden hour, detailed fur"
NEGATIVE = ""
SEED = 42
CFG = 7.5
NFE = 4
TEACHER_STEPS = 30
SIZE = 512


@dataclass
class Node:
    id: int
    type: str
    pos: tuple[int, int]
    size: tuple[int, int]
    widgets: list[Any]
    inputs: list[tuple[str, str]] = field(default_factory=list)  # socket inputs: (name, type)
    outputs: list[tuple[str, str]] = field(default_factory=list)  # (name, type)
    title: str | None = None


class Graph:
    """A UI-format workflow under construction: nodes with sockets, links between them."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.links: list[list[Any]] = []  # [link_id, origin_id, origin_slot, target_id, target_slot, type]

    def add(self, type_: str, pos: tuple[int, int], size: tuple[int, int], widgets: list[Any] | None = None,
            inputs: list[tuple[str, str]] | None = None, outputs: list[tuple[str, str]] | None = None,
            title: str | None = None) -> Node:
        node = Node(len(self.nodes) + 1, type_, pos, size, widgets or [], inputs or [], outputs or [], title)
        self.nodes.append(node)
        return node

    def link(self, origin: Node, slot: int, target: Node, input_name: str) -> None:
        names = [name for name, _ in target.inputs]
        kind = origin.outputs[slot][1]
        self.links.append([len(self.links) + 1, origin.id, slot, target.id, names.index(input_name), kind])

    def to_json(self) -> dict[str, Any]:
        nodes = []
        for order, node in enumerate(self.nodes):
            inputs = []
            for slot, (name, kind) in enumerate(node.inputs):
                link = next((lk[0] for lk in self.links if lk[3] == node.id and lk[4] == slot), None)
                entry_in: dict[str, Any] = {"name": name, "type": kind, "link": link}
                if kind == "COMBO":  # a dropdown widget fed by a link
                    entry_in["widget"] = {"name": name}
                inputs.append(entry_in)
            outputs = []
            for slot, (name, kind) in enumerate(node.outputs):
                links = [lk[0] for lk in self.links if lk[1] == node.id and lk[2] == slot]
                outputs.append({"name": name, "type": kind, "links": links, "slot_index": slot})
            entry: dict[str, Any] = {
                "id": node.id, "type": node.type, "pos": list(node.pos), "size": list(node.size), "flags": {},
                "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
                "properties": {"Node name for S&R": node.type}, "widgets_values": node.widgets,
            }
            if node.title:
                entry["title"] = node.title
            nodes.append(entry)
        return {
            "last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": nodes, "links": self.links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [40, 40]}}, "version": 0.4,
        }


def _text_nodes(g: Graph) -> tuple[Node, Node, Node, Node]:
    ckpt = g.add("CheckpointLoaderSimple", (0, 120), (320, 100), [CHECKPOINT],
                 outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")])
    pos = g.add("CLIPTextEncode", (360, 0), (400, 160), [POSITIVE], inputs=[("clip", "CLIP")],
                outputs=[("CONDITIONING", "CONDITIONING")], title="Positive prompt")
    neg = g.add("CLIPTextEncode", (360, 200), (400, 120), [NEGATIVE], inputs=[("clip", "CLIP")],
                outputs=[("CONDITIONING", "CONDITIONING")], title="Negative prompt (empty, as in training)")
    latent = g.add("EmptyLatentImage", (360, 360), (320, 110), [SIZE, SIZE, 1], outputs=[("LATENT", "LATENT")])
    g.link(ckpt, 1, pos, "clip")
    g.link(ckpt, 1, neg, "clip")
    return ckpt, pos, neg, latent


def _note(g: Graph, pos: tuple[int, int], text: str) -> None:
    g.add("MarkdownNote", pos, (420, 260), [text], title="About this workflow")


def _advanced_branch(g: Graph, x: int, y: int, ckpt: Node, noise: Node, guider: Node, latent: Node,
                     sampler: Node, sigmas: Node, title: str) -> Node:
    sca = g.add("SamplerCustomAdvanced", (x, y), (300, 110),
                inputs=[("noise", "NOISE"), ("guider", "GUIDER"), ("sampler", "SAMPLER"), ("sigmas", "SIGMAS"),
                        ("latent_image", "LATENT")],
                outputs=[("output", "LATENT"), ("denoised_output", "LATENT")], title=title)
    g.link(noise, 0, sca, "noise")
    g.link(guider, 0, sca, "guider")
    g.link(sampler, 0, sca, "sampler")
    g.link(sigmas, 0, sca, "sigmas")
    g.link(latent, 0, sca, "latent_image")
    decode = g.add("VAEDecode", (x + 340, y), (210, 50), inputs=[("samples", "LATENT"), ("vae", "VAE")],
                   outputs=[("IMAGE", "IMAGE")])
    g.link(sca, 0, decode, "samples")
    g.link(ckpt, 2, decode, "vae")
    return decode


def _shared_sampling(g: Graph, ckpt: Node, pos: Node, neg: Node, x: int) -> tuple[Node, Node]:
    noise = g.add("RandomNoise", (x, 0), (300, 90), [SEED, "fixed"], outputs=[("NOISE", "NOISE")])
    guider = g.add("CFGGuider", (x, 130), (300, 100), [CFG],
                   inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING")],
                   outputs=[("GUIDER", "GUIDER")])
    g.link(ckpt, 0, guider, "model")
    g.link(pos, 0, guider, "positive")
    g.link(neg, 0, guider, "negative")
    return noise, guider


def _gas_pair(g: Graph, ckpt: Node, x: int, y: int) -> tuple[Node, Node]:
    sampler = g.add("GASSampler", (x, y), (320, 60), [SOLVER], outputs=[("sampler", "SAMPLER")])
    sigmas = g.add("GASSigmas", (x, y + 100), (320, 110), [SOLVER, 0, 1.0], inputs=[("model", "MODEL")],
                   outputs=[("sigmas", "SIGMAS")])
    g.link(ckpt, 0, sigmas, "model")
    return sampler, sigmas


def custom_advanced() -> Graph:
    """SD1.5 text-to-image: GAS Sampler + GAS Sigmas in SamplerCustomAdvanced."""
    g = Graph()
    ckpt, pos, neg, latent = _text_nodes(g)
    noise, guider = _shared_sampling(g, ckpt, pos, neg, 800)
    sampler, sigmas = _gas_pair(g, ckpt, 800, 270)
    decode = _advanced_branch(g, 1160, 120, ckpt, noise, guider, latent, sampler, sigmas, "GAS, 4 steps")
    save = g.add("SaveImage", (1500, 120), (400, 440), ["gas_sd15"], inputs=[("images", "IMAGE")])
    g.link(decode, 0, save, "images")
    _note(g, (0, 520), (
        "# GAS: SD1.5 in 4 steps\n\nGAS Sampler and GAS Sigmas must name the **same solver**: the solver only runs "
        f"on the sigmas it was trained on. Put `{SOLVER}` (a GAS solver trained for SD1.5 at 4 NFE, cfg {CFG}) into "
        "`models/gas_solvers`.\n\nThe negative prompt is empty, as in training."))
    return g


def ksampler() -> Graph:
    """SD1.5 text-to-image with the one-node GAS KSampler, plus GAS Solver Info shown by Preview Any."""
    g = Graph()
    ckpt, pos, neg, latent = _text_nodes(g)
    ks = g.add("GASKSampler", (800, 0), (320, 290), [SEED, "fixed", 0.0, SOLVER, 0, 1.0],
               inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                       ("latent_image", "LATENT")], outputs=[("LATENT", "LATENT")])
    g.link(ckpt, 0, ks, "model")
    g.link(pos, 0, ks, "positive")
    g.link(neg, 0, ks, "negative")
    g.link(latent, 0, ks, "latent_image")
    decode = g.add("VAEDecode", (1160, 0), (210, 50), inputs=[("samples", "LATENT"), ("vae", "VAE")],
                   outputs=[("IMAGE", "IMAGE")])
    g.link(ks, 0, decode, "samples")
    g.link(ckpt, 2, decode, "vae")
    save = g.add("SaveImage", (1400, 0), (400, 440), ["gas_ksampler"], inputs=[("images", "IMAGE")])
    g.link(decode, 0, save, "images")
    info = g.add("GASSolverInfo", (800, 340), (320, 60), [SOLVER], outputs=[("info", "STRING")])
    preview = g.add("PreviewAny", (1160, 340), (400, 300), [], inputs=[("source", "*")],
                    title="What the solver was trained for")
    g.link(info, 0, preview, "source")
    _note(g, (0, 520), (
        "# GAS KSampler\n\nOne node: the solver fixes the steps (steps 0 = its NFE) and cfg 0 uses the cfg it was "
        f"trained for. Put `{SOLVER}` into `models/gas_solvers`.\n\nGAS Solver Info shows what the file was trained "
        "for (model, NFE, cfg, schedule, scores)."))
    return g


def compare() -> Graph:
    """GAS vs dpmpp_2m at the same NFE vs the many-step teacher, one seed, side by side."""
    g = Graph()
    ckpt, pos, neg, latent = _text_nodes(g)
    noise, guider = _shared_sampling(g, ckpt, pos, neg, 800)
    sampler, sigmas = _gas_pair(g, ckpt, 800, 270)
    gas_img = _advanced_branch(g, 1160, 0, ckpt, noise, guider, latent, sampler, sigmas, f"GAS, {NFE} NFE")
    select = g.add("KSamplerSelect", (800, 520), (320, 60), ["dpmpp_2m"], outputs=[("SAMPLER", "SAMPLER")])
    few = g.add("BasicScheduler", (800, 620), (320, 110), ["karras", NFE, 1.0], inputs=[("model", "MODEL")],
                outputs=[("SIGMAS", "SIGMAS")], title=f"karras, {NFE} steps (same NFE)")
    g.link(ckpt, 0, few, "model")
    base_img = _advanced_branch(g, 1160, 300, ckpt, noise, guider, latent, select, few, f"dpmpp_2m, {NFE} NFE")
    many = g.add("BasicScheduler", (800, 780), (320, 110), ["karras", TEACHER_STEPS, 1.0], inputs=[("model", "MODEL")],
                 outputs=[("SIGMAS", "SIGMAS")], title=f"karras, {TEACHER_STEPS} steps (teacher)")
    g.link(ckpt, 0, many, "model")
    teacher_img = _advanced_branch(g, 1160, 600, ckpt, noise, guider, latent, select, many,
                                   f"teacher: dpmpp_2m, {TEACHER_STEPS} steps")
    saves = []
    for i, (img, prefix) in enumerate(((gas_img, "compare_gas"), (base_img, "compare_dpmpp_2m"),
                                       (teacher_img, "compare_teacher"))):
        save = g.add("SaveImage", (1740, 300 * i), (300, 280), [prefix], inputs=[("images", "IMAGE")])
        g.link(img, 0, save, "images")
        saves.append(save)
    pair = g.add("ImageBatch", (2080, 0), (210, 50), inputs=[("image1", "IMAGE"), ("image2", "IMAGE")],
                 outputs=[("IMAGE", "IMAGE")])
    g.link(gas_img, 0, pair, "image1")
    g.link(base_img, 0, pair, "image2")
    trio = g.add("ImageBatch", (2080, 100), (210, 50), inputs=[("image1", "IMAGE"), ("image2", "IMAGE")],
                 outputs=[("IMAGE", "IMAGE")])
    g.link(pair, 0, trio, "image1")
    g.link(teacher_img, 0, trio, "image2")
    side = g.add("PreviewImage", (2080, 200), (620, 300), inputs=[("images", "IMAGE")],
                 title="Side by side: GAS | dpmpp_2m | teacher")
    g.link(trio, 0, side, "images")
    _note(g, (0, 520), (
        f"# GAS vs DPM-Solver++(2M) at {NFE} NFE vs the teacher\n\nOne seed, one guider, three samplers: the GAS "
        f"solver `{SOLVER}` on its learned sigmas, `dpmpp_2m` + karras at the same {NFE} network evaluations, and "
        f"`dpmpp_2m` at {TEACHER_STEPS} steps as the reference."))
    return g


def train() -> Graph:
    """Checkpoint -> LoRA -> GAS Train Solver -> GAS Sampler + GAS Sigmas -> SamplerCustomAdvanced (one queue)."""
    g = Graph()
    ckpt = g.add("CheckpointLoaderSimple", (0, 120), (320, 100), [CHECKPOINT],
                 outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")])
    lora = g.add("LoraLoader", (360, 120), (320, 130), [LORA, 1.0, 1.0], inputs=[("model", "MODEL"), ("clip", "CLIP")],
                 outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP")])
    g.link(ckpt, 0, lora, "model")
    g.link(ckpt, 1, lora, "clip")
    trainer = g.add("GASTrainSolver", (720, 0), (360, 620),
                    ["", "", CFG, SIZE, SIZE, str(NFE), "gas", 2000, SEED, "sd15-my-lora", False,
                     0, 4, 0.001, 1400, 128, 100],
                    inputs=[("model", "MODEL"), ("clip", "CLIP"), ("vae", "VAE")],
                    outputs=[("solver", "COMBO"), ("preview", "IMAGE"), ("report", "STRING")])
    g.link(lora, 0, trainer, "model")
    g.link(lora, 1, trainer, "clip")
    g.link(ckpt, 2, trainer, "vae")
    pos = g.add("CLIPTextEncode", (720, 680), (400, 160), [POSITIVE], inputs=[("clip", "CLIP")],
                outputs=[("CONDITIONING", "CONDITIONING")], title="Positive prompt")
    neg = g.add("CLIPTextEncode", (720, 880), (400, 120), [NEGATIVE], inputs=[("clip", "CLIP")],
                outputs=[("CONDITIONING", "CONDITIONING")], title="Negative prompt (empty, as in training)")
    latent = g.add("EmptyLatentImage", (720, 1040), (320, 110), [SIZE, SIZE, 1], outputs=[("LATENT", "LATENT")])
    g.link(lora, 1, pos, "clip")
    g.link(lora, 1, neg, "clip")
    noise = g.add("RandomNoise", (1160, 0), (300, 90), [SEED, "fixed"], outputs=[("NOISE", "NOISE")])
    guider = g.add("CFGGuider", (1160, 130), (300, 100), [CFG],
                   inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING")],
                   outputs=[("GUIDER", "GUIDER")])
    g.link(lora, 0, guider, "model")
    g.link(pos, 0, guider, "positive")
    g.link(neg, 0, guider, "negative")
    trained = f"sd15-my-lora-nfe{NFE}-gas.safetensors"
    sampler = g.add("GASSampler", (1160, 270), (320, 60), [trained], inputs=[("solver", "COMBO")],
                    outputs=[("sampler", "SAMPLER")])
    sigmas = g.add("GASSigmas", (1160, 370), (320, 110), [trained, 0, 1.0],
                   inputs=[("model", "MODEL"), ("solver", "COMBO")], outputs=[("sigmas", "SIGMAS")])
    g.link(trainer, 0, sampler, "solver")
    g.link(lora, 0, sigmas, "model")
    g.link(trainer, 0, sigmas, "solver")
    decode = _advanced_branch(g, 1520, 120, ckpt, noise, guider, latent, sampler, sigmas,
                              f"GAS, {NFE} steps, trained solver")
    save = g.add("SaveImage", (1860, 120), (400, 440), ["gas_trained"], inputs=[("images", "IMAGE")])
    g.link(decode, 0, save, "images")
    report = g.add("PreviewAny", (1160, 640), (400, 300), [], inputs=[("source", "*")], title="Held-out scores")
    g.link(trainer, 2, report, "source")
    _note(g, (0, 300), (
        "# Train a GAS solver for your model\n\nGAS Train Solver distils a few-step solver for the model as the "
        "graph feeds it (here a checkpoint plus a LoRA) and writes it to `models/gas_solvers`; its `solver` output "
        "drives GAS Sampler and GAS Sigmas in the same queue. Cancel keeps the progress: queue again to resume. "
        "Once trained, the node's output is cached; later runs only sample."))
    return g


WORKFLOWS = {
    "gas_sd15_txt2img_sampler_custom_advanced": (custom_advanced, "GAS Sampler + GAS Sigmas",
                                                 ["GAS Sampler", "GAS Sigmas", "SamplerCustomAdvanced", "Save"], True),
    "gas_sd15_txt2img_gas_ksampler": (ksampler, "GAS KSampler", ["Prompts", "GAS KSampler", "VAE Decode", "Save"],
                                      True),
    "gas_sd15_compare_equal_nfe": (compare, "GAS vs dpmpp_2m vs teacher, one seed",
                                   [f"GAS {NFE} NFE", f"dpmpp_2m {NFE}", f"teacher {TEACHER_STEPS}"], False),
    "gas_sd15_train_solver": (train, "Train a solver for checkpoint + LoRA",
                              ["Checkpoint", "LoRA", "GAS Train Solver", "GAS Sampler"], True),
}


def thumbnail(title: str, boxes: list[str], path: Path, arrows: bool = True) -> None:
    """A 400x300 title card: the pack name, the workflow's title and its main nodes as a row of boxes (joined by
    arrows for a pipeline, side by side for a comparison)."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (400, 300), (24, 26, 33))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    draw.rectangle((0, 0, 399, 56), fill=(44, 62, 110))
    draw.text((16, 12), "ComfyUI-GAS  |  SD1.5, 4 steps", fill=(235, 235, 245), font=font)
    draw.text((16, 32), title, fill=(255, 214, 102), font=font)
    width = (368 - 12 * (len(boxes) - 1)) // len(boxes)
    for i, label in enumerate(boxes):
        x0 = 16 + i * (width + 12)
        draw.rounded_rectangle((x0, 130, x0 + width, 190), radius=8, fill=(52, 56, 70), outline=(120, 140, 200))
        draw.text((x0 + 8, 152), label[: max(4, width // 7)], fill=(230, 230, 230), font=font)
        if i and arrows:
            draw.line((x0 - 12, 160, x0, 160), fill=(200, 200, 120), width=2)
    draw.text((16, 262), "Generalized Adversarial Solver (ICLR 2026)", fill=(150, 155, 170), font=font)
    img.save(path, "JPEG", quality=80, optimize=True)


def render(name: str) -> str:
    """The JSON text of one workflow."""
    build = WORKFLOWS[name][0]
    return json.dumps(build().to_json(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for name, (_, title, boxes, arrows) in WORKFLOWS.items():
        target = HERE / f"{name}.json"
        text = render(name)
        if args.check:
            if not target.is_file() or target.read_text() != text:
                stale.append(target.name)
            continue
        target.write_text(text)
        thumbnail(title, boxes, HERE / f"{name}.jpg", arrows)
    if stale:
        print("out of date: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
