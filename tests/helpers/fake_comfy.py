"""Just enough of ComfyUI's module surface to import and inspect the node modules without ComfyUI (CI).

:func:`fake_comfy` installs stand-ins for ``comfy_api.latest`` (``io``, ``ui``, ``ComfyExtension``),
``folder_paths``, ``comfy.samplers``, ``comfy.sample``, ``comfy.utils`` and ``latent_preview`` into ``sys.modules``,
imports the pack's node modules against them, and removes everything again afterwards. The stand-ins record what
the nodes declare (schemas, inputs, tooltips); they do not sample. The real behaviour is tested against a real
ComfyUI in tests/test_nodes_comfy_*.py.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

FAKED = ("comfy_api", "comfy_api.latest", "folder_paths", "comfy", "comfy.samplers", "comfy.sample", "comfy.utils",
         "comfy.model_management", "latent_preview")
NODE_MODULES = ("nodes.solver_folder", "nodes.sampler_function", "nodes.grid", "nodes.sampler_node",
                "nodes.sigmas_node", "nodes.ksampler_node", "nodes.info_node", "nodes.train_node", "nodes.extension")


class _Recorded:
    """Stores its constructor arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs
        self.id = args[0] if args else kwargs.get("id")
        self.tooltip = kwargs.get("tooltip")


def _io_type(name: str, io_type: str) -> type:
    return type(name, (), {"io_type": io_type, "Input": type("Input", (_Recorded,), {"io_type": io_type}),
                           "Output": type("Output", (_Recorded,), {"io_type": io_type})})


def _make_io() -> types.ModuleType:
    io = types.ModuleType("comfy_api.latest.io")

    class Schema(_Recorded):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.__dict__.update(kwargs)

    class ComfyNode:
        pass

    class NodeOutput:
        def __init__(self, *args: Any, ui: Any = None) -> None:
            self.args, self.ui = args, ui

    io.Schema, io.ComfyNode, io.NodeOutput = Schema, ComfyNode, NodeOutput
    for name, kind in (("Combo", "COMBO"), ("Int", "INT"), ("Float", "FLOAT"), ("String", "STRING"),
                       ("Model", "MODEL"), ("Conditioning", "CONDITIONING"), ("Latent", "LATENT"),
                       ("Sampler", "SAMPLER"), ("Sigmas", "SIGMAS"), ("Clip", "CLIP"), ("Vae", "VAE"),
                       ("Image", "IMAGE"), ("Boolean", "BOOLEAN")):
        setattr(io, name, _io_type(name, kind))
    io.Custom = lambda io_type: _io_type(f"Custom_{io_type}", io_type)
    io.Hidden = types.SimpleNamespace(prompt="PROMPT", unique_id="UNIQUE_ID")
    return io


def _make_folder_paths(models_dir: str) -> types.ModuleType:
    fp = types.ModuleType("folder_paths")
    fp.models_dir = models_dir
    fp.folder_names_and_paths = {}

    def get_filename_list(name: str) -> list[str]:
        folders, exts = fp.folder_names_and_paths[name]
        found = set()
        for folder in folders:
            if os.path.isdir(folder):
                for entry in os.listdir(folder):
                    if not exts or os.path.splitext(entry)[1].lower() in exts:
                        found.add(entry)
        return sorted(found)

    def get_full_path(name: str, filename: str) -> str | None:
        for folder in fp.folder_names_and_paths.get(name, ([], set()))[0]:
            path = os.path.join(folder, filename)
            if os.path.isfile(path):
                return path
        return None

    fp.get_filename_list, fp.get_full_path = get_filename_list, get_full_path
    return fp


def _make_modules(models_dir: str) -> dict[str, types.ModuleType]:
    api = types.ModuleType("comfy_api")
    latest = types.ModuleType("comfy_api.latest")
    latest.io = _make_io()
    latest.ui = types.SimpleNamespace(PreviewText=lambda value: {"text": (value,)})
    latest.ComfyExtension = type("ComfyExtension", (), {})
    api.latest = latest
    comfy = types.ModuleType("comfy")
    samplers = types.ModuleType("comfy.samplers")
    samplers.KSAMPLER = type("KSAMPLER", (_Recorded,), {})
    comfy.samplers = samplers
    comfy.sample = types.ModuleType("comfy.sample")
    comfy.utils = types.ModuleType("comfy.utils")
    comfy.utils.PROGRESS_BAR_ENABLED = False
    comfy.model_management = types.ModuleType("comfy.model_management")
    return {"comfy_api": api, "comfy_api.latest": latest, "folder_paths": _make_folder_paths(models_dir),
            "comfy": comfy, "comfy.samplers": samplers, "comfy.sample": comfy.sample, "comfy.utils": comfy.utils,
            "comfy.model_management": comfy.model_management, "latent_preview": types.ModuleType("latent_preview")}


@contextmanager
def fake_comfy(models_dir: str) -> Iterator[dict[str, types.ModuleType]]:
    """Install the stand-ins, import the node modules, yield ``{module name: module}`` (fakes and nodes)."""
    saved = {name: sys.modules.get(name) for name in (*FAKED, *NODE_MODULES)}
    fakes = _make_modules(models_dir)
    sys.modules.update(fakes)
    for name in NODE_MODULES:
        sys.modules.pop(name, None)
    try:
        loaded = {name: importlib.import_module(name) for name in NODE_MODULES}
        yield {**fakes, **loaded}
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        package = sys.modules.get("nodes")
        for name in NODE_MODULES:
            if package is not None and hasattr(package, name.split(".")[1]):
                delattr(package, name.split(".")[1])
