"""Teacher trajectories and the teacher cache: keying, resuming a partial generation, damaged shards."""

from __future__ import annotations

import json

import pytest
import torch

import gas
from tests.trainer_helpers import tiny_config, tiny_problem
from trainer.problem import VALIDATION_OFFSET
from trainer.runtime import Autocast
from trainer.teacher import SHARD_SIZE, TeacherCache, end_sigmas, make_teacher_spec, run_teacher, sample_noise


def _counting_generator(problem, spec, seed=42):
    calls: list[list[int]] = []

    def generate(indices):
        calls.append(list(indices))
        noise = sample_noise(indices, problem.latent_shape, seed)
        return noise, run_teacher(problem, spec, noise, problem.conditions(indices))

    return generate, calls


def test_noise_is_a_pure_function_of_seed_and_index():
    a = sample_noise([3, 70], (2, 4, 4), 42)
    b = sample_noise([70], (2, 4, 4), 42)
    torch.testing.assert_close(a[1], b[0])
    torch.testing.assert_close(a[0], torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(45)))


def test_teacher_starts_and_ends_where_the_student_does(tmp_path):
    """A 4-step time-grid 3M teacher is exactly the untrained 4-step solver from the same noise."""
    p = tiny_problem()
    spec = make_teacher_spec(p, tiny_config(tmp_path, teacher_steps=4, teacher_grid="time"))
    s0, s_end = end_sigmas(p, 1e-3)
    assert spec.sigmas[0] == pytest.approx(s0) and spec.sigmas[-1] == pytest.approx(s_end)
    noise = sample_noise([0, 1], p.latent_shape, 42)
    cond = p.conditions([0, 1])
    teacher = run_teacher(p, spec, noise, cond)
    solver = gas.GeneralizedSolver(4, schedule=p.schedule)
    student = gas.sample_gas(p.denoiser, p.schedule.initial_state(noise, s0), solver.sigmas(), extra_args=cond,
                             solver=solver, disable=True)
    torch.testing.assert_close(teacher, student, rtol=1e-5, atol=1e-5)


def test_cache_key_depends_on_identity_and_settings(tmp_path):
    base = {"identity": {"file": "a"}, "teacher": {"steps": 64}}
    same = TeacherCache(tmp_path, json.loads(json.dumps(base)), (2, 8, 8))
    assert TeacherCache(tmp_path, base, (2, 8, 8)).dir == same.dir
    assert TeacherCache(tmp_path, {**base, "identity": {"file": "b"}}, (2, 8, 8)).dir != same.dir
    assert TeacherCache(tmp_path, {**base, "teacher": {"steps": 32}}, (2, 8, 8)).dir != same.dir
    assert json.loads((same.dir / "key.json").read_text()) == base


def test_cache_generates_only_missing_samples_and_returns_them_in_order(tmp_path):
    p = tiny_problem()
    spec = make_teacher_spec(p, tiny_config(tmp_path))
    cache = TeacherCache(tmp_path, {"k": 1}, p.latent_shape)
    gen, calls = _counting_generator(p, spec)
    idx = [5, 1, 70, VALIDATION_OFFSET + 2]
    noise, lat = cache.get(idx, gen, batch=8, progress=False)
    assert sorted(i for c in calls for i in c) == sorted(idx)
    assert len(list(cache.dir.glob("shard-*.safetensors"))) == 3  # shards 0, 1 and the held-out one
    calls.clear()
    noise2, lat2 = cache.get([70, 5, 6], gen, batch=8, progress=False)
    assert calls == [[6]]  # only the missing sample; 6 is merged into shard 0
    torch.testing.assert_close(noise2[1], noise[0])
    torch.testing.assert_close(lat2[0], lat[2])
    torch.testing.assert_close(noise2[0], sample_noise([70], p.latent_shape, 42)[0])


def test_interrupted_generation_resumes_from_finished_shards(tmp_path):
    p = tiny_problem()
    spec = make_teacher_spec(p, tiny_config(tmp_path))
    cache = TeacherCache(tmp_path, {"k": 2}, p.latent_shape)
    gen, calls = _counting_generator(p, spec)
    wanted = list(range(2 * SHARD_SIZE + 10))

    def dying(indices):
        if indices[0] >= SHARD_SIZE:  # "killed" while generating the second shard
            raise KeyboardInterrupt
        return gen(indices)

    with pytest.raises(KeyboardInterrupt):
        cache.get(wanted, dying, batch=32, progress=False)
    assert [f.name for f in cache.dir.glob("shard-*.safetensors")] == ["shard-0000000.safetensors"]
    calls.clear()
    noise, lat = cache.get(wanted, gen, batch=32, progress=False)
    assert min(i for c in calls for i in c) == SHARD_SIZE  # the first shard was not regenerated
    fresh_noise, fresh = gen(wanted[:3])
    torch.testing.assert_close(lat[:3], fresh)
    torch.testing.assert_close(noise[:3], fresh_noise)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_damaged_shard_is_reported_and_regenerated(tmp_path, damage, caplog):
    p = tiny_problem()
    spec = make_teacher_spec(p, tiny_config(tmp_path))
    cache = TeacherCache(tmp_path, {"k": 3}, p.latent_shape)
    gen, calls = _counting_generator(p, spec)
    idx = list(range(8))
    _, lat = cache.get(idx, gen, progress=False)
    path = cache.shard_path(0)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[-5] ^= 0xFF  # inside the latents: only the checksum can tell
    else:
        data = bytearray(b"not a safetensors file")
    path.write_bytes(bytes(data))
    calls.clear()
    with caplog.at_level("WARNING", logger="trainer"):
        _, lat2 = cache.get(idx, gen, progress=False)
    assert "damaged" in caplog.text and path.name in caplog.text
    assert calls, "the damaged shard must be regenerated"
    torch.testing.assert_close(lat2, lat)


def test_ipndm_gits_teacher_uses_nfe_plus_one_steps(tmp_path):
    p = tiny_problem()
    spec = make_teacher_spec(p, tiny_config(tmp_path, teacher="ipndm-gits", teacher_steps=None, nfe=4))
    assert spec.steps == 5 and len(spec.sigmas) == 6 and spec.order == 2
    p.gits_sigmas = lambda steps: [14.61464119, 4.39, 1.5286, 0.6526, 0.2667, 0.02916753]
    spec2 = make_teacher_spec(p, tiny_config(tmp_path, teacher="ipndm-gits", teacher_steps=None, nfe=4))
    assert spec2.grid == "GITS" and spec2.sigmas[1:-1] == (4.39, 1.5286, 0.6526, 0.2667)
    out = run_teacher(p, spec2, sample_noise([0], p.latent_shape, 42), p.conditions([0]),
                      Autocast(torch.device("cpu"), None))
    assert out.shape == (1, *p.latent_shape) and torch.isfinite(out).all()


def test_a_killed_writers_temporary_shard_is_removed_by_the_next_write(tmp_path):
    """A writer killed mid-write leaves its temporary file (no clean-up runs on SIGKILL); shards are written under the
    cache's lock, so the next writer removes it, and the samples are unaffected."""
    cache = TeacherCache(tmp_path, {"k": "stale"}, (2, 4, 4))
    stale = cache.dir / ".shard-0000000.safetensors.abc123.tmp"
    stale.write_bytes(b"half a shard")

    def gen(idx):
        noise = sample_noise(idx, (2, 4, 4), 3)
        return noise, 2 * noise

    noise, lat = cache.get(range(5), gen, batch=4, progress=False)
    assert torch.equal(lat, 2 * noise) and not stale.exists()
    assert not list(cache.dir.glob("*.tmp"))
