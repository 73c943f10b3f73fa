"""The GAS Train Solver node's ComfyUI-free parts: NFE lists, names, messages, the preview grid, the graph lineage,
and the weights fingerprint seeing a patch of any layer (what the node records for LoRA models)."""

from __future__ import annotations

import pytest
import torch

from gas.comfy_bridge import fingerprint_state_dict
from nodes import logic, train_logic
from trainer.graph_problem import model_lineage, own_inference_tensors


def test_parse_nfe() -> None:
    assert train_logic.parse_nfe("4") == [4]
    assert train_logic.parse_nfe(" 4, 6 4") == [4, 6]
    for bad in ("", "0", "17", "four", "4,-1"):
        with pytest.raises(logic.GASNodeError):
            train_logic.parse_nfe(bad)


def test_names() -> None:
    assert train_logic.check_name(" my-solver.safetensors ") == "my-solver"
    with pytest.raises(logic.GASNodeError):
        train_logic.check_name("a/b")
    assert train_logic.default_name("sd/v1-5-pruned.safetensors") == "v1-5-pruned"
    assert train_logic.default_name(None) == "model"
    assert train_logic.solver_file("x", 4, "gs") == "x-nfe4-gs.safetensors"


def test_trainer_messages_name_the_node_inputs() -> None:
    from trainer.errors import ConfigError, TrainingInterruptedError

    message = train_logic.node_message(ConfigError("`iters` must be a positive integer, and `lr` and `name` too"))
    assert message == "iterations must be a positive integer, and learning_rate and solver_name too"
    stopped = TrainingInterruptedError("interrupted at iteration 3; the state is saved: run again with `resume` to "
                                       "continue")
    assert train_logic.node_message(stopped).endswith("queue the node again to continue")
    assert train_logic.node_message(ValueError("plain")) == "plain"


def test_preview_grid_shape() -> None:
    rows = [torch.rand(4, 8, 6, 3) for _ in range(3)]
    grid = train_logic.preview_grid(rows)
    assert grid.shape == (1, 24, 24, 3)
    assert torch.equal(grid[0, 8:16, 6:12], rows[1][1])


def test_model_lineage_follows_model_links() -> None:
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
        "2": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": "a.safetensors",
                                                     "strength_model": 0.8, "strength_clip": 1.0}},
        "3": {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["2", 0], "sampling": "eps", "zsnr": False}},
        "9": {"class_type": "GASTrainSolver", "inputs": {"model": ["3", 0]}},
    }
    lineage = model_lineage(prompt, "9")
    assert (lineage.loader, lineage.file, lineage.folder) == ("CheckpointLoaderSimple", "sd15.safetensors",
                                                              "checkpoints")
    assert [p["node"] for p in lineage.patches] == ["LoraLoader", "ModelSamplingDiscrete"]
    assert lineage.patches[0] == {"node": "LoraLoader", "lora_name": "a.safetensors", "strength_model": 0.8}
    assert model_lineage(None, "9").file is None
    looped = {"1": {"class_type": "X", "inputs": {"model": ["1", 0]}}, "9": {"class_type": "T",
                                                                          "inputs": {"model": ["1", 0]}}}
    assert model_lineage(looped, "9").file is None


def test_fingerprint_sees_a_change_in_any_layer() -> None:
    gen = torch.Generator().manual_seed(0)
    state = {f"block{i}.weight": torch.randn(64, 64, generator=gen) for i in range(10)}
    base = fingerprint_state_dict(state)
    for name in state:  # e.g. a LoRA on one attention projection in the middle of the network
        patched = dict(state, **{name: state[name] + 0.05 * torch.randn(64, 64, generator=gen)})
        assert fingerprint_state_dict(patched) != base, name
    assert fingerprint_state_dict({k: v.half() for k, v in state.items()}) == base


def test_inference_weights_become_usable_by_autograd() -> None:
    with torch.inference_mode():
        layer = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="Inference tensors"):
        layer(x).sum().backward()
    replaced = own_inference_tensors(layer)
    assert replaced == (4 * 3 * 9 + 4) * 4
    assert not any(p.is_inference() for p in layer.parameters())
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert own_inference_tensors(layer) == 0


def test_the_node_recipes_are_the_trainers_and_its_configs_start_from_the_chosen_one(monkeypatch) -> None:
    from trainer import config

    assert train_logic.RECIPE_NAMES == tuple(config.RECIPES)
    assert train_logic.DEFAULT_RECIPE == config.DEFAULT_RECIPE
    tuned = train_logic.node_configs(config, "tuned", [4, 6], mode="gs", batch=2)
    assert [c.nfe for c in tuned] == [4, 6] and all(c.batch == 2 and c.mode == "gs" for c in tuned)
    assert tuned[0] == config.DistillConfig.from_recipe("tuned", nfe=4, mode="gs", batch=2, eval_every=1800,
                                                        log_every=100)
    assert tuned[0].lr == config.RECIPES["tuned"]["lr"]  # learning_rate 0: the recipe's rate
    # iterations 0: the recipe's count; any other value is the node's own; the check and log intervals follow it
    assert [train_logic.node_configs(config, r, [4])[0].iters for r in ("tuned", "paper")] == \
        [config.RECIPES["tuned"]["iters"], config.RECIPES["paper"]["iters"]]
    seven = train_logic.node_configs(config, "tuned", [4], iterations=7)[0]
    assert (seven.iters, seven.eval_every, seven.log_every) == (7, 500, 1)
    paper = train_logic.node_configs(config, "paper", [4], learning_rate=2e-3)
    assert paper[0] == config.DistillConfig(lr=2e-3, eval_every=2000, log_every=100)
    with pytest.raises(logic.GASNodeError, match="recipe must be one of paper, tuned, got 'fast'"):
        train_logic.node_configs(config, "fast", [4])
    # train_size 0: the recipe's counts; any other count is both modes' (a recipe's GAS count included)
    monkeypatch.setitem(config.RECIPES, "more", {**config.RECIPES["tuned"], "gas_train_size": 5600})
    counts = {(size, mode): train_logic.node_configs(config, "more", [4], mode=mode,
                                                     **train_logic.sample_counts(size))[0].training_samples
              for size in (0, 300) for mode in ("gs", "gas")}
    assert counts == {(0, "gs"): 1400, (0, "gas"): 5600, (300, "gs"): 300, (300, "gas"): 300}
    assert train_logic.node_configs(config, "tuned", [4], mode="gas")[0].training_samples == 1400
