"""Writes the example workflows of this folder (UI format, as ComfyUI's frontend saves them).

    python example_workflows/make_examples.py            # rewrite the .json files next to this script
    python example_workflows/make_examples.py --check    # exit 1 if a committed .json differs from what this writes
    python -m tests.helpers.browser --thumbnails         # then retake the .jpg thumbnails (see README.md here)

Each workflow references the standard SD1.5 checkpoint ``v1-5-pruned-emaonly.safetensors`` and starts with no
learned solver (``(none) DPM-Solver++(3M)``), so it runs as shipped; its note says how to train a solver and pick it.
The file names are what ComfyUI's template browser shows as the card title, so they are short and human. Nodes are
placed so that no two overlap (title bar included). Needs only the standard library.
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
#: The solver dropdown's no-solver entry (the nodes' default): the workflows run before any solver is trained.
SOLVER = "(none) DPM-Solver++(3M)"
#: What ``python -m trainer --ckpt CHECKPOINT --nfe NFE`` writes into ``models/gas_solvers``.
TRAINED_SOLVER = "v1-5-pruned-emaonly-nfe4-gas.safetensors"
#: The LoRA the training example names (the user picks their own).
LORA = "my_lora.safetensors"
POSITIVE = "a photograph of a red fox in a snowy forest, golden hour, detailed fur"
NEGATIVE = ""
SEED = 42
CFG = 7.5
NFE = 4
TEACHER_STEPS = 30
#: The training recipe of the training example (GAS Train Solver's default; learning_rate 0 takes its rate).
RECIPE = "tuned"
SIZE = 512
#: LiteGraph's node mode for a bypassed node.
BYPASSED = 4


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
    mode: int = 0  # 0 runs, 4 bypassed (the frontend passes its inputs on)


class Graph:
    """A UI-format workflow under construction: nodes with sockets, links between them."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.links: list[list[Any]] = []  # [link_id, origin_id, origin_slot, target_id, target_slot, type]

    def add(self, type_: str, pos: tuple[int, int], size: tuple[int, int], widgets: list[Any] | None = None,
            inputs: list[tuple[str, str]] | None = None, outputs: list[tuple[str, str]] | None = None,
            title: str | None = None, mode: int = 0) -> Node:
        node = Node(len(self.nodes) + 1, type_, pos, size, widgets or [], inputs or [], outputs or [], title, mode)
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
                "order": order, "mode": node.mode, "inputs": inputs, "outputs": outputs,
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


def _note(g: Graph, pos: tuple[int, int], about: str, solver_widgets: str | None = None) -> None:
    """The workflow's read-me: what it does, then (``solver_widgets``: the nodes shipped without a learned solver)
    how to get one."""
    text = about
    if solver_widgets is not None:
        text += (f"\n\n## Getting a GAS solver\n\nAs shipped, {solver_widgets} set to `{SOLVER}` (no learned "
                 "solver), so the first run works with any SD1.5 checkpoint. To use GAS, distil a solver for your "
                 "model once: inside ComfyUI with the *GAS Train Solver* template, or in a terminal, from "
                 "`ComfyUI/custom_nodes/ComfyUI-GAS`:\n\n"
                 f"`python -m trainer --ckpt {CHECKPOINT} --nfe {NFE}`\n\n"
                 f"It writes `models/gas_solvers/{TRAINED_SOLVER}`; press **R** (refresh) and pick it in the solver "
                 "dropdown.")
    g.add("MarkdownNote", pos, (440, 300), [text], title="Read me: about this workflow and its solver")


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


def _gas_pair(g: Graph, ckpt: Node, x: int, y: int, steps: int = 0) -> tuple[Node, Node]:
    """GAS Sampler above GAS Sigmas, both on ``SOLVER``; ``steps`` only counts without a learned solver."""
    sampler = g.add("GASSampler", (x, y), (320, 60), [SOLVER], outputs=[("sampler", "SAMPLER")])
    sigmas = g.add("GASSigmas", (x, y + 100), (320, 110), [SOLVER, steps, 1.0], inputs=[("model", "MODEL")],
                   outputs=[("sigmas", "SIGMAS")])
    g.link(ckpt, 0, sigmas, "model")
    return sampler, sigmas


