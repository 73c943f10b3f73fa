"""Exponential moving average of the solver parameters, as in the GAS paper (torch_ema semantics).

After the ``n``-th update (``n`` = 1, 2, ...) with decay ``d``: ``d_n = min(d, (1 + n) / (10 + n))`` and
``shadow <- shadow - (1 - d_n) (shadow - param)``. Evaluation and the saved solver use the shadow values.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["EMA"]


class EMA:
    """Shadow copies of a fixed list of parameters."""

    def __init__(self, params: Iterable[torch.Tensor], decay: float = 0.999) -> None:
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self, params: Iterable[torch.Tensor]) -> None:
        """One EMA step towards the current ``params`` (same order as at construction)."""
        self.num_updates += 1
        decay = min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        for s, p in zip(self.shadow, params, strict=True):
            s.sub_((1.0 - decay) * (s - p.detach()))

    @torch.no_grad()
    def copy_to(self, params: Iterable[torch.Tensor]) -> None:
        """Write the shadow values into ``params``."""
        for s, p in zip(self.shadow, params, strict=True):
            p.copy_(s)

    def state_dict(self) -> dict[str, object]:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": [s.clone() for s in self.shadow]}

    def load_state_dict(self, state: dict[str, object]) -> None:
        shadow = state["shadow"]
        if not isinstance(shadow, list) or len(shadow) != len(self.shadow):
            raise ValueError("EMA state does not match the parameters")
        self.decay = float(state["decay"])  # type: ignore[arg-type]
        self.num_updates = int(state["num_updates"])  # type: ignore[call-overload]
        with torch.no_grad():
            for s, v in zip(self.shadow, shadow, strict=True):
                s.copy_(v)
