"""Test utilities for running against a real ComfyUI checkout.

Everything here is driven by the environment variable ``COMFYUI_PATH`` (the root of a ComfyUI checkout: the folder
holding ``main.py``, ``nodes.py``, ``folder_paths.py`` and ``comfy/``). Without it, or when it points elsewhere,
:func:`require_comfyui` skips the calling test with a reason, so the suite still passes on a machine without ComfyUI.

Two ways to use ComfyUI:

* :func:`import_comfy_in_process` imports ComfyUI's modules into the current interpreter (CPU mode when there is no
  CUDA). ComfyUI's root goes first on ``sys.path``, because this pack's ``nodes/`` package would otherwise shadow
  ComfyUI's ``nodes.py``. It changes the interpreter for good, so prefer it in a subprocess or a dedicated session.
* :class:`ComfyServer` starts ``python main.py`` as a subprocess on 127.0.0.1 with a throw-away base directory
  (custom_nodes, models, input, output, temp, user, database), links or copies a node pack into its custom_nodes,
  and talks to it over HTTP with the standard library only.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import pytest

ENV_VAR = "COMFYUI_PATH"
SKIP_UNSET = f"{ENV_VAR} not set: real-ComfyUI tests skipped"

_CHECKOUT_MARKERS = ("main.py", "nodes.py", "folder_paths.py", "comfy/sd.py")
#: Names left out when a pack is copied into a server's custom_nodes: VCS and caches, virtual environments and build
#: outputs (CI creates .venv inside the checkout), and model files (a test writes the solvers it needs itself).
COPY_IGNORE = (".git", "__pycache__", ".pytest_cache", ".ruff_cache", "*.pyc", ".venv", "venv", "*.egg-info",
               "build", "dist", "runs", "gas_cache", ".gl", ".whl", "*.safetensors", "*.ckpt", "*.pt")
# Top-level names of ComfyUI's root that must resolve to ComfyUI's own files (not this pack's nodes/ etc.).
_COMFY_TOP_LEVEL = ("nodes", "utils", "folder_paths", "comfy", "comfy_extras", "comfy_api", "comfy_execution", "app")


# --------------------------------------------------------------------------------------------------------------------
# Locating ComfyUI
# --------------------------------------------------------------------------------------------------------------------


def is_comfyui_checkout(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` looks like the root of a ComfyUI checkout."""
    root = Path(path)
    return all((root / marker).is_file() for marker in _CHECKOUT_MARKERS)


def comfyui_path() -> Path | None:
    """The ComfyUI root named by ``COMFYUI_PATH``, resolved, or None when unset or not a ComfyUI checkout."""
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return None
    root = Path(value).expanduser().resolve()
    return root if is_comfyui_checkout(root) else None


_require_calls = 0


def require_comfyui_calls() -> int:
    """How many times :func:`require_comfyui` was called in this process (tests/helpers/comfy_accounting.py uses it
    to tell which tests need a real ComfyUI)."""
    return _require_calls


def require_comfyui() -> Path:
    """Return the ComfyUI root from ``COMFYUI_PATH``, or skip the calling test (or fixture) with the reason why."""
    global _require_calls
    _require_calls += 1
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        pytest.skip(SKIP_UNSET)
    root = comfyui_path()
    if root is None:
        missing = [m for m in _CHECKOUT_MARKERS if not (Path(value).expanduser() / m).is_file()]
        pytest.skip(
            f"{ENV_VAR}={value} is not a ComfyUI checkout (missing {', '.join(missing)}): real-ComfyUI tests skipped"
        )
    return root


# --------------------------------------------------------------------------------------------------------------------
# In-process import
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComfyModules:
    """The ComfyUI modules a test or the trainer usually needs, imported from one checkout."""

    root: Path
    args: Any  # comfy.cli_args.args (argparse.Namespace)
    model_management: ModuleType
    folder_paths: ModuleType
    sd: ModuleType
    samplers: ModuleType
    sample: ModuleType
    model_sampling: ModuleType
    utils: ModuleType
    nodes: ModuleType