def custom_advanced() -> Graph:
    """SD1.5 text-to-image: GAS Sampler + GAS Sigmas in SamplerCustomAdvanced."""
    g = Graph()
    ckpt, pos, neg, latent = _text_nodes(g)
    noise, guider = _shared_sampling(g, ckpt, pos, neg, 800)
    sampler, sigmas = _gas_pair(g, ckpt, 800, 270)
    decode = _advanced_branch(g, 1160, 120, ckpt, noise, guider, latent, sampler, sigmas, "SamplerCustomAdvanced")
    save = g.add("SaveImage", (1750, 120), (400, 440), ["gas_sd15"], inputs=[("images", "IMAGE")])
    g.link(decode, 0, save, "images")
    _note(g, (0, 520), (
        f"# GAS: SD1.5 in {NFE} steps\n\nGAS Sampler and GAS Sigmas must name the **same solver**: a solver only "
        "runs on the sigmas it was trained on. The negative prompt is empty, as in training."),
        "GAS Sampler and GAS Sigmas are")
    return g


def _ksampler_chain(g: Graph, type_: str, at: tuple[int, int], size: tuple[int, int], widgets: list[Any],
                    sources: tuple[Node, Node, Node, Node], ckpt: Node, prefix: str) -> None:
    """A KSampler-style node fed by (model, positive, negative, latent), then VAE Decode and Save Image to its right."""
    ks = g.add(type_, at, size, widgets,
               inputs=[("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                       ("latent_image", "LATENT")], outputs=[("LATENT", "LATENT")])
    for source, name in zip(sources, ("model", "positive", "negative", "latent_image"), strict=True):
        g.link(source, 0, ks, name)
    decode = g.add("VAEDecode", (at[0] + 360, at[1]), (210, 50), inputs=[("samples", "LATENT"), ("vae", "VAE")],
                   outputs=[("IMAGE", "IMAGE")])
    g.link(ks, 0, decode, "samples")
    g.link(ckpt, 2, decode, "vae")
    save = g.add("SaveImage", (at[0] + 600, at[1]), (400, 440), [prefix], inputs=[("images", "IMAGE")])
    g.link(decode, 0, save, "images")


def ksampler() -> Graph:
    """SD1.5 text-to-image with the one-node GAS KSampler, plus GAS Solver Info shown by Preview Any."""
    g = Graph()
    ckpt, pos, neg, latent = _text_nodes(g)
    _ksampler_chain(g, "GASKSampler", (800, 0), (320, 290), [SEED, "fixed", 0.0, SOLVER, 0, 1.0],
                    (ckpt, pos, neg, latent), ckpt, "gas_ksampler")
    info = g.add("GASSolverInfo", (800, 340), (320, 60), [SOLVER], outputs=[("info", "STRING")])
    preview = g.add("PreviewAny", (800, 450), (400, 300), [], inputs=[("source", "*")],
                    title="What the solver was trained for")
    g.link(info, 0, preview, "source")
    _note(g, (0, 520), (
        "# GAS KSampler\n\nOne node: a solver fixes the steps (steps 0 = its NFE) and cfg 0 uses the cfg it was "
        "trained for. GAS Solver Info shows what the file was trained for (model, NFE, cfg, schedule, scores)."),
        "GAS KSampler and GAS Solver Info are")
    return g


def stock_ksampler() -> Graph:
    """SD1.5 text-to-image with ComfyUI's own KSampler: GAS Model Patch, sampler 'gas', scheduler 'gas'."""
    g = Graph()
    ckpt, pos, neg, latent = _text_nodes(g)
    patch = g.add("GASModelPatch", (800, 0), (320, 80), [SOLVER], inputs=[("model", "MODEL")],
                  outputs=[("MODEL", "MODEL")])
    g.link(ckpt, 0, patch, "model")
    _ksampler_chain(g, "KSampler", (800, 130), (320, 270), [SEED, "fixed", NFE, CFG, "gas", "gas", 1.0],
                    (patch, pos, neg, latent), ckpt, "gas_stock_ksampler")
    _note(g, (0, 520), (
        "# GAS in ComfyUI's own KSampler\n\nGAS Model Patch attaches the solver to the model; in the KSampler choose "
        f"sampler **gas** and scheduler **gas** and set steps to an NFE of the solver file ({NFE}). LoRA loaders and "
        "ModelSampling nodes go before GAS Model Patch. Another step count runs the nearest learned grid resampled, "
        "as DPM-Solver++(3M) (the console says so)."),
        "GAS Model Patch is")
    return g


def compare() -> Graph:
    """GAS vs dpmpp_2m at the same NFE vs the many-step teacher, one seed, side by side."""
    g = Graph()
    ckpt, pos, neg, latent = _text_nodes(g)
    noise, guider = _shared_sampling(g, ckpt, pos, neg, 800)
    sampler, sigmas = _gas_pair(g, ckpt, 800, 270, steps=NFE)
    row = 330  # vertical distance of the three branches (a Save Image is 280 high plus its title bar)
    gas_img = _advanced_branch(g, 1160, 0, ckpt, noise, guider, latent, sampler, sigmas, f"GAS, {NFE} NFE")
    select = g.add("KSamplerSelect", (800, 520), (320, 60), ["dpmpp_2m"], outputs=[("SAMPLER", "SAMPLER")])
    few = g.add("BasicScheduler", (800, 620), (320, 110), ["karras", NFE, 1.0], inputs=[("model", "MODEL")],
                outputs=[("SIGMAS", "SIGMAS")], title=f"karras, {NFE} steps (same NFE)")
    g.link(ckpt, 0, few, "model")
    base_img = _advanced_branch(g, 1160, row, ckpt, noise, guider, latent, select, few, f"dpmpp_2m, {NFE} NFE")
    many = g.add("BasicScheduler", (800, 780), (320, 110), ["karras", TEACHER_STEPS, 1.0], inputs=[("model", "MODEL")],
                 outputs=[("SIGMAS", "SIGMAS")], title=f"karras, {TEACHER_STEPS} steps (teacher)")
    g.link(ckpt, 0, many, "model")
    teacher_img = _advanced_branch(g, 1160, 2 * row, ckpt, noise, guider, latent, select, many,
                                   f"teacher: dpmpp_2m, {TEACHER_STEPS} steps")
    for i, (img, prefix) in enumerate(((gas_img, "compare_gas"), (base_img, "compare_dpmpp_2m"),
                                       (teacher_img, "compare_teacher"))):
        save = g.add("SaveImage", (1750, row * i), (300, 280), [prefix], inputs=[("images", "IMAGE")])
        g.link(img, 0, save, "images")
    pair = g.add("ImageBatch", (2090, 0), (210, 50), inputs=[("image1", "IMAGE"), ("image2", "IMAGE")],
                 outputs=[("IMAGE", "IMAGE")])
    g.link(gas_img, 0, pair, "image1")
    g.link(base_img, 0, pair, "image2")
    trio = g.add("ImageBatch", (2090, 100), (210, 50), inputs=[("image1", "IMAGE"), ("image2", "IMAGE")],
                 outputs=[("IMAGE", "IMAGE")])
    g.link(pair, 0, trio, "image1")
    g.link(teacher_img, 0, trio, "image2")
    side = g.add("PreviewImage", (2090, 200), (620, 300), inputs=[("images", "IMAGE")],
                 title="Side by side: GAS | dpmpp_2m | teacher")
    g.link(trio, 0, side, "images")
    _note(g, (0, 520), (
        f"# GAS vs DPM-Solver++(2M) at {NFE} NFE vs the teacher\n\nOne seed, one guider, three samplers: the GAS "
        f"solver on its learned sigmas, `dpmpp_2m` + karras at the same {NFE} network evaluations, and `dpmpp_2m` at "
        f"{TEACHER_STEPS} steps as the reference. Without a solver the first branch is DPM-Solver++(3M) on {NFE} "
        "uniform GAS steps; a learned solver must have the same NFE (or set GAS Sigmas' steps to 0)."),
        "GAS Sampler and GAS Sigmas are")
    return g


def train() -> Graph:
    """Checkpoint -> LoRA (bypassed) -> GAS Train Solver -> GAS Model Patch -> KSampler (sampler and scheduler gas), in
    one queue."""
    g = Graph()
    ckpt = g.add("CheckpointLoaderSimple", (0, 120), (320, 100), [CHECKPOINT],
                 outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")])
    lora = g.add("LoraLoader", (360, 120), (320, 130), [LORA, 1.0, 1.0], inputs=[("model", "MODEL"), ("clip", "CLIP")],
                 outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP")], mode=BYPASSED)
    g.link(ckpt, 0, lora, "model")
    g.link(ckpt, 1, lora, "clip")
    trainer = g.add("GASTrainSolver", (720, 0), (360, 720),
                    ["", "", CFG, SIZE, SIZE, str(NFE), "gas", 0, SEED, "fixed", "sd15-my-lora", False,
                     0, 4, 0.0, 0, 128, 100, 0.0, 0, RECIPE],
                    inputs=[("model", "MODEL"), ("clip", "CLIP"), ("vae", "VAE")],
                    outputs=[("solver", "COMBO"), ("preview", "IMAGE"), ("report", "STRING")])
    g.link(lora, 0, trainer, "model")
    g.link(lora, 1, trainer, "clip")
    g.link(ckpt, 2, trainer, "vae")
    pos = g.add("CLIPTextEncode", (720, 780), (400, 160), [POSITIVE], inputs=[("clip", "CLIP")],
                outputs=[("CONDITIONING", "CONDITIONING")], title="Positive prompt")
    neg = g.add("CLIPTextEncode", (720, 980), (400, 120), [NEGATIVE], inputs=[("clip", "CLIP")],
                outputs=[("CONDITIONING", "CONDITIONING")], title="Negative prompt (empty, as in training)")
    latent = g.add("EmptyLatentImage", (720, 1140), (320, 110), [SIZE, SIZE, 1], outputs=[("LATENT", "LATENT")])
    g.link(lora, 1, pos, "clip")
    g.link(lora, 1, neg, "clip")
    trained = f"sd15-my-lora-nfe{NFE}-gas.safetensors"
    patch = g.add("GASModelPatch", (1160, 0), (320, 80), [trained], inputs=[("model", "MODEL"), ("solver", "COMBO")],
                  outputs=[("MODEL", "MODEL")])
    g.link(lora, 0, patch, "model")
    g.link(trainer, 0, patch, "solver")
    _ksampler_chain(g, "KSampler", (1160, 130), (320, 270), [SEED, "fixed", NFE, CFG, "gas", "gas", 1.0],
                    (patch, pos, neg, latent), ckpt, "gas_trained")
    report = g.add("PreviewAny", (1160, 640), (400, 300), [], inputs=[("source", "*")], title="Held-out scores")
    g.link(trainer, 2, report, "source")
    _note(g, (0, 300), (
        "# Train a GAS solver for your model\n\nGAS Train Solver distils a few-step solver for the model as the "
        "graph feeds it and writes it to `models/gas_solvers`; its `solver` output drives GAS Model Patch and "
        "the KSampler (sampler and scheduler `gas`) in the same queue. Cancel keeps the progress: queue again to "
        "resume. Once trained, the node's output is cached; later runs only sample.\n\nThe LoRA loader ships "
        "**bypassed** (the solver is then for the checkpoint alone): to train for checkpoint + LoRA, select it, "
        "press **Ctrl+B** and pick your LoRA."))
    return g



#: File name (the template card's title in ComfyUI) -> builder.
WORKFLOWS = {
    "GAS Sampler txt2img": custom_advanced,
    "GAS KSampler txt2img": ksampler,
    "GAS Model Patch txt2img": stock_ksampler,
    f"GAS vs dpmpp at {NFE} NFE": compare,
    "GAS Train Solver": train,
}


def render(name: str) -> str:
    """The JSON text of one workflow."""
    return json.dumps(WORKFLOWS[name]().to_json(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for name in WORKFLOWS:
        target = HERE / f"{name}.json"
        text = render(name)
        if args.check:
            if not target.is_file() or target.read_text() != text:
                stale.append(target.name)
            continue
        target.write_text(text)
    if stale:
        print("out of date: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
