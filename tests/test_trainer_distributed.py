"""torchrun with 2 processes on the CPU (gloo): the same solver as one process, a shared teacher cache with every sample
once, a rank that dies mid-run (nothing corrupt, ``--resume`` completes it), and the CLI with the same options.

Each test launches ``python -m torch.distributed.run`` (torchrun) in a subprocess with one thread per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import gas
from tests.conftest import REPO_ROOT
from tests.helpers.comfy_env import free_port
from trainer.checkpointing import load_state
from trainer.teacher import SHARD_SIZE

SCRIPT = REPO_ROOT / "tests" / "scripts" / "dist_distill.py"
#: K=1 and K=2 differ only in the order of floating-point sums (gradients averaged over two half-batches), over 12
#: Adam steps; measured differences are below 1e-6.
K_TOLERANCE = 1e-5
SOLVER_TENSORS = ("mu_logit", "t_couple", "a", "c")

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch has no torch.distributed")


def _torchrun(nproc: int, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", *args]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _distill(nproc: int, workdir: Path, mode: str, iters: int, *extra: str) -> subprocess.CompletedProcess[str]:
    for old in workdir.glob("report-*.json"):
        old.unlink()
    return _torchrun(nproc, str(SCRIPT), str(workdir), mode, str(iters), *extra)


def _reports(workdir: Path) -> list[dict[str, Any]]:
    """What each rank of the last run reported (``report-<rank>.json``), in rank order."""
    rows = [json.loads(p.read_text()) for p in workdir.glob("report-*.json")]
    return sorted(rows, key=lambda r: r["rank"])


def _solver(workdir: Path, mode: str) -> gas.GeneralizedSolver:
    return gas.load_solver(workdir / "out" / f"demo-nfe4-{mode}.safetensors")


def _max_diff(a: gas.GeneralizedSolver, b: gas.GeneralizedSolver) -> float:
    return max(float((getattr(a, k) - getattr(b, k)).detach().abs().max()) for k in SOLVER_TENSORS)


def _cache_samples(workdir: Path, *, after_a_kill: bool = False) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Every sample in the run's teacher cache, read shard by shard; fails on a damaged shard or a duplicate, and on a
    temporary shard file left behind (except ``after_a_kill``: a killed writer cannot remove its own; the next write
    removes it)."""
    from safetensors import safe_open

    (folder,) = (workdir / "cache").glob("teacher-*")
    samples: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for path in sorted(folder.glob("shard-*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            indices = f.get_tensor("indices").tolist()
            noise, lat = f.get_tensor("noise"), f.get_tensor("latents")
        assert len(set(indices)) == len(indices), f"{path.name} stores a sample twice"
        shard = int(path.stem.split("-")[1])
        assert all(i // SHARD_SIZE == shard for i in indices), f"{path.name} holds samples of another shard"
        for row, i in enumerate(indices):
            assert i not in samples
            samples[i] = (noise[row], lat[row])
    assert after_a_kill or not list(folder.glob("*.tmp*")), "a temporary shard was left behind"
    return samples


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory) -> dict[tuple[int, str], Path]:
    """The tiny GS and GAS runs (12 iterations) with 1 and with 2 processes."""
    runs = {}
    for mode in ("gs", "gas"):
        for nproc in (1, 2):
            workdir = tmp_path_factory.mktemp(f"k{nproc}-{mode}")
            done = _distill(nproc, workdir, mode, 12)
            assert done.returncode == 0, done.stderr[-3000:]
            reports = _reports(workdir)
            assert [r["rank"] for r in reports] == list(range(nproc)), done.stdout
            assert all(r["world"] == nproc and r["step_log"] == list(range(1, 13)) for r in reports)
            assert len({r["l1"] for r in reports}) == 1  # every rank returns the same scores
            runs[nproc, mode] = workdir
    return runs


@pytest.mark.parametrize("mode", ["gs", "gas"])
def test_two_processes_train_the_same_solver_as_one(one_and_two, mode):
    one, two = _solver(one_and_two[1, mode], mode), _solver(one_and_two[2, mode], mode)
    assert _max_diff(one, two) < K_TOLERANCE
    assert float(one.a.detach().abs().max()) > 1e-3  # it did learn something: the comparison is not between two zeros
    assert one.metadata["scores"]["methods"][mode.upper()]["l1"] == pytest.approx(
        two.metadata["scores"]["methods"][mode.upper()]["l1"], rel=1e-4)
    # rank 0 alone wrote the outputs, once; the finished run left no training state
    out = sorted(p.name for p in (one_and_two[2, mode] / "out").iterdir())
    assert out == [f"demo-nfe4-{mode}.{ext}" for ext in ("md", "png", "safetensors")]
    assert not (one_and_two[2, mode] / "runs" / f"demo-nfe4-{mode}" / "state.pt").exists()


def test_the_cauchy_loss_uses_the_whole_batch_median_on_every_rank(tmp_path):
    """``loss_reduce="cauchy"`` scales by the median of the global batch (gathered from the ranks), so two processes,
    each holding half of every batch, train the same solver as one."""
    runs = {}
    for nproc in (1, 2):
        workdir = tmp_path / f"k{nproc}"
        workdir.mkdir()
        done = _distill(nproc, workdir, "gs", 8, "--loss-reduce", "cauchy")
        assert done.returncode == 0, done.stderr[-3000:]
        runs[nproc] = _solver(workdir, "gs")
    assert "Cauchy-robust" in runs[1].metadata["loss"]
    assert _max_diff(runs[1], runs[2]) < K_TOLERANCE


def test_the_state_loss_read_from_the_shards_on_two_ranks_trains_the_solver_of_one_process(tmp_path):
    """With the state loss on, two ranks that read the kept trajectory from the cache's shards (as above the
    memory budget) train the solver one process trains with the trajectory in memory."""
    runs = {}
    for nproc, extra in ((1, ()), (2, ("--trajectory-from-shards",))):
        workdir = tmp_path / f"k{nproc}"
        workdir.mkdir()
        done = _distill(nproc, workdir, "gs", 8, "--state-loss", "1", *extra)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[nproc] = _solver(workdir, "gs")
    assert _max_diff(runs[1], runs[2]) < K_TOLERANCE
    plain = tmp_path / "plain"
    plain.mkdir()
    assert _distill(1, plain, "gs", 8).returncode == 0
    assert _max_diff(runs[1], _solver(plain, "gs")) > 10 * K_TOLERANCE  # the state loss was on


def test_sharded_teacher_cache_holds_every_sample_once_and_matches_one_process(one_and_two):
    one, two = _cache_samples(one_and_two[1, "gs"]), _cache_samples(one_and_two[2, "gs"])
    val = 1 << 20
    assert sorted(two) == list(range(64)) + list(range(val, val + 16))
    for i, (noise, lat) in one.items():
        assert torch.equal(two[i][0], noise)  # the noise is a pure function of the seed and the index
        torch.testing.assert_close(two[i][1], lat, rtol=1e-5, atol=1e-6)


def test_a_rank_that_dies_in_training_stops_the_job_and_resume_completes_it(one_and_two, tmp_path):
    died = _distill(2, tmp_path, "gas", 12, "--die-at", "8", "--die-rank", "1")
    assert died.returncode != 0 and "exitcode  : 17" in died.stderr  # rank 1's own exit status
    # nothing corrupt: the cache is whole, the training state is the one of iteration 5, no solver was written
    assert len(_cache_samples(tmp_path)) == 64 + 16
    assert load_state(tmp_path / "runs" / "demo-nfe4-gas" / "state.pt")["step"] == 5
    assert not (tmp_path / "out" / "demo-nfe4-gas.safetensors").exists()

    done = _distill(2, tmp_path, "gas", 12, "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    reports = _reports(tmp_path)
    assert len(reports) == 2 and all(r["step_log"] == list(range(6, 13)) for r in reports)
    assert _max_diff(_solver(tmp_path, "gas"), _solver(one_and_two[2, "gas"], "gas")) < K_TOLERANCE


def test_a_rank_that_dies_in_teacher_generation_loses_nothing_finished(one_and_two, tmp_path):
    # rank 1 dies at its 30th model call: in its second 8-sample job of the first shard (24 calls per job)
    died = _distill(2, tmp_path, "gs", 12, "--die-in-teacher", "30", "--die-rank", "1")
    assert died.returncode != 0 and "exitcode  : 17" in died.stderr
    partial = _cache_samples(tmp_path, after_a_kill=True) if list((tmp_path / "cache").glob("teacher-*")) else {}
    assert len(partial) < 64 + 16
    done = _distill(2, tmp_path, "gs", 12)  # no --resume needed: training had not started
    assert done.returncode == 0, done.stderr[-3000:]
    full = _cache_samples(tmp_path)
    assert len(full) == 64 + 16
    for i, (noise, lat) in partial.items():  # what was stored before the crash was kept as it was
        assert torch.equal(full[i][0], noise) and torch.equal(full[i][1], lat)
    assert _max_diff(_solver(tmp_path, "gs"), _solver(one_and_two[2, "gs"], "gs")) < K_TOLERANCE


def test_two_runs_filling_one_cache_at_once_lose_and_duplicate_nothing(tmp_path):
    """Two independent processes (not one torchrun job) generate overlapping samples into the same cache."""
    code = (
        "import sys\n"
        "from trainer.teacher import TeacherCache, sample_noise\n"
        "cache = TeacherCache(sys.argv[1], {'test': 'concurrent'}, (2, 4, 4))\n"
        "lo, hi = int(sys.argv[2]), int(sys.argv[3])\n"
        "def gen(idx):\n"
        "    noise = sample_noise(idx, (2, 4, 4), 7)\n"
        "    return noise, noise * 2\n"
        "noise, lat = cache.get(range(lo, hi), gen, batch=4, progress=False)\n"
        "assert (lat == 2 * noise).all()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    ranges = [(0, 160), (40, 200)]  # overlapping, over four shards
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "cache"), str(lo), str(hi)], cwd=REPO_ROOT,
                              env=env, stderr=subprocess.PIPE, text=True) for lo, hi in ranges]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    samples = _cache_samples(tmp_path)
    assert sorted(samples) == list(range(200))
    for noise, lat in samples.values():
        assert torch.equal(lat, 2 * noise)


