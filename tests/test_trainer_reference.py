"""The trainer's outputs stay as they are: fixed-seed GS and GAS runs on a tiny demo problem write the recorded solver.

``tests/data/trainer_reference.json`` holds, for each run, a fingerprint of the solver file it writes (sha256 of
the tensors and of every metadata field except ``created``, ``pack_version`` and the content checksum, which change
with the clock and the release) and of the per-iteration statistics, plus the parameter values themselves. It was
recorded with the trainer as it was before its loop was split into modules; ``tests/data/trainer_state_v1_gs.pt``
is a GS training state that trainer wrote at iteration 5 (config folders relative, so no machine path is in it).

Bit-identity is a property of the code *and* of the floating-point kernels, so the runs use one thread and the
comparison is exact on the platform the reference names (torch version and CPU capability); elsewhere the
parameters must agree to 1e-6 and the fingerprint is not compared. Regenerate (only for an intended change of the
trainer's numbers, saying so in the commit) with ``python -m tests.test_trainer_reference --write``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from tests.conftest import REPO_ROOT
from tests.trainer_helpers import tiny_config, tiny_problem
from trainer.distill import distill

DATA = REPO_ROOT / "tests" / "data"
REFERENCE = DATA / "trainer_reference.json"
OLD_STATE = DATA / "trainer_state_v1_gs.pt"
#: Metadata that differs between two identical runs (clock, release) or is derived from the rest.
VOLATILE = ("created", "pack_version", "content_sha256")
#: The runs: name -> config overrides of ``tiny_config`` (kept small: the whole file runs in a few seconds).
RUNS: dict[str, dict[str, Any]] = {
    "gs": {"mode": "gs", "iters": 20, "ckpt_every": 5, "eval_every": 8},
    "gas": {"mode": "gas", "iters": 12, "ckpt_every": 5, "eval_every": 8},
}


def platform() -> dict[str, str]:
    return {"torch": torch.__version__.split("+")[0], "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def solver_fingerprint(path: Path) -> dict[str, Any]:
    """sha256 over the tensors (name, dtype, shape, bytes) and the stable metadata, and the tensors as float hex."""
    digest = hashlib.sha256()
    values: dict[str, list[str]] = {}
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        meta = handle.metadata() or {}
        for name in sorted(handle.keys()):
            tensor = handle.get_tensor(name).contiguous()
            digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes())
            values[name] = [float(v).hex() for v in tensor.double().flatten().tolist()]
    for key in sorted(meta):
        if key not in VOLATILE:
            digest.update(f"{key}={meta[key]}\n".encode())
    return {"sha256": digest.hexdigest(), "tensors": values}


def stats_digest(rows: list[tuple[int, dict[str, float]]]) -> str:
    """sha256 of every iteration's statistics (loss, distillation and adversarial parts, grad norm, held-out L1)."""
    text = "\n".join(f"{step} " + " ".join(f"{k}={float(v).hex()}" for k, v in sorted(stats.items()))
                     for step, stats in rows)
    return hashlib.sha256(text.encode()).hexdigest()


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(folder: Path, run: str, **extra: Any) -> tuple[Path, list[tuple[int, dict[str, float]]]]:
    """One reference run in ``folder``; returns the solver file and the statistics the callback saw."""
    rows: list[tuple[int, dict[str, float]]] = []
    stop: Callable[[int], bool] = extra.pop("stop", lambda step: False)

    def record(step: int, stats: dict[str, float]) -> None:
        rows.append((step, dict(stats)))
        if stop(step):
            raise RuntimeError("simulated kill")

    config = tiny_config(folder, **{**RUNS[run], **extra})
    result = distill(tiny_problem(), config, progress=False, callback=record)
    assert result.solver_path is not None
    return result.solver_path, rows