def _module_root(module: ModuleType) -> Path | None:
    """Directory a top-level module or package was imported from (None for builtins).

    ComfyUI's ``comfy``, ``comfy_extras``, ``comfy_api`` and ``comfy_execution`` are namespace packages (no
    ``__init__.py``), so their location comes from ``__path__``.
    """
    file = getattr(module, "__file__", None)
    if file:
        path = Path(file).resolve()
        return path.parent.parent if path.name == "__init__.py" else path.parent
    portions = list(getattr(module, "__path__", None) or [])
    return Path(portions[0]).resolve().parent if portions else None


def _evict_shadowing_modules(root: Path) -> None:
    """Drop already-imported top-level modules that shadow ComfyUI's (e.g. this pack's ``nodes`` package).

    ``comfy`` or ``folder_paths`` already imported from a *different* ComfyUI cannot be swapped safely: that raises.
    """
    for name in _COMFY_TOP_LEVEL:
        module = sys.modules.get(name)
        if module is None:
            continue
        origin = _module_root(module)
        if origin == root:
            continue
        if name in ("comfy", "folder_paths") and origin is not None and is_comfyui_checkout(origin):
            raise RuntimeError(f"ComfyUI is already imported from {origin}; cannot switch to {root} in this process")
        warnings.warn(f"evicting module {name!r} (from {origin}) that shadows ComfyUI's", RuntimeWarning, stacklevel=3)
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


