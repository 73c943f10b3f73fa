"""Prompts for text-to-image teachers: a built-in varied list (written for this project) and ``--prompts FILE``.

Sample index ``i`` gets a training prompt ``train[i mod len(train)]``; held-out indices (``i >=
VALIDATION_OFFSET``) get the held-out prompts, so the evaluation sees prompts that training never saw. A prompts
file holds one prompt per line (blank lines and lines starting with ``#`` are skipped); with at least 12 prompts its
last sixth is held out, otherwise every prompt serves both (the held-out samples still have their own seeds).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .problem import VALIDATION_OFFSET

__all__ = ["BUILTIN_HELDOUT", "BUILTIN_PROMPTS", "PromptSet", "load_prompts", "prompts_from_text"]

BUILTIN_PROMPTS: tuple[str, ...] = (
    "a red fox sitting in fresh snow at dawn, soft light",
    "portrait of an elderly fisherman with a weathered face, studio lighting",
    "a bowl of ramen with a soft-boiled egg, top view, food photography",
    "a lighthouse on a rocky cliff during a storm, dramatic waves",
    "an astronaut riding a horse across a desert, cinematic",
    "a cozy reading nook with a window seat and rain outside",
    "watercolor painting of a venetian canal with gondolas",
    "a macro photo of a dew-covered spider web",
    "a futuristic city skyline at night with flying cars and neon signs",
    "a golden retriever puppy playing with a tennis ball on grass",
    "an oil painting of sunflowers in a blue vase",
    "a snowy mountain range reflected in a still alpine lake",
    "a steampunk airship above victorian rooftops",
    "a plate of colorful macarons on a marble table",
    "a medieval knight in ornate armor, dramatic portrait",
    "a tropical beach with palm trees and turquoise water, aerial view",
    "a black and white photo of a busy street market in the 1950s",
    "a small wooden cabin in an autumn forest with falling leaves",
    "a hummingbird drinking from a red flower, high speed photo",
    "isometric illustration of a tiny island with a windmill",
    "a vintage red convertible parked in front of a diner",
    "a dragon curled around a castle tower, fantasy art",
    "a close-up of a cat's green eyes",
    "a bustling japanese street at night in the rain, reflections",
    "a still life of lemons and a glass pitcher, chiaroscuro",
    "an underwater coral reef with clownfish and sea anemones",
    "a child flying a kite on a windy hill, golden hour",
    "a bowl of fresh strawberries with cream, shallow depth of field",
    "a gothic cathedral interior with stained glass light",
    "a desert canyon with layered red rock at sunset",
    "an owl perched on a branch under a full moon",
    "a minimalist living room with a large plant and white walls",
    "a pirate ship sailing through a thunderstorm",
    "a plate of sushi on a wooden board, restaurant photo",
    "a field of lavender in provence with a farmhouse",
    "a robot barista making coffee in a small cafe",
    "an ink drawing of a bamboo forest",
    "a herd of elephants walking across the savanna at dusk",
    "a bicycle leaning against a brick wall covered in ivy",
    "a cup of cappuccino with latte art, overhead shot",
    "a northern lights display over a frozen lake",
    "a portrait of a young woman with freckles, natural light",
    "a tiger resting in tall grass, wildlife photography",
    "a treehouse village connected by rope bridges, concept art",
    "a loaf of sourdough bread on a cutting board",
    "a rainy window with city lights blurred behind it",
    "a knitted wool sweater folded on a wooden chair",
    "a surreal landscape with floating islands and waterfalls",
    "an old library with tall bookshelves and a rolling ladder",
    "a race car speeding on a track, motion blur",
    "a bouquet of peonies in soft pastel colors",
    "a penguin colony on an icy shore",
    "a chess board mid-game with dramatic side lighting",
    "a pixel art scene of a village at night",
    "a mountain goat on a steep rocky ledge",
    "a glass terrarium with succulents on a desk",
    "a samurai standing in a field of red spider lilies",
    "a hot air balloon festival at sunrise",
    "a detailed pencil sketch of an old man's hands",
    "a neon-lit arcade with retro game cabinets",
)

BUILTIN_HELDOUT: tuple[str, ...] = (
    "a white horse galloping along a misty beach",
    "a bowl of tomato soup with basil, rustic kitchen",
    "a snow leopard on a rocky slope, telephoto shot",
    "an art nouveau poster of a woman with flowers in her hair",
    "a wooden sailboat on a calm lake at sunset",
    "a street musician playing violin in the snow",
    "a colorful parrot on a branch in the rainforest",
    "a cyberpunk alley with holographic advertisements",
    "a stack of pancakes with blueberries and syrup",
    "an abandoned greenhouse overgrown with plants",
    "a watercolor of a fox in a birch forest",
    "a spiral galaxy seen through a telescope",
)


@dataclass(frozen=True)
class PromptSet:
    """Training and held-out prompts, and where they came from."""

    train: tuple[str, ...]
    heldout: tuple[str, ...]
    source: str  #: "built-in" or the prompts file name

    def prompt(self, index: int) -> str:
        """The prompt of sample ``index`` (held-out prompts for held-out indices)."""
        if index >= VALIDATION_OFFSET:
            return self.heldout[(index - VALIDATION_OFFSET) % len(self.heldout)]
        return self.train[index % len(self.train)]

    def digest(self) -> str:
        """sha256 of the prompt lists (part of the teacher cache key)."""
        return hashlib.sha256(json.dumps([self.train, self.heldout]).encode()).hexdigest()

    @classmethod
    def builtin(cls) -> PromptSet:
        return cls(BUILTIN_PROMPTS, BUILTIN_HELDOUT, "built-in")


def load_prompts(path: str | Path | None) -> PromptSet:
    """The built-in prompts (``path`` None) or a prompts file; :class:`~trainer.errors.ConfigError` if unusable."""
    if path is None:
        return PromptSet.builtin()
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"the prompts file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the prompts file {p} cannot be read as UTF-8 text ({exc})") from None
    prompts = prompts_from_text(text, p.name)
    if prompts is None:
        raise ConfigError(f"the prompts file {p} holds no prompts (one per line; '#' starts a comment)")
    return prompts


def prompts_from_text(text: str, source: str) -> PromptSet | None:
    """The prompts of a text, one per line (blank lines and ``#`` comments skipped; with >= 12 prompts the last sixth
    is held out); None when it holds none."""
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not prompts:
        return None
    if len(prompts) >= 12:
        cut = len(prompts) - len(prompts) // 6
        return PromptSet(tuple(prompts[:cut]), tuple(prompts[cut:]), source)
    return PromptSet(tuple(prompts), tuple(prompts), source)