def record_reference(folder: Path) -> dict[str, Any]:
    """Everything the reference file holds, from the current trainer (writes the old-format state fixture too)."""
    out: dict[str, Any] = {"platform": platform(), "threads": 1, "runs": {}}
    for run in RUNS:
        path, rows = train(folder / run, run)
        out["runs"][run] = {**solver_fingerprint(path), "stats_sha256": stats_digest(rows)}
    # a GS run killed after iteration 7 leaves the state of iteration 5; written with relative folders
    here = Path.cwd()
    work = folder / "state"
    work.mkdir()
    os.chdir(work)
    try:
        with pytest.raises(RuntimeError, match="simulated kill"):
            train(Path("."), "gs", stop=lambda step: step == 7)
        shutil.copyfile(Path("runs") / "demo-nfe4-gs" / "state.pt", OLD_STATE)
    finally:
        os.chdir(here)
    return out


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    return json.loads(REFERENCE.read_text())


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


def assert_same_solver(path: Path, expected: dict[str, Any], reference: dict[str, Any]) -> None:
    got = solver_fingerprint(path)
    assert sorted(got["tensors"]) == sorted(expected["tensors"])
    for name, values in expected["tensors"].items():
        want = torch.tensor([float.fromhex(v) for v in values], dtype=torch.float64)
        have = torch.tensor([float.fromhex(v) for v in got["tensors"][name]], dtype=torch.float64)
        torch.testing.assert_close(have, want, rtol=1e-6, atol=1e-6, msg=f"solver tensor {name}")
    if reference["platform"] == platform():
        assert got["sha256"] == expected["sha256"], "the solver file's tensors or metadata changed"


def _exact_platform(reference: dict[str, Any]) -> bool:
    return reference["platform"] == platform()


@pytest.mark.parametrize("run", sorted(RUNS))
def test_fixed_seed_run_writes_the_reference_solver(tmp_path, reference, run):
    path, rows = train(tmp_path, run)
    expected = reference["runs"][run]
    assert_same_solver(path, expected, reference)
    if _exact_platform(reference):
        assert stats_digest(rows) == expected["stats_sha256"], "the per-iteration statistics changed"


def test_killed_and_resumed_gas_run_writes_the_reference_solver(tmp_path, reference):
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(tmp_path, "gas", stop=lambda step: step == 8)
    path, rows = train(tmp_path, "gas", resume=True)
    assert [step for step, _ in rows] == list(range(6, 13))  # continued after the checkpoint of iteration 5
    assert_same_solver(path, reference["runs"]["gas"], reference)


def test_a_state_written_before_the_split_resumes_to_the_reference_solver(tmp_path, reference):
    run_dir = tmp_path / "runs" / "demo-nfe4-gs"
    run_dir.mkdir(parents=True)
    shutil.copyfile(OLD_STATE, run_dir / "state.pt")
    path, rows = train(tmp_path, "gs", resume=True)
    assert [step for step, _ in rows] == list(range(6, 21))
    assert_same_solver(path, reference["runs"]["gs"], reference)


def test_the_fingerprint_sees_a_one_ulp_change(tmp_path):
    from gas import load_solver, save_solver

    path, _ = train(tmp_path, "gs", iters=2, ckpt_every=100, eval_every=1000)
    solver = load_solver(path)
    before = solver_fingerprint(path)
    with torch.no_grad():
        solver.a[0, 0] = torch.nextafter(solver.a[0, 0], torch.tensor(1.0, dtype=solver.a.dtype))
    save_solver(solver, path, overwrite=True)
    assert solver_fingerprint(path)["sha256"] != before["sha256"]


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.test_trainer_reference --write   (records the current trainer's outputs)")
    DATA.mkdir(exist_ok=True)
    with one_thread(), tempfile.TemporaryDirectory() as tmp:
        data = record_reference(Path(tmp))
    REFERENCE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {REFERENCE.relative_to(REPO_ROOT)} and {OLD_STATE.relative_to(REPO_ROOT)}")
