"""ComfyUI's own web frontend in headless Chromium (Selenium driving the system chromedriver), for tests and for the
pictures of the example workflows.

    python -m tests.helpers.browser --thumbnails     # retake example_workflows/*.jpg (400x300, real screenshots)
    python -m tests.helpers.browser --readme-shot    # retake docs/images/comfyui-gas-workflow.png

Both need ``COMFYUI_PATH`` (a ComfyUI checkout whose requirements, the frontend package included, are installed in
this interpreter), Chromium and chromedriver (Debian: ``apt-get install chromium chromium-driver``) and Selenium.

What this relies on in ComfyUI's frontend (1.27): ``window.app`` (its ``graph``, ``canvas`` and ``loadGraphData``),
the page's own file input ``#comfy-file-input`` (what drag-and-drop also feeds), the sidebar buttons by their labels
(Nodes, Templates), the template cards (``data-testid="template-workflow-<name>"``), the node library tree
(``.tree-node.tree-folder`` / ``.tree-leaf``) and the selection toolbox's ``info-button``.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers.paths import REPO_ROOT

EXAMPLES_DIR = REPO_ROOT / "example_workflows"
README_SHOT = REPO_ROOT / "docs" / "images" / "comfyui-gas-workflow.png"
PACK_NAME = "ComfyUI-GAS"
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DRIVER_NAMES = ("chromedriver",)
HEADLESS_FLAGS = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu")
THUMBNAIL_SIZE = (400, 300)

#: Console errors of every page load of this frontend with no custom node pack at all, offline and with a fresh user
#: directory: missing optional user files, no network for api.comfy.org, and one TypeError inside the bundle.
BASELINE_CONSOLE = tuple(re.compile(p) for p in (
    r"/user\.css - Failed to load resource",
    r"/favicon\.ico - Failed to load resource",
    r"/api/userdata\?dir=(workflows|subgraphs)",
    r"/api/userdata/comfy\.templates\.json - Failed to load resource",
    r"api\.comfy\.org",
    r"ERR_NAME_NOT_RESOLVED|ERR_INTERNET_DISCONNECTED",
    r"assets/index-[\w-]+\.js \d+:\d+ Uncaught (TypeError: Cannot read properties of undefined \(reading 'id'\))?$",
))


def find_browser() -> tuple[str, str] | str:
    """(chromium binary, chromedriver) found on PATH, or the reason why there are none (Selenium included)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    browser = next((shutil.which(n) for n in BROWSER_NAMES if shutil.which(n)), None)
    driver = next((shutil.which(n) for n in DRIVER_NAMES if shutil.which(n)), None)
    if browser is None or driver is None:
        missing = [name for name, path in (("chromium", browser), ("chromedriver", driver)) if path is None]
        return f"no {' and no '.join(missing)} on PATH (Debian: apt-get install chromium chromium-driver)"
    return browser, driver


def is_baseline(message: str) -> bool:
    """True for a console message the frontend prints without any pack (see ``BASELINE_CONSOLE``)."""
    return any(p.search(message) for p in BASELINE_CONSOLE)


@dataclass(frozen=True)
class ConsoleEntry:
    """One browser console message: ``level`` (SEVERE, WARNING, INFO, DEBUG) and its text."""

    level: str
    message: str


