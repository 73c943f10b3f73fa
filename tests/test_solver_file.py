"""Solver files: round trip, every documented refusal, and a few hundred damaged files (never a crash, a hang or a
silent wrong result)."""

from __future__ import annotations

import json
import os
import random
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import gas
from gas.solver_file import SolverFileError
from tests.helpers.solvers import perturbed_solver


def make_solver(nfe=4, schedule=None):
    return perturbed_solver(nfe, schedule=schedule, metadata={"mode": "gs", "model": {"family": "SD15"}},
                            time_scale=0.1, couple_scale=0.01, coef_scale=0.01)


def same(a: gas.GeneralizedSolver, b: gas.GeneralizedSolver) -> bool:
    return all(torch.equal(getattr(a, n).detach(), getattr(b, n).detach()) for n in ("mu_logit", "t_couple", "a", "c"))


@pytest.mark.parametrize("schedule", [gas.DiscreteVPSchedule.sd_linear(), gas.FlowSchedule(3.0, 1000.0),
                                      gas.DiscreteVPSchedule.from_sigmas(torch.linspace(0.03, 20.0, 1000))],
                         ids=["sd", "flow", "table"])
def test_round_trip(tmp_path, schedule):
    solver = make_solver(schedule=schedule)
    path = gas.save_solver(solver, tmp_path / "s.safetensors")
    loaded = gas.load_solver(path)
    assert same(solver, loaded)
    assert loaded.metadata["mode"] == "gs" and loaded.metadata["model"] == {"family": "SD15"}
    assert torch.allclose(loaded.sigmas(), solver.sigmas(), rtol=1e-12)
    assert loaded.schedule.matches(schedule)
    meta = gas.read_solver_metadata(path)
    assert meta["nfe"] == 4 and len(meta["grid_sigmas"]) == 5
    assert not list(tmp_path.glob(".*.tmp")), "temporary files left behind"


def test_save_refuses_a_grid_outside_the_schedule(tmp_path):
    short = gas.DiscreteVPSchedule.from_sigmas(torch.linspace(0.03, 20.0, 500))  # first knot at t = 2e-3
    with pytest.raises(SolverFileError, match="strictly decreasing"):
        gas.save_solver(gas.GeneralizedSolver(4, schedule=short, t_eps=1e-3), tmp_path / "s.safetensors")


def test_save_refuses_to_overwrite_and_nan(tmp_path):
    solver = make_solver()
    path = gas.save_solver(solver, tmp_path / "s.safetensors")
    with pytest.raises(SolverFileError, match="already exists"):
        gas.save_solver(solver, path)
    gas.save_solver(solver, path, overwrite=True)
    with torch.no_grad():
        solver.c[0, 0] = float("nan")
    with pytest.raises(SolverFileError, match="NaN"):
        gas.save_solver(solver, tmp_path / "n.safetensors")


class RawText(str):
    """A metadata value written as is (not JSON-encoded)."""


def write_raw(path, tensors, meta):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path),
              metadata={k: v if isinstance(v, RawText) else json.dumps(v) for k, v in meta.items()})
    return path


def valid_parts(nfe=4):
    solver = make_solver(nfe)
    tensors = {n: getattr(solver, n).detach().clone() for n in ("mu_logit", "t_couple", "a", "c")}
    meta = {"format": "gas-solver", "format_version": 1, "nfe": nfe, "t_eps": 1e-3,
            "schedule": solver.schedule.to_metadata()}
    return tensors, meta