def _redirect_writes(folder_paths: ModuleType) -> None:
    """Point ``folder_paths``' output, temp and user folders at a new temporary folder, removed at exit."""
    scratch = Path(tempfile.mkdtemp(prefix="gas-comfy-inprocess-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    for name in ("output", "temp", "user"):
        (scratch / name).mkdir()
        getattr(folder_paths, f"set_{name}_directory")(str(scratch / name))


def import_comfy_in_process(
    comfy_root: str | os.PathLike[str],
    base_directory: str | os.PathLike[str] | None = None,
    cpu: bool | None = None,
) -> ComfyModules:
    """Import ComfyUI from ``comfy_root`` into this interpreter and return its main modules.

    * ComfyUI's root is put first on ``sys.path``; modules shadowing ComfyUI's top-level names are evicted.
    * Command-line parsing stays off (``comfy.cli_args`` parses ``[]``), so pytest's own arguments are ignored.
    * ``cpu``: force ``args.cpu`` (None: only when CUDA is unavailable). It must be set before
      ``comfy.model_management`` is first imported, which is done here; it has no effect afterwards.
    * ``base_directory``: ComfyUI's ``--base-directory`` (models/, input/, output/, ... live there). It only takes
      effect if ``folder_paths`` has not been imported yet; a different one afterwards raises RuntimeError.
      Without one, ComfyUI's output, temp and user folders (inside its own tree by default) are pointed at a
      throw-away folder removed at exit, so that a read-only ComfyUI works and nothing is written into it.
    * No ``__pycache__`` is written from now on in this interpreter (``sys.dont_write_bytecode``), for the same reason.
    * ComfyUI's root holds a regular ``tests`` package: import this repository's ``tests.*`` modules *before* calling
      this, or ``tests`` resolves to ComfyUI's (this repository's ``tests`` is a namespace package).
    """
    root = Path(comfy_root).resolve()
    if not is_comfyui_checkout(root):
        raise FileNotFoundError(f"{root} is not a ComfyUI checkout")
    sys.dont_write_bytecode = True
    first_import = "folder_paths" not in sys.modules
    if str(root) in sys.path:
        sys.path.remove(str(root))
    sys.path.insert(0, str(root))
    _evict_shadowing_modules(root)

    import torch

    cli_args = importlib.import_module("comfy.cli_args")
    args = cli_args.args
    if cpu is None:
        cpu = not torch.cuda.is_available()
    if cpu:
        args.cpu = True
    if base_directory is not None:
        base = str(Path(base_directory).resolve())
        loaded = sys.modules.get("folder_paths")
        if loaded is None:
            args.base_directory = base
        elif os.path.normcase(loaded.base_path) != os.path.normcase(base):
            raise RuntimeError(f"folder_paths already uses base directory {loaded.base_path}, not {base}")

    folder_paths = importlib.import_module("folder_paths")
    if first_import and base_directory is None:
        _redirect_writes(folder_paths)
    return ComfyModules(
        root=root,
        args=args,
        model_management=importlib.import_module("comfy.model_management"),
        folder_paths=folder_paths,
        sd=importlib.import_module("comfy.sd"),
        samplers=importlib.import_module("comfy.samplers"),
        sample=importlib.import_module("comfy.sample"),
        model_sampling=importlib.import_module("comfy.model_sampling"),
        utils=importlib.import_module("comfy.utils"),
        nodes=importlib.import_module("nodes"),
    )


# --------------------------------------------------------------------------------------------------------------------
# API-format graphs
# --------------------------------------------------------------------------------------------------------------------


def txt2img_graph(
    ckpt_name: str,
    *,
    positive: str = "a photo of a cat",
    negative: str = "blurry",
    width: int = 64,
    height: int = 64,
    steps: int = 2,
    cfg: float = 7.0,
    sampler_name: str = "euler",
    scheduler: str = "normal",
    seed: int = 0,
    filename_prefix: str = "gas_test",
) -> dict[str, dict[str, Any]]:
    """API-format graph: CheckpointLoaderSimple -> CLIPTextEncode x2 -> EmptyLatentImage -> KSampler -> VAEDecode ->
    SaveImage. Node ids: "1" loader, "2"/"3" positive/negative, "4" latent, "5" KSampler, "6" decode, "7" save."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "positive": ["2", 0],
                "negative": ["3", 0],
                "latent_image": ["4", 0],
                "seed": seed,
                "steps": steps,
                "cfg": cfg,
                "sampler_name": sampler_name,
                "scheduler": scheduler,
                "denoise": 1.0,
            },
        },
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": filename_prefix}},
    }


# --------------------------------------------------------------------------------------------------------------------
# ComfyUI server subprocess
# --------------------------------------------------------------------------------------------------------------------


class ComfyServerError(RuntimeError):
    """The server did not start, rejected a prompt, or a prompt failed or timed out."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def history_error(entry: dict[str, Any]) -> str | None:
    """The failure text of a /history entry (exception type, message, node and traceback), or None if it succeeded."""
    status = entry.get("status") or {}
    if status.get("status_str") != "error":
        return None
    lines = ["ComfyUI prompt failed"]
    for message in status.get("messages", []):
        event, data = message[0], message[1]
        if event == "execution_error":
            lines.append(
                f"node {data.get('node_id')} ({data.get('node_type')}): "
                f"{data.get('exception_type')}: {data.get('exception_message')}"
            )
            lines.extend(line.rstrip("\n") for line in data.get("traceback", []))
        elif event == "execution_interrupted":
            lines.append(f"interrupted at node {data.get('node_id')} ({data.get('node_type')})")
    return "\n".join(lines)


class ComfyServer:
    """A ComfyUI server subprocess with its own throw-away base directory, used as a context manager.

    Layout of ``base_dir``: ``custom_nodes/<pack_name>`` (a symlink to, or copy of, ``pack_dir``), ``models/...``,
    ``input/``, ``output/``, ``temp/``, ``user/`` (with the sqlite database), and ``comfyui.log`` (stdout + stderr).
    Nothing is written into the ComfyUI checkout except Python's ``__pycache__``.

    Example::

        with ComfyServer(require_comfyui(), pack_dir, checkpoints=[ckpt]) as server:
            entry = server.wait(server.post_prompt(txt2img_graph(ckpt.name)))
            images = server.output_files(entry)
    """

    def __init__(
        self,
        comfy_root: str | os.PathLike[str],
        pack_dir: str | os.PathLike[str] | None = None,
        *,
        pack_name: str | None = None,
        copy_pack: bool = False,
        checkpoints: Iterable[str | os.PathLike[str]] = (),
        base_dir: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        python: str = sys.executable,
        startup_timeout: float = 120.0,
    ) -> None:
        """Prepare (but do not start) a server.

        * ``pack_dir``: node pack folder to install under custom_nodes as ``pack_name`` (default: its folder name);
          symlinked, or copied without the names in ``COPY_IGNORE`` when ``copy_pack``.
        * ``checkpoints``: files linked into ``models/checkpoints`` (symlink, falling back to a copy).
        * ``base_dir``: an existing folder to use (kept afterwards); default: a temporary one, removed on exit.
        * ``extra_args``: more ``main.py`` arguments, e.g. ``["--verbose", "DEBUG"]``.
        * ``env``: extra environment variables for the server, e.g. ``{"OMP_NUM_THREADS": "1"}`` (steadier CPU timings
          when other processes share the cores).
        """
        self.comfy_root = Path(comfy_root).resolve()
        self.pack_dir = Path(pack_dir).resolve() if pack_dir is not None else None
        self.pack_name = pack_name or (self.pack_dir.name if self.pack_dir else None)
        self.copy_pack = copy_pack
        self.checkpoints = [Path(c).resolve() for c in checkpoints]
        self._own_base = base_dir is None
        self.base_dir = Path(base_dir).resolve() if base_dir is not None else None
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.python = python
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None
        self._last_log = ""

    # -- paths -------------------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL of the running server."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def output_dir(self) -> Path:
        """ComfyUI's output directory (SaveImage writes here)."""
        return self._base() / "output"

    @property
    def models_dir(self) -> Path:
        """``models/`` of the base directory (checkpoints, and any other model folder)."""
        return self._base() / "models"

    @property
    def log_path(self) -> Path:
        """File receiving the server's stdout and stderr."""
        return self._base() / "comfyui.log"

    def _base(self) -> Path:
        if self.base_dir is None:
            raise ComfyServerError("server base directory not prepared yet (use the context manager or start())")
        return self.base_dir

    # -- lifecycle ---------------------------------------------------------------------------------------------------

    def __enter__(self) -> ComfyServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _prepare_base_dir(self) -> None:
        """Create the base directory tree, install the pack and link the checkpoints."""
        if self.base_dir is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix="gas-comfy-"))
        for sub in ("custom_nodes", "models/checkpoints", "input", "output", "temp", "user"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        if self.pack_dir is not None:
            target = self.base_dir / "custom_nodes" / str(self.pack_name)
            if target.is_symlink() or target.is_file():
                target.unlink()
            elif target.exists():
                shutil.rmtree(target)
            if self.copy_pack:
                ignore = shutil.ignore_patterns(*COPY_IGNORE)
                shutil.copytree(self.pack_dir, target, ignore=ignore)
            else:
                target.symlink_to(self.pack_dir, target_is_directory=True)
        for ckpt in self.checkpoints:
            link = self.base_dir / "models" / "checkpoints" / ckpt.name
            if link.exists() or link.is_symlink():
                link.unlink()
            try:
                link.symlink_to(ckpt)
            except OSError:
                shutil.copy2(ckpt, link)

    def command(self) -> list[str]:
        """The ``main.py`` command line (CPU, loopback only, no browser, no API nodes, everything under base_dir)."""
        base = self._base()
        return [
            self.python,
            "main.py",
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-auto-launch",
            "--disable-api-nodes",
            "--base-directory",
            str(base),
            "--output-directory",
            str(base / "output"),
            "--input-directory",
            str(base / "input"),
            "--temp-directory",
            str(base),  # ComfyUI appends "temp"
            "--user-directory",
            str(base / "user"),
            "--database-url",
            f"sqlite:///{base / 'user' / 'comfyui.db'}",  # default is <ComfyUI root>/user/comfyui.db
            *self.extra_args,
        ]

    def start(self) -> None:
        """Prepare the base directory, start ``main.py`` and wait until ``/object_info`` answers."""
        if self.process is not None:
            raise ComfyServerError("server already started")
        self._prepare_base_dir()
        self.port = free_port()
        env = dict(os.environ)
        # no __pycache__ inside ComfyUI's folder, which may be read-only
        env.update({"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1",
                    **self.extra_env})
        self._log_file = open(self.log_path, "wb")  # closed in stop()
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.comfy_root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_until_ready(self) -> None:
        """Poll ``/object_info`` until it answers; fail with the log tail on exit or timeout."""
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ComfyServerError(
                    f"ComfyUI exited with code {self.process.returncode} during startup\n{self.log_tail()}"
                )
            try:
                self._request("GET", "/object_info", timeout=10.0)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.25)
        raise ComfyServerError(
            f"ComfyUI did not answer /object_info within {self.startup_timeout:.0f} s\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Stop the server (terminate, then kill after 10 s), close the log, remove a temporary base directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
            self._last_log = self.log_path.read_text(errors="replace")
        if self._own_base and self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None

    # -- logs --------------------------------------------------------------------------------------------------------

    def log_text(self) -> str:
        """Everything the server printed so far (kept after stop() even when the base directory is removed)."""
        if self.base_dir is not None and self.log_path.exists():
            return self.log_path.read_text(errors="replace")
        return self._last_log

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of the server log."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- HTTP --------------------------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        """Send one request and decode the JSON answer; HTTP errors raise urllib.error.HTTPError."""
        if self.port is None:
            raise ComfyServerError("server not started")
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read().decode() or "null")

    def get_text(self, path: str, timeout: float = 30.0) -> tuple[int, str]:
        """``GET path``: (HTTP status, body as text); HTTP errors are returned, not raised."""
        if self.port is None:
            raise ComfyServerError("server not started")
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")

    def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        """``GET /object_info`` (all node types), or ``/object_info/<node_class>``: ``{class: definition}``."""
        path = "/object_info" if node_class is None else f"/object_info/{urllib.parse.quote(node_class)}"
        return self._request("GET", path)

    def post_prompt(self, api_graph: dict[str, Any], client_id: str | None = None) -> str:
        """Queue an API-format graph; return its prompt id. A graph that fails validation raises ComfyServerError."""
        body = {"prompt": api_graph, "client_id": client_id or uuid.uuid4().hex}
        try:
            answer = self._request("POST", "/prompt", body)
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")
            raise ComfyServerError(f"ComfyUI rejected the prompt (HTTP {err.code}): {detail}") from None
        return str(answer["prompt_id"])

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The ``/history`` entry of a prompt, or None while it has not finished."""
        return self._request("GET", f"/history/{urllib.parse.quote(prompt_id)}").get(prompt_id)

    def wait(self, prompt_id: str, timeout: float = 120.0, poll: float = 0.1) -> dict[str, Any]:
        """Wait for a prompt to finish and return its history entry; raise ComfyServerError with the error text if it
        failed, or with the log tail if it did not finish within ``timeout`` seconds or the server died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            if entry is not None:
                error = history_error(entry)
                if error is not None:
                    raise ComfyServerError(error)
                return entry
            if self.process is None or self.process.poll() is not None:
                raise ComfyServerError(f"ComfyUI exited while running prompt {prompt_id}\n{self.log_tail()}")
            time.sleep(poll)
        raise ComfyServerError(f"prompt {prompt_id} did not finish within {timeout:.0f} s\n{self.log_tail()}")

    def wait_for_error(self, prompt_id: str, timeout: float = 120.0, poll: float = 0.1) -> dict[str, Any]:
        """Wait for a prompt that is expected to fail; return its ``execution_error`` data (node_type,
        exception_type, exception_message, traceback). Raise ComfyServerError if it succeeds or never finishes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            if entry is not None:
                for event, data in (entry.get("status") or {}).get("messages", []):
                    if event == "execution_error":
                        return data
                raise ComfyServerError(f"prompt {prompt_id} finished without an execution error")
            if self.process is None or self.process.poll() is not None:
                raise ComfyServerError(f"ComfyUI exited while running prompt {prompt_id}\n{self.log_tail()}")
            time.sleep(poll)
        raise ComfyServerError(f"prompt {prompt_id} did not finish within {timeout:.0f} s\n{self.log_tail()}")

    def run(self, api_graph: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
        """``post_prompt`` then ``wait``: the history entry of a successful run."""
        return self.wait(self.post_prompt(api_graph), timeout=timeout)

    def output_files(self, entry: dict[str, Any], kind: str = "images") -> list[Path]:
        """Paths of the files a finished prompt saved into the output directory (e.g. SaveImage's ``images``)."""
        files = []
        for node_output in entry.get("outputs", {}).values():
            for item in node_output.get(kind, []):
                if item.get("type", "output") == "output":
                    files.append(self.output_dir / item.get("subfolder", "") / item["filename"])
        return files