class ComfyPage:
    """ComfyUI's frontend in one headless Chromium tab, used as a context manager.

    The viewport is set through the DevTools protocol (``--window-size`` leaves less room to the page than asked).
    ``console`` accumulates every console message seen so far; ``shot`` saves a PNG into ``shots_dir``.
    """

    def __init__(self, url: str, shots_dir: str | os.PathLike[str] | None = None, *, width: int = 1600,
                 height: int = 1000, scale: float = 1.0) -> None:
        self.url = url
        self.shots_dir = Path(shots_dir) if shots_dir is not None else None
        self.size = (width, height, scale)
        self.console: list[ConsoleEntry] = []
        self.driver: Any = None

    def __enter__(self) -> ComfyPage:
        found = find_browser()
        if isinstance(found, str):
            raise RuntimeError(found)
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = found[0]
        for flag in HEADLESS_FLAGS:
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(options=options, service=Service(found[1]))
        self.resize(*self.size)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.driver is not None:
            self.driver.quit()
            self.driver = None

    # -- basics ------------------------------------------------------------------------------------------------------

    def resize(self, width: int, height: int, scale: float = 1.0) -> None:
        """The page's viewport in CSS pixels, and the device pixel ratio of screenshots."""
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                    {"width": width, "height": height, "deviceScaleFactor": scale, "mobile": False})

    def js(self, script: str, *args: Any) -> Any:
        """Run a script in the page (``arguments[i]`` are ``args``) and return its value."""
        return self.driver.execute_script(script, *args)

    def js_await(self, body: str, *args: Any, timeout: float = 60.0) -> Any:
        """Run the body of an async function (``args`` as ``args[i]``) and return what it resolves to; a rejection
        raises RuntimeError with its text."""
        self.driver.set_script_timeout(timeout)
        result = self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1]; const args = [...arguments].slice(0, -1);"
            f"(async () => {{ {body} }})().then(v => done({{ok: v ?? null}}), e => done({{error: String(e)}}));",
            *args)
        if "error" in result:
            raise RuntimeError(f"page script failed: {result['error']}")
        return result["ok"]

    def wait_for(self, script: str, what: str, timeout: float = 60.0, *args: Any) -> Any:
        """Poll a script until it returns something truthy; return that, or raise TimeoutError naming ``what``."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(script, *args)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")
            time.sleep(0.2)

    def read_console(self) -> list[ConsoleEntry]:
        """The console messages since the last call (also appended to ``console``)."""
        fresh = [ConsoleEntry(e["level"], e["message"]) for e in self.driver.get_log("browser")]
        self.console.extend(fresh)
        return fresh

    def new_errors(self) -> list[str]:
        """Console errors since the last read that are not in the no-pack baseline."""
        return [e.message for e in self.read_console() if e.level == "SEVERE" and not is_baseline(e.message)]

    def shot(self, name: str) -> Path | None:
        """Save a screenshot of the page as ``<shots_dir>/<name>.png`` (nothing without a shots_dir)."""
        if self.shots_dir is None:
            return None
        self.shots_dir.mkdir(parents=True, exist_ok=True)
        path = self.shots_dir / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def png(self) -> bytes:
        """A screenshot of the page, in device pixels."""
        return base64.b64decode(self.driver.get_screenshot_as_base64())

    # -- the app -----------------------------------------------------------------------------------------------------

    def open(self, timeout: float = 90.0) -> None:
        """Navigate to ComfyUI and wait until the app, its graph and its canvas exist and the first workflow tab is
        open; then close the template browser if it opened by itself."""
        self.driver.get(self.url)
        self.wait_for("return !!(window.app && app.graph && app.canvas && document.querySelector('#comfy-file-input'))"
                      " && !!document.querySelector('.side-tool-bar-container')", "the ComfyUI app loading", timeout)
        time.sleep(1.0)  # the first workflow tab and the dialogs the app opens on its own
        self.close_dialogs()

    def close_dialogs(self) -> None:
        """Close every open dialog (Escape)."""
        from selenium.webdriver.common.keys import Keys

        for _ in range(3):
            if not self.js("return document.querySelectorAll('.p-dialog').length"):
                return
            self.driver.find_element("css selector", "body").send_keys(Keys.ESCAPE)
            time.sleep(0.3)

    def dialogs(self) -> list[str]:
        """The text of every open dialog (a missing-node or error dialog shows up here)."""
        return self.js("return [...document.querySelectorAll('.p-dialog')].map(d => d.innerText)")

    def click_text(self, text: str, selector: str = "button, [role=button], li, span, div") -> None:
        """Click the first visible element of ``selector`` whose own text is ``text`` (as a user clicks a label)."""
        element = self.wait_for(
            "return [...document.querySelectorAll(arguments[0])].find(e => e.offsetParent !== null"
            " && [...e.childNodes].some(c => c.nodeType === 3 && c.textContent.trim() === arguments[1]))",
            f"an element labelled {text!r}", 15.0, selector, text)
        element.click()

    def click_css(self, selector: str) -> None:
        """Click the first visible element matching a CSS selector, once there is one (a DOM click when the pointer
        cannot reach it, e.g. while a toolbox fades in)."""
        from selenium.common.exceptions import ElementClickInterceptedException, ElementNotInteractableException

        element = self.wait_for("return [...document.querySelectorAll(arguments[0])].find(e => e.offsetParent)",
                                f"an element {selector!r}", 15.0, selector)
        try:
            element.click()
        except (ElementNotInteractableException, ElementClickInterceptedException):
            self.js("arguments[0].click()", element)

    def sidebar(self, label: str) -> None:
        """Open a sidebar tab (Nodes, Models, Workflows, Templates, Queue) by its label, unless it is open."""
        self.click_text(label, ".side-tool-bar-container *")
        time.sleep(0.8)

    def expand_library(self, path: list[str]) -> None:
        """Open the node library's folders along ``path`` (e.g. ``["sampling", "custom_sampling", "gas"]``)."""
        for depth in range(len(path)):
            item = self.wait_for("""
                let scope = document.querySelector('.side-bar-panel');
                for (const part of arguments[0]) {
                    const items = [...scope.querySelectorAll('li[role=treeitem]')].filter(li =>
                        li.querySelector(':scope > .p-tree-node-content .tree-folder .node-label')?.innerText.trim()
                        === part);
                    if (!items.length) return null;
                    scope = items[0];
                }
                return scope;""", f"library folder {'/'.join(path[:depth + 1])}", 15.0, path[:depth + 1])
            if item.get_attribute("aria-expanded") != "true":
                item.find_element("css selector", ".p-tree-node-content").click()
                time.sleep(0.3)

    def library_leaves(self, path: list[str]) -> list[str]:
        """The node names shown in an opened node library folder."""
        return self.js("""
            let scope = document.querySelector('.side-bar-panel');
            for (const part of arguments[0]) {
                scope = [...scope.querySelectorAll('li[role=treeitem]')].find(li =>
                    li.querySelector(':scope > .p-tree-node-content .tree-folder .node-label')?.innerText.trim()
                    === part);
            }
            return [...scope.querySelectorAll(':scope > ul > li .tree-leaf .node-label')].map(e => e.innerText.trim());
            """, path)

    def click_canvas(self, x: float, y: float) -> None:
        """Click the canvas at a point in canvas (graph) coordinates."""
        from selenium.webdriver.common.action_chains import ActionChains

        left, top = self.js("""
            for (let e = app.canvas.canvas; e; e = e.parentElement) { e.scrollTop = 0; e.scrollLeft = 0; }
            const [x, y] = app.canvas.ds.convertOffsetToCanvas([arguments[0], arguments[1]]);
            const r = app.canvas.canvas.getBoundingClientRect(); return [r.left + x, r.top + y];""", x, y)
        actions = ActionChains(self.driver)
        actions.w3c_actions.pointer_action.move_to_location(int(left), int(top)).click()
        actions.perform()

    def open_combo(self, node_type: str, widget: str, shot: str | None = None) -> list[str]:
        """Click a node's combo widget as a user does and return the entries of the menu it opens (screenshot
        ``shot`` while it is open, then closed)."""
        x, y = self.js("""
            const n = app.graph._nodes.find(n => n.type === arguments[0]);
            const w = n.widgets.find(w => w.name === arguments[1]);
            return [n.pos[0] + n.size[0] / 2, n.pos[1] + (w.last_y ?? w.y) + 10];""", node_type, widget)
        self.click_canvas(x, y)
        entries = self.wait_for(
            "const m = [...document.querySelectorAll('.litecontextmenu .litemenu-entry')];"
            "return m.length && m.map(e => e.innerText.trim())", f"the {widget} menu of {node_type}", 10.0)
        if shot:
            self.shot(shot)
        self.close_menus()
        return entries

    def close_menus(self) -> None:
        """Close LiteGraph's context menus."""
        self.js("document.querySelectorAll('.litecontextmenu').forEach(m => m.close ? m.close() : m.remove())")

    def load_workflow(self, path: str | os.PathLike[str], timeout: float = 60.0) -> int:
        """Load a workflow file through the page's own file input (what dropping the file does); return the number
        of nodes on the canvas once they are all there."""
        expected = len(json.loads(Path(path).read_text())["nodes"])
        self.driver.find_element("css selector", "#comfy-file-input").send_keys(str(Path(path).resolve()))
        self.wait_for("return app.graph._nodes.length === arguments[0] && app.graph._nodes.length", f"loading {path}",
                      timeout, expected)
        time.sleep(0.5)
        return expected

    def node_boxes(self) -> dict[str, tuple[float, float, float, float]]:
        """``"<id> <title>"`` -> (left, top, right, bottom) of every node as the frontend draws it (title included)."""
        boxes = self.js("return app.graph._nodes.map(n => [n.id + ' ' + n.title, Array.from(n.getBounding())])")
        return {name: (b[0], b[1], b[0] + b[2], b[1] + b[3]) for name, b in boxes}

    def frame(self, node_types: Callable[[str], bool] | None = None, *, padding: float = 20.0,
              max_scale: float = 1.0, min_scale: float = 0.2) -> None:
        """Zoom and pan the canvas so that the nodes whose type passes ``node_types`` (all by default) fill the
        visible canvas, at most at ``max_scale``; the canvas is then redrawn."""
        types = self.js("return app.graph._nodes.map(n => n.type)")
        wanted = [t for t in types if node_types is None or node_types(t)] or types
        self.js("""
            const [wanted, padding, maxScale, minScale] = arguments;
            const nodes = app.graph._nodes.filter(n => wanted.includes(n.type));
            const b = nodes.map(n => n.getBounding());
            const left = Math.min(...b.map(r => r[0])) - padding, top = Math.min(...b.map(r => r[1])) - padding;
            const right = Math.max(...b.map(r => r[0] + r[2])) + padding;
            const bottom = Math.max(...b.map(r => r[1] + r[3])) + padding;
            const c = app.canvas.canvas.getBoundingClientRect();
            const panel = document.querySelector('.side-bar-panel')?.getBoundingClientRect();
            const x0 = panel && panel.width ? Math.max(c.left, panel.right) : c.left;  // a sidebar covers the canvas
            const width = c.right - x0, height = c.height;
            const scale = Math.max(minScale, Math.min(maxScale, width / (right - left), height / (bottom - top)));
            app.canvas.ds.scale = scale;
            app.canvas.ds.offset = [(x0 - c.left + width / 2) / scale - (left + right) / 2,
                                    height / 2 / scale - (top + bottom) / 2];
            app.canvas.setDirty(true, true);
            app.canvas.draw(true, true);
        """, wanted, padding, max_scale, min_scale)
        time.sleep(0.5)

    def set_widget(self, node_type: str, widget: str, value: Any) -> None:
        """Set a widget of every node of a type (what picking a value in the widget does)."""
        done = self.js("""
            const nodes = app.graph._nodes.filter(n => n.type === arguments[0]);
            for (const n of nodes) { const w = n.widgets.find(w => w.name === arguments[1]); w.value = arguments[2];
                                     w.callback?.(w.value); }
            app.canvas.setDirty(true, true); return nodes.length;""", node_type, widget, value)
        if not done:
            raise ValueError(f"no {node_type} node on the canvas")

    def hide_chrome(self) -> None:
        """Hide everything but the canvas (menus, sidebar, minimap, zoom controls, canvas statistics) for pictures."""
        self.js_await("""
            const s = app.extensionManager.setting;
            await s.set('Comfy.Minimap.Visible', false); await s.set('Comfy.Graph.CanvasInfo', false);
            const style = document.createElement('style');
            style.textContent = '.side-tool-bar-container, .comfyui-body-top, .comfyui-body-left, .actionbar, '
              + '.graph-canvas-menu, .p-toast, .selection-toolbox, .workflow-tabs-container, .comfyui-menu, '
              + '[class*=minimap], .graph-canvas-panel .p-buttongroup { display: none !important; }';
            document.head.appendChild(style);
            app.canvas.deselectAll?.(); app.canvas.setDirty(true, true);""")
        time.sleep(0.5)