BAD_FILES = {
    "missing": (None, "no such file"),
    "not safetensors": (b"hello world, not a tensor file" * 10, "not a readable safetensors"),
    "empty": (b"", "not a readable safetensors"),
    "json": (json.dumps({"nfe": 4}).encode(), "not a readable safetensors"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_unreadable_files(tmp_path, case):
    content, message = BAD_FILES[case]
    path = tmp_path / "bad.safetensors"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SolverFileError, match=message) as info:
        gas.load_solver(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_directory_and_huge_file(tmp_path):
    with pytest.raises(SolverFileError, match="not a regular file"):
        gas.load_solver(tmp_path)
    big = tmp_path / "model.safetensors"
    with open(big, "wb") as handle:
        handle.truncate(64 * 1024 * 1024)
    with pytest.raises(SolverFileError, match="too large"):
        gas.load_solver(big)


def mutate_meta(key, value):
    def apply(tensors, meta):
        if value is None:
            meta.pop(key)
        else:
            meta[key] = value
    return apply


def mutate_tensor(name, new):
    def apply(tensors, meta):
        if new is None:
            tensors.pop(name)
        else:
            tensors[name] = new(tensors[name])
    return apply


def put_nan(t):
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


def set_unread(t):
    t = t.clone()
    t[3, 0] = 0.5
    return t


SEMANTIC = {
    "not a gas file": (mutate_meta("format", "other"), "not a GAS solver"),
    "no metadata format": (mutate_meta("format", None), "not a GAS solver"),
    "future version": (mutate_meta("format_version", 3), "format_version 3"),
    "string version": (mutate_meta("format_version", "1"), "format_version"),
    "nfe too large": (mutate_meta("nfe", 40), "nfe 40"),
    "nfe mismatch": (mutate_meta("nfe", 5), "shape"),
    "nfe bool": (mutate_meta("nfe", True), "nfe True"),
    "t_eps zero": (mutate_meta("t_eps", 0.0), "t_eps"),
    "no schedule": (mutate_meta("schedule", None), "lacks"),
    "unknown schedule": (mutate_meta("schedule", {"kind": "edm"}), "bad schedule"),
    "negative shift": (mutate_meta("schedule", {"kind": "flow", "shift": -1}), "bad schedule"),
    "bad json": (mutate_meta("cfg", RawText("{not json")), "not valid JSON"),
    "nan json": (mutate_meta("cfg", RawText("NaN")), "not valid JSON"),
    "missing tensor": (mutate_tensor("c", None), "lacks tensor 'c'"),
    "extra tensor": (lambda t, m: t.update(extra=torch.zeros(2)), "unexpected tensors"),
    "wrong shape": (mutate_tensor("a", lambda t: t[:3]), "shape"),
    "integer tensor": (mutate_tensor("t_couple", lambda t: t.long()), "dtype"),
    "nan": (mutate_tensor("mu_logit", put_nan), "NaN"),
    "unread entry": (mutate_tensor("a", set_unread), "never reads"),
    "huge shift": (mutate_tensor("t_couple", lambda t: t + 5), "larger than"),
    "grid disagrees": (mutate_meta("grid_sigmas", [14.6, 3.0, 1.0, 0.5, 0.03]), "grid_sigmas"),
    "checksum": (mutate_meta("content_sha256", "0" * 64), "checksum"),
}


@pytest.mark.parametrize("case", sorted(SEMANTIC))
def test_semantic_refusals(tmp_path, case):
    mutate, message = SEMANTIC[case]
    tensors, meta = valid_parts()
    mutate(tensors, meta)
    path = write_raw(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(SolverFileError, match=message) as info:
        gas.load_solver(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_valid_handmade_file_without_checksum_loads(tmp_path):
    tensors, meta = valid_parts()
    loaded = gas.load_solver(write_raw(tmp_path / "ok.safetensors", tensors, meta))
    assert loaded.nfe == 4


def test_edited_metadata_is_detected(tmp_path):
    path = gas.save_solver(make_solver(), tmp_path / "s.safetensors")
    data = bytearray(path.read_bytes())
    pos = data.find(b'7.5')
    data[pos:pos + 3] = b'9.5'
    path.write_bytes(bytes(data))
    with pytest.raises(SolverFileError, match="checksum"):
        gas.load_solver(path)


def refused_or_same(load, path, original) -> bool:
    """True when ``load(path)`` refuses a damaged file with one sentence; otherwise it must give exactly ``original``
    (a mutation that changes nothing that is read), never other parameters silently."""
    try:
        loaded = load(path)
    except SolverFileError as exc:
        assert "\n" not in str(exc)
        return True
    assert same(loaded, original), f"{path.name} loaded different parameters silently"
    return False


def test_fuzzed_solver_files(tmp_path):
    """400 damaged copies: byte flips anywhere, truncations, header-length lies. Each either raises SolverFileError
    or loads exactly the original parameters."""
    original = make_solver(5)
    data = gas.save_solver(original, tmp_path / "orig.safetensors").read_bytes()
    header_len = struct.unpack("<Q", data[:8])[0]
    rng = random.Random(1234)
    outcomes = {"refused": 0, "same": 0}
    for index in range(400):
        damaged = bytearray(data)
        kind = index % 4
        if kind == 0:  # flip a byte in the header
            pos = rng.randrange(8, 8 + header_len)
            damaged[pos] ^= 1 << rng.randrange(8)
        elif kind == 1:  # flip a byte in the tensor data
            pos = rng.randrange(8 + header_len, len(data))
            damaged[pos] ^= 1 << rng.randrange(8)
        elif kind == 2:  # truncate
            damaged = damaged[: rng.randrange(0, len(data))]
        else:  # lie about the header length
            damaged[:8] = struct.pack("<Q", rng.choice([0, 1, header_len - 1, header_len + 1, 2**40, 2**63]))
        path = tmp_path / f"fuzz{index}.safetensors"
        path.write_bytes(bytes(damaged))
        outcomes["refused" if refused_or_same(gas.load_solver, path, original) else "same"] += 1
    assert outcomes["refused"] > 300


def test_fuzzed_official_checkpoints(golden, tmp_path):
    """Damaged authors' checkpoints: the importer refuses them or imports exactly the original."""
    source = golden / "sd15_n4_random_official.pt"
    original = gas.import_official_checkpoint(source)
    data = source.read_bytes()
    rng = random.Random(99)
    refused = 0
    for index in range(200):
        damaged = bytearray(data)
        if index % 2:
            damaged = damaged[: rng.randrange(0, len(data))]
        else:
            pos = rng.randrange(len(data))
            damaged[pos] ^= 1 << rng.randrange(8)
        path = tmp_path / f"fuzz{index}.pt"
        path.write_bytes(bytes(damaged))
        refused += refused_or_same(gas.import_official_checkpoint, path, original)
    assert refused > 100


@pytest.mark.parametrize("payload", [
    {"ema": {"shadow_params": [torch.zeros(3)]}},
    {"ema": {"shadow_params": [torch.zeros(3), torch.zeros(4)] + [torch.zeros(4)] * 6}},
    {"ema": {"shadow_params": [torch.zeros(3), torch.zeros(4)] + [torch.zeros(5)] * 8}},
    {"ema": {"shadow_params": [torch.zeros(3), torch.zeros(4)] + [torch.full((4,), float("inf"))] * 8}},
    {"model": []},
    [1, 2, 3],
], ids=["too-few", "order-3-of-4", "wrong-shape", "inf", "no-ema", "list"])
def test_importer_refuses_other_checkpoints(tmp_path, payload):
    path = tmp_path / "ck.pt"
    torch.save(payload, path)
    with pytest.raises(SolverFileError) as info:
        gas.import_official_checkpoint(path)
    assert str(path) in str(info.value)


def test_importer_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"ema": Evil()}, path)
    with pytest.raises(SolverFileError, match="weights-only"):
        gas.import_official_checkpoint(path)


def test_atomic_writes_keep_the_old_file_on_failure_and_use_normal_permissions(tmp_path):
    from gas.atomic_file import write_atomically

    target = tmp_path / "sub" / "file.txt"
    write_atomically(target, lambda tmp: Path(tmp).write_text("old"))

    def fail(tmp: str) -> None:
        Path(tmp).write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, fail)
    assert target.read_text() == "old" and sorted(p.name for p in target.parent.iterdir()) == ["file.txt"]
    # a solver file gets 0o666 less the umask (readable by a ComfyUI running as another user), not mkstemp's 0o600
    old_mask = os.umask(0o022)
    try:
        path = gas.save_solver(gas.GeneralizedSolver(4, schedule=gas.DiscreteVPSchedule.sd_linear()),
                               tmp_path / "s.safetensors")
    finally:
        os.umask(old_mask)
    assert path.stat().st_mode & 0o777 == 0o644
