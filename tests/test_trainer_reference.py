"""The trainer's outputs stay as they are: fixed-seed GS and GAS runs on a tiny demo problem write the recorded solver.

``tests/data/trainer_reference.json`` holds, for each run, a fingerprint of the solver file it writes (sha256 of
the tensors and of every metadata field except ``created``, ``pack_version`` and the content checksum, which change
with the clock and the release) and of the per-iteration statistics, plus the parameter values themselves. It was
recorded with the trainer as it was before its loop was split into modules; ``tests/data/trainer_state_v1_gs.pt``
is a GS training state that trainer wrote at iteration 5 (config folders relative, so no machine path is in it).

Bit-identity is a property of the code *and* of the floating-point kernels, so the runs use one thread and the
comparison is exact on the platform the reference names (torch version, CPU capability and CPU model: two CPUs
with the same AVX512 capability gave results 1e-6 apart); elsewhere the parameters must agree to 1e-5 and the
fingerprint is not compared. Regenerate (only for an intended change of the trainer's numbers, or for a new
reference platform, saying so in the commit) with ``python -m tests.test_trainer_reference --write`` (add
``--keep-state`` to leave the old-format state fixture as it is).
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


#: How far the solver parameters may differ on another platform than the reference's (float32 kernels differ
#: in the last bits between CPU models, and 20 iterations carry that to about 1e-6).
CROSS_PLATFORM_TOLERANCE = 1e-5


def cpu_model() -> str:
    """The CPU's vendor, family and model (Linux's /proc/cpuinfo), else what the platform module says."""
    import platform as std_platform

    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("vendor_id", "cpu family", "model") and key not in fields:
                fields[key] = value.strip()
    if fields:
        return " ".join(f"{k}={fields[k]}" for k in ("vendor_id", "cpu family", "model") if k in fields)
    return std_platform.processor() or std_platform.machine()


def platform() -> dict[str, str]:
    return {"torch": torch.__version__.split("+")[0], "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu": cpu_model()}


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


def record_reference(folder: Path, write_state: bool = True) -> dict[str, Any]:
    """Everything the reference file holds, from the current trainer (and, with ``write_state``, the old-format state
    fixture)."""
    out: dict[str, Any] = {"platform": platform(), "threads": 1, "runs": {}}
    for run in RUNS:
        path, rows = train(folder / run, run)
        out["runs"][run] = {**solver_fingerprint(path), "stats_sha256": stats_digest(rows)}
    if not write_state:
        return out
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


def assert_same_solver_values(got: dict[str, Any], expected: dict[str, Any], tol: float = 1e-6) -> None:
    """The solver tensors of two fingerprints agree to ``tol``."""
    assert sorted(got["tensors"]) == sorted(expected["tensors"])
    for name, values in expected["tensors"].items():
        want = torch.tensor([float.fromhex(v) for v in values], dtype=torch.float64)
        have = torch.tensor([float.fromhex(v) for v in got["tensors"][name]], dtype=torch.float64)
        torch.testing.assert_close(have, want, rtol=tol, atol=tol, msg=lambda m, n=name: f"solver tensor {n}: {m}")


def assert_same_solver(path: Path, expected: dict[str, Any], reference: dict[str, Any]) -> None:
    got = solver_fingerprint(path)
    exact = _exact_platform(reference)
    assert_same_solver_values(got, expected, 1e-6 if exact else CROSS_PLATFORM_TOLERANCE)
    if exact:
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
    # the fixture's first 5 iterations ran on the CPU it was written on, so compare as across platforms
    assert_same_solver_values(solver_fingerprint(path), reference["runs"]["gs"], CROSS_PLATFORM_TOLERANCE)


def test_gs_training_does_not_depend_on_the_thread_count(tmp_path):
    """The README's claim: GS writes the same solver with 1 and 2 threads (GAS's discriminator convolutions reduce
    in a thread-dependent order, so GAS may differ in the last bits; it must stay close)."""
    for run in ("gs", "gas"):
        files = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            files.append(solver_fingerprint(train(tmp_path / f"{run}-{threads}", run)[0]))
        if run == "gs":
            assert files[0]["sha256"] == files[1]["sha256"]
        assert_same_solver_values(files[0], files[1])


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
    if sys.argv[1:] not in (["--write"], ["--write", "--keep-state"]):
        sys.exit("usage: python -m tests.test_trainer_reference --write [--keep-state]   (records the current "
                 "trainer's outputs; --keep-state leaves the old-format state fixture as it is)")
    keep_state = "--keep-state" in sys.argv
    DATA.mkdir(exist_ok=True)
    with one_thread(), tempfile.TemporaryDirectory() as tmp:
        data = record_reference(Path(tmp), write_state=not keep_state)
    REFERENCE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    state_note = "" if keep_state else f" and {OLD_STATE.relative_to(REPO_ROOT)}"
    print(f"wrote {REFERENCE.relative_to(REPO_ROOT)}{state_note}")