@contextmanager
def comfy_with_pack(comfy_root: str | os.PathLike[str], work: Path, solvers: dict[str, Any] | None = None
                    ) -> Iterator[Any]:
    """A ComfyUI server with only this pack (copied in as ``ComfyUI-GAS``) and the tiny SD1.5 checkpoint (written into
    ``work``); ``solvers`` maps file names to writers ``f(path)`` that create them in ``models/gas_solvers``."""
    from tests.helpers.comfy_env import ComfyServer
    from tests.helpers.tiny_checkpoints import write_tiny_sd15

    ckpt = write_tiny_sd15(work / "tiny_sd15.safetensors")
    server = ComfyServer(comfy_root, REPO_ROOT, pack_name=PACK_NAME, copy_pack=True, checkpoints=[ckpt],
                         env={"OMP_NUM_THREADS": "1"})
    with server:
        for name, write in (solvers or {}).items():
            folder = server.models_dir / "gas_solvers"
            folder.mkdir(parents=True, exist_ok=True)
            write(folder / name)
        yield server


def is_headline(node_type: str) -> bool:
    """The nodes a thumbnail shows: the pack's own, except the read-out GAS Solver Info."""
    return node_type.startswith("GAS") and node_type != "GASSolverInfo"


def take_thumbnails(page: ComfyPage, paths: list[Path]) -> None:
    """Each workflow's ``.jpg`` beside it: the pack's nodes as ComfyUI draws them, at a zoom that stays legible on a
    256x192 template card, rendered at twice the resolution and scaled down to 400x300."""
    from PIL import Image

    page.resize(*THUMBNAIL_SIZE, 2.0)
    page.open()
    page.hide_chrome()
    for path in paths:
        page.load_workflow(path)
        page.hide_chrome()
        # the training example's trainer node is tall: it alone is the headline there
        headline = is_headline if "GASTrainSolver" not in path.read_text() else (lambda t: t == "GASTrainSolver")
        page.frame(headline, padding=12.0, max_scale=1.0, min_scale=0.75)
        with Image.open(io.BytesIO(page.png())) as image:
            image.convert("RGB").resize(THUMBNAIL_SIZE, Image.LANCZOS).save(
                path.with_suffix(".jpg"), "JPEG", quality=85, optimize=True)
        print(f"wrote {path.with_suffix('.jpg').name}")


