"""Several NFEs in one solver file, trained through a real ComfyUI and sampled in it: ``python -m trainer --ckpt
<tiny SD1.5> --nfe 4,6`` generates its teacher once and writes one file, each NFE of which samples through GAS Sigmas
+ GAS Sampler and through KSampler + GAS Model Patch (``steps`` choosing the NFE); GAS Train Solver with nfe "2, 3"
writes one file too, which its ``solver`` output names.

Needs ``COMFYUI_PATH``; skipped otherwise. Tiny settings (2 iterations, 4 training samples, 64x64): the point is the
pipeline and the file, not the quality.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

import gas
from tests.conftest import REPO_ROOT
from tests.helpers.comfy_env import ComfyServer, require_comfyui
from tests.helpers.tiny_checkpoints import write_tiny_sd15
from tests.test_stock_path_comfy import (
    CKPT,
    TOL,
    base_graph,
    custom_advanced,
    gas_sigmas,
    ksampler,
    max_diff,
    patched,
    run_latents,
)
from tests.test_train_node_comfy import sampling_nodes, train_graph

FILE = "tiny_sd15-nfe4-6-gs.safetensors"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The CLI run (its stderr is the log) and a server with the checkpoint and the trained file."""
    root = require_comfyui()
    work = tmp_path_factory.mktemp("multi-nfe")
    ckpt = write_tiny_sd15(work / CKPT)
    cmd = [sys.executable, "-m", "trainer", "--ckpt", str(ckpt), "--comfyui", str(root), "--nfe", "4,6",
           "--mode", "gs", "--iters", "2", "--train-size", "4", "--val-size", "2", "--width", "64", "--height", "64",
           "--teacher-steps", "4", "--teacher-batch", "4", "--batch", "2", "--eval-every", "2", "--out",
           str(work / "out"), "--cache-dir", str(work / "cache"), "--run-dir", str(work / "runs")]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=ENV)
    assert done.returncode == 0, done.stderr[-4000:]
    with ComfyServer(root, REPO_ROOT, pack_name="ComfyUI-GAS", copy_pack=True, checkpoints=[ckpt],
                     env={"OMP_NUM_THREADS": "1"}) as server:
        solvers = server.models_dir / "gas_solvers"
        solvers.mkdir(parents=True, exist_ok=True)
        shutil.copy(work / "out" / FILE, solvers / FILE)
        yield work / "out", done.stderr, server


def test_cli_writes_one_file_from_one_teacher_generation(trained):
    out, log, _ = trained
    assert sorted(p.name for p in out.glob("*.safetensors")) == [FILE]
    solvers = gas.load_solver_set(out / FILE)
    assert solvers.nfes == (4, 6)
    for solver in solvers.solvers:
        meta = solver.metadata
        assert meta["model"]["family"] == "SD15" and meta["mode"] == "gs" and meta["iterations"] == 2
        assert meta["scores"]["heldout_samples"] == 2 and "DPM-Solver++(3M)" in meta["scores"]["methods"]
    assert log.count("teacher (train): generating") == 1 and log.count("teacher (held-out): generating") == 1
    assert "NFE 6: teacher samples reused from the cache generated for NFE 4" in log
    report = (out / FILE.replace(".safetensors", ".md")).read_text()
    assert "NFE 4: held-out scores" in report and "NFE 6: held-out scores" in report
    assert (out / FILE.replace(".safetensors", ".png")).is_file()


def test_each_nfe_samples_on_the_gas_path_and_the_stock_path(trained):
    """steps=4 and steps=6: KSampler on the GAS-Model-Patched model gives GAS Sigmas + GAS Sampler's latent, and
    the two step counts run different learned solvers (no fallback warning)."""
    _, _, server = trained
    graph = base_graph()
    model = patched(graph, solver=FILE)
    outs = []
    for steps in (4, 6):
        outs.append(ksampler(graph, model, steps=steps))
        outs.append(custom_advanced(graph, gas_sigmas(graph, FILE, steps=steps), solver=FILE))
    four_stock, four_gas, six_stock, six_gas = run_latents(server, graph, *outs)
    assert max_diff(four_stock, four_gas) <= TOL and max_diff(six_stock, six_gas) <= TOL
    assert max_diff(four_gas, six_gas) > 1e-4
    assert f"GAS solver '{FILE}' holds learned solvers for 4, 6 steps, not" not in server.log_text()


def test_train_node_with_two_nfes_writes_one_file(trained):
    """GAS Train Solver, nfe "2, 3": one file, named by its solver output, that samples in the same graph."""
    _, _, server = trained
    before = server.log_text().count("teacher (train): generating")
    graph = train_graph("node-multi", nfe="2, 3", iterations=2, train_size=4, val_size=2, teacher_steps=4)
    graph.update(sampling_nodes(["t", 0], ["c", 0]))
    entry = server.run(graph, timeout=300)
    assert server.output_files(entry)
    written = sorted(p.name for p in (server.models_dir / "gas_solvers").glob("node-multi*.safetensors"))
    assert written == ["node-multi-nfe2-3-gs.safetensors"]
    assert gas.load_solver_set(server.models_dir / "gas_solvers" / written[0]).nfes == (2, 3)
    log = server.log_text()
    assert log.count("teacher (train): generating") == before + 1
    assert "NFE 3: teacher samples reused from the cache generated for NFE 2" in log
    assert (server.models_dir / "gas_solvers" / "node-multi-nfe2-3-gs.md").is_file()
    # queued again (a setting that does not change the training, so ComfyUI runs the node again): the file is reused
    server.run(train_graph("node-multi", nfe="2, 3", iterations=2, train_size=4, val_size=2, teacher_steps=4,
                           checkpoint_every=50), timeout=300)
    assert "node-multi-nfe2-3-gs.safetensors was already trained for this model and these settings" in \
        server.log_text()
