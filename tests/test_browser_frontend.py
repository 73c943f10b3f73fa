"""The pack in ComfyUI's own web frontend, in headless Chromium, checked as a user sees it: the example workflows load
(no missing-node dialog, no console error from the pack, no node hidden under another), the template browser lists
them with their thumbnails and readable titles, the GAS nodes sit in the node library under their categories, the
solver dropdown lists models/gas_solvers, every help page opens and fits the sidebar, and an example queued from the
page shows its image.

Needs ``COMFYUI_PATH`` (with ComfyUI's requirements, the frontend package included), Chromium, chromedriver and
Selenium; skipped with the reason otherwise. Screenshots of every step go into a temporary folder (its path is printed)
or into ``$GAS_BROWSER_SHOTS``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.helpers.browser import EXAMPLES_DIR, PACK_NAME, ComfyPage, comfy_with_pack, find_browser
from tests.helpers.comfy_env import require_comfyui
from tests.helpers.solvers import write_solver
from tests.helpers.workflows import overlapping_nodes

SOLVER = "sd15-nfe4-browser-test.safetensors"
NODE_IDS = ("GASSampler", "GASSigmas", "GASKSampler", "GASSolverInfo", "GASModelPatch", "GASTrainSolver")
WORKFLOWS = sorted(EXAMPLES_DIR.glob("*.json"))


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory):
    """One server (the pack only, the tiny checkpoint, a solver in models/gas_solvers) and one page for the module."""
    root = require_comfyui()
    found = find_browser()
    if isinstance(found, str):
        pytest.skip(f"no browser for the frontend test: {found}")
    shots = Path(os.environ.get("GAS_BROWSER_SHOTS") or tmp_path_factory.mktemp("browser-shots"))
    print(f"\nbrowser screenshots: {shots}")
    work = tmp_path_factory.mktemp("browser")
    with comfy_with_pack(root, work, {SOLVER: lambda p: write_solver(p, 4, 0)}) as server, \
            ComfyPage(server.url, shots) as comfy:
        comfy.server = server
        comfy.open()
        comfy.shot("01-app-open")
        comfy.open_errors = comfy.new_errors()
        yield comfy


@pytest.fixture(autouse=True)
def calm_page(request: pytest.FixtureRequest):
    """Each test starts with no dialog or menu left open by the one before and with the console read."""
    if "page" in request.fixturenames:
        page = request.getfixturevalue("page")
        page.close_dialogs()
        page.close_menus()
        page.read_console()
    yield


def test_app_opens_without_errors_from_the_pack(page: ComfyPage) -> None:
    assert page.open_errors == []
    assert any("ComfyUI Front-end version" in e.message for e in page.console)


def test_template_browser_lists_the_workflows(page: ComfyPage) -> None:
    """Custom Nodes -> ComfyUI-GAS: one card per workflow, its thumbnail loaded, its title (the file name) whole."""
    page.sidebar("Templates")
    page.click_css(f"li[aria-label='{PACK_NAME}']")
    cards_js = """
        return [...document.querySelectorAll('[data-testid^="template-workflow-"]')].map(c => {
            const t = c.querySelector('h3'), img = c.querySelector('img');
            return {name: c.dataset.testid.slice('template-workflow-'.length), image: img?.naturalWidth || 0,
                    title: t.innerText, whole: t.scrollWidth <= t.clientWidth && t.scrollHeight <= t.clientHeight};
        });"""
    try:
        page.wait_for(f"const cards = (() => {{ {cards_js} }})(); return cards.length && cards.every(c => c.image);",
                      "the pack's template cards with their thumbnails", 20.0)
    except TimeoutError:
        pass  # the assertions below say which card lacks what
    cards = page.js(cards_js)
    page.shot("02-template-browser")
    page.close_dialogs()
    by_name = {card["name"]: card for card in cards}
    assert sorted(by_name) == sorted(p.stem for p in WORKFLOWS)
    for name, card in by_name.items():
        assert card["image"] > 0, f"{name}: thumbnail did not load"
        assert card["title"] == name and card["whole"], f"{name}: title cut off on the card ({card['title']!r})"
    assert page.new_errors() == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_loads(page: ComfyPage, path: Path) -> None:
    """Through the page's file input: no dialog (missing nodes, errors), no console error from the pack, and no node
    drawn over another."""
    page.load_workflow(path)
    page.frame(min_scale=0.6)
    page.shot(f"03-loaded-{path.stem}")
    assert page.dialogs() == []
    assert page.new_errors() == []
    assert overlapping_nodes(page.node_boxes()) == []


def test_nodes_are_in_the_library(page: ComfyPage) -> None:
    """Each GAS node is listed under its category (the folders of /object_info's category) by its display name."""
    info = page.server.object_info()
    page.sidebar("Nodes")
    for node_id in NODE_IDS:
        path = info[node_id]["category"].split("/")
        page.expand_library(path)
        assert info[node_id]["display_name"] in page.library_leaves(path), f"{node_id} not in {'/'.join(path)}"
    page.shot("04-node-library")
    page.sidebar("Nodes")  # close it again
    assert page.new_errors() == []


def test_solver_dropdown_lists_the_solver_folder(page: ComfyPage) -> None:
    page.load_workflow(EXAMPLES_DIR / "GAS KSampler txt2img.json")
    page.frame(lambda t: t == "GASKSampler")
    entries = page.open_combo("GASKSampler", "solver", shot="05-solver-dropdown")
    assert entries[0] == "(none) DPM-Solver++(3M)" and SOLVER in entries


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_help_page_opens(page: ComfyPage, node_id: str) -> None:
    """Select the node, press the info button: the help page shows in the sidebar, fits its width, and no request for
    it fails (the frontend asks for docs/<Node>/<locale>.md first, then docs/<Node>.md)."""
    page.js("app.graph.clear(); const n = LiteGraph.createNode(arguments[0]); n.pos = [100, 100]; app.graph.add(n);"
            "app.canvas.selectNode(n); app.canvas.setDirty(true, true);", node_id)
    page.frame()
    page.click_css("[data-testid=info-button]")
    heading = page.server.object_info(node_id)[node_id]["display_name"]  # each page starts with "# <name>"
    panel = page.wait_for("""
        const p = document.querySelector('.side-bar-panel');
        const h = p && [...p.querySelectorAll('h1')].find(h => h.innerText.trim() === arguments[0]);
        if (!h) return null;
        const box = h.closest('.sidebar-content-container') || p;
        const right = box.getBoundingClientRect().right + 1;
        return {overflow: [...box.querySelectorAll('*')].filter(e => e.getBoundingClientRect().right > right)
                          .map(e => e.tagName + ' ' + e.innerText.slice(0, 40)),
                tables: box.querySelectorAll('table').length};""", f"the help page of {node_id}", 20.0, heading)
    page.shot(f"06-help-{node_id}")
    assert page.new_errors() == []
    assert panel["overflow"] == [] and panel["tables"] == 0, panel


QUEUED = [EXAMPLES_DIR / f"{name}.json"
          for name in ("GAS KSampler txt2img", "GAS Sampler txt2img", "GAS Model Patch txt2img")]


@pytest.mark.parametrize("path", QUEUED, ids=lambda p: p.stem)
def test_queued_example_shows_its_image(page: ComfyPage, path: Path) -> None:
    """The example as shipped (no learned solver), with the tiny checkpoint picked and a 64x64 latent, queued with the
    Run button: the Save Image node shows the image, with no error dialog."""
    page.close_dialogs()
    page.load_workflow(path)
    page.set_widget("CheckpointLoaderSimple", "ckpt_name", "tiny_sd15.safetensors")
    page.set_widget("EmptyLatentImage", "width", 64)
    page.set_widget("EmptyLatentImage", "height", 64)
    page.click_text("Run", ".actionbar *, .comfyui-queue-button *, button *")
    start = time.monotonic()
    result = page.wait_for("""
        const n = app.graph._nodes.find(n => n.type === 'SaveImage');
        const img = n.imgs?.[0];
        if (img?.complete && img.naturalWidth) return {size: [img.naturalWidth, img.naturalHeight]};
        const errors = [...document.querySelectorAll('.p-dialog, .p-toast-message-error')].map(e => e.innerText);
        const invalid = Object.values(app.lastNodeErrors || {}).flatMap(e => e.errors.map(x => x.details || x.message));
        return errors.length || invalid.length ? {errors, invalid} : null;""", "an image in Save Image", 150.0)
    page.frame(min_scale=0.6)
    page.shot(f"07-queued-{path.stem}")
    assert result.get("size") == [64, 64], f"after {time.monotonic() - start:.0f} s: {result}"
    assert page.dialogs() == []
    assert page.new_errors() == []