def take_readme_shot(page: ComfyPage, path: Path) -> None:
    """The GAS KSampler example in the frontend, with the node's help page open in the sidebar."""
    from PIL import Image

    page.resize(1440, 810)
    page.open()
    page.load_workflow(EXAMPLES_DIR / "GAS KSampler txt2img.json")
    page.frame(max_scale=0.75)
    page.js("app.canvas.selectNode(app.graph._nodes.find(n => n.type === 'GASKSampler'))")
    page.click_css("[data-testid=info-button]")
    page.wait_for("return document.querySelector('.side-bar-panel')?.innerText.includes('KSampler-style')",
                  "the help page opening", 20.0)
    page.frame(max_scale=0.75)
    page.js("app.canvas.deselectAll?.(); app.canvas.setDirty(true, true)")
    time.sleep(0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(io.BytesIO(page.png())) as image:
        image.convert("RGB").quantize(colors=128).save(path, optimize=True)
    print(f"wrote {path.relative_to(REPO_ROOT)} ({path.stat().st_size // 1024} KB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Pictures of the pack in ComfyUI's frontend (headless Chromium).")
    parser.add_argument("--thumbnails", action="store_true", help="retake example_workflows/*.jpg")
    parser.add_argument("--readme-shot", action="store_true", help=f"retake {README_SHOT.relative_to(REPO_ROOT)}")
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"), help="ComfyUI checkout ($COMFYUI_PATH)")
    args = parser.parse_args(argv)
    found = find_browser()
    if isinstance(found, str) or not args.comfyui:
        print(found if isinstance(found, str) else "no ComfyUI: set COMFYUI_PATH or pass --comfyui", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gas-browser-") as work, \
            comfy_with_pack(args.comfyui, Path(work)) as server:
        if args.thumbnails:
            with ComfyPage(server.url) as page:
                take_thumbnails(page, sorted(EXAMPLES_DIR.glob("*.json")))
        if args.readme_shot:
            with ComfyPage(server.url) as page:
                take_readme_shot(page, README_SHOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