def test_cli_under_torchrun_takes_the_same_options(tmp_path):
    tiny = ["--train-size", "16", "--val-size", "16", "--iters", "3", "--teacher-steps", "8", "--teacher-batch", "8",
            "--mode", "gs", "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"), "--run-dir",
            str(tmp_path / "r")]
    done = _torchrun(2, "-m", "trainer", "--demo", *tiny)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("| GS | 4 |") == 1  # rank 0 alone prints the table
    assert gas.load_solver(tmp_path / "o" / "demo-nfe4-gs.safetensors").metadata["mode"] == "gs"
    # a batch that two processes cannot share: one sentence, printed once, exit status 2
    bad = _torchrun(2, "-m", "trainer", "--demo", *tiny, "--batch", "3", "--overwrite")
    assert bad.returncode != 0
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--batch (3)" in errors[0] and "2" in errors[0], bad.stderr[-2000:]


def test_a_rank_that_fails_alone_does_not_wait_for_the_others(tmp_path):
    """A failure of one rank (e.g. out of memory on one GPU) ends its process without meeting the others at a barrier,
    so torchrun stops the job at once instead of waiting for the collective timeout."""
    script = tmp_path / "fail_alone.py"
    script.write_text(
        "import sys, torch\n"
        "from trainer.distributed import init_distributed, shutdown_distributed\n"
        "dist = init_distributed('cpu')\n"
        "if dist.rank == 1:\n"
        "    shutdown_distributed(all_ranks_here=False)\n"
        "    sys.exit(3)\n"
        "dist.all_reduce_sum([1.0])  # rank 0 waits in a collective rank 1 never joins\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(script)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=90)  # with a barrier in the shutdown, both ranks would wait for an hour
    except subprocess.TimeoutExpired:
        proc.terminate()  # torchrun passes SIGTERM on to its workers
        proc.communicate(timeout=60)
        pytest.fail("the job hung: the failing rank waited for the others")
    assert proc.returncode != 0 and "rank      : 1" in err, err[-2000:]
