"""Where a ComfyUI teacher's conditioning comes from (trainer/conditioning.py), without ComfyUI: a graph's CONDITIONING
(positive and negative, or the positive zeroed), prompts encoded by a CLIP, their batches and constant values, and
the one-sentence refusals; plus the lazy discriminator settings (``r1_every``, ``disc_every``)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from trainer.conditioning import GraphConditioning, PromptConditioning
from trainer.config import DistillConfig
from trainer.errors import ConfigError, ProblemError
from trainer.prompts import prompts_from_text


def cond(seed: int, tokens: int = 3, **extra: Any) -> list[list[Any]]:
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, 8, generator=gen), {"pooled_output": torch.randn(1, 5, generator=gen), **extra}]]


def test_graph_conditioning_batches_one_prompt_for_every_sample() -> None:
    positive, negative = cond(1, guidance=2.5, width=512), cond(2, tokens=6)
    c = GraphConditioning(positive, negative, {"guidance": 3.5})
    out = c.conditions([0, 7, 3])
    assert out["context"].shape == (3, 3, 8) and out["uncond_context"].shape == (3, 6, 8)
    torch.testing.assert_close(out["context"][2], positive[0][0][0])
    torch.testing.assert_close(out["extra_pooled_output"][1], positive[0][1]["pooled_output"][0])
    torch.testing.assert_close(out["uncond_extra_pooled_output"][0], negative[0][1]["pooled_output"][0])
    # the graph's values (FluxGuidance's 2.5, sizes) win over the defaults; the negative side keeps the default
    assert c.constants_of("positive") == {"guidance": 2.5, "width": 512}
    assert c.constants_of("negative") == {"guidance": 3.5}


def test_explicit_overrides_win_over_the_graph() -> None:
    c = GraphConditioning(cond(1, guidance=2.5), None, {"guidance": 3.5}, {"guidance": 4.0})
    assert c.constants_of("positive")["guidance"] == 4.0 == c.constants_of("negative")["guidance"]


def test_missing_negative_is_the_positive_zeroed() -> None:
    positive = cond(1)
    c = GraphConditioning(positive, None, {})
    out = c.conditions([0, 1])
    assert torch.count_nonzero(out["uncond_context"]) == 0
    assert torch.count_nonzero(out["uncond_extra_pooled_output"]) == 0
    assert out["uncond_context"].shape == out["context"].shape
    assert "negative: zeroed" in c.source


def test_digest_follows_the_tensors_and_values() -> None:
    a = GraphConditioning(cond(1), cond(2), {}).digest
    assert a == GraphConditioning(cond(1), cond(2), {}).digest
    assert a != GraphConditioning(cond(1), cond(3), {}).digest
    assert a != GraphConditioning(cond(1, guidance=2.0), cond(2), {}).digest


@pytest.mark.parametrize(("value", "message"), [
    ("text", "is not a ComfyUI CONDITIONING"),
    ([], "is not a ComfyUI CONDITIONING"),
    ([[torch.zeros(2, 3, 8), {}]], "of one prompt"),
    ([*cond(1), *cond(2)], "holds 2 conditionings"),
])
def test_bad_conditioning_gets_one_sentence(value: Any, message: str) -> None:
    with pytest.raises(ProblemError) as info:
        GraphConditioning(value, None, {})
    assert message in str(info.value) and "\n" not in str(info.value)


class FakeClip:
    """A text encoder with ComfyUI's CLIP interface: tokens are the words; context [1, words, 4]."""

    def __init__(self) -> None:
        self.calls = 0

    def tokenize(self, text: str) -> list[str]:
        return text.split() or [""]

    def encode_from_tokens_scheduled(self, tokens: list[str], show_pbar: bool = False) -> list[list[Any]]:
        self.calls += 1
        gen = torch.Generator().manual_seed(len(" ".join(tokens)))
        return [[torch.randn(1, len(tokens), 4, generator=gen), {"pooled_output": torch.ones(1, 2) * len(tokens)}]]


def test_prompt_conditioning_encodes_each_prompt_once_and_pads_tokens() -> None:
    prompts = prompts_from_text("a cat\na small red dog", "test")
    clip = FakeClip()
    c = PromptConditioning(clip, prompts, "", {"guidance": 3.0})
    out = c.conditions([0, 1, 0, 1])
    assert out["context"].shape == (4, 4, 4)  # 2 and 4 tokens, each repeated to their LCM, 4
    torch.testing.assert_close(out["context"][0, 2:], out["context"][0, :2])
    assert clip.calls == 3  # two prompts and the empty negative, each once
    assert c.constants_of("negative") == {"guidance": 3.0}
    assert c.digest == prompts.digest()


def test_lazy_discriminator_settings_are_validated() -> None:
    assert DistillConfig().r1_every == 1 and DistillConfig().disc_every == 1  # the paper's recipe
    for name in ("r1_every", "disc_every"):
        with pytest.raises(ConfigError) as info:
            DistillConfig(**{name: 0}).validate()
        assert f"{name} must be a positive integer, got 0" in str(info.value)
