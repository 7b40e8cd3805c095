"""The five SteerLM attributes, the weight presets that turn them into one reward, and scalarising."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hs2trl.data.helpsteer2 import ATTRIBUTES, MAX_SCORE, MIN_SCORE  # noqa: F401 (re-exported: the RM's outputs)
from hs2trl.runtime.errors import Hs2Error

WEIGHT_PRESETS: dict[str, tuple[float, ...]] = {
    # Paper §4.3: the reward used by iterative DPO and PPO.
    "goodness": (0.65, 0.8, 0.45, 0.0, 0.0),
    # Paper App. H / model cards: the weights used for RewardBench.
    "rewardbench-llama3-70b": (0.65, 0.8, 0.45, 0.55, -0.4),
    "rewardbench-nemotron4-340b": (0.3, 0.74, 0.46, 0.47, -0.33),
}


def resolve_weights(spec: str | Sequence[float], attributes: Sequence[str] = ATTRIBUTES) -> tuple[float, ...]:
    """A preset name, a comma-separated list 'a,b,c,d,e', or a sequence of floats -> one weight per attribute."""
    if isinstance(spec, str):
        if spec in WEIGHT_PRESETS:
            weights = WEIGHT_PRESETS[spec]
        else:
            try:
                weights = tuple(float(w) for w in spec.split(","))
            except ValueError:
                raise Hs2Error(
                    f"weights: '{spec}' is neither a preset ({', '.join(WEIGHT_PRESETS)}) nor a list of numbers"
                ) from None
    else:
        weights = tuple(float(w) for w in spec)
    if len(weights) != len(attributes):
        raise Hs2Error(f"weights: {len(weights)} values given for {len(attributes)} attributes "
                       f"({', '.join(attributes)})")
    return tuple(weights)


def scalarise(scores: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """`[..., k]` attribute predictions -> `[...]` weighted sums."""
    w = torch.as_tensor(weights, dtype=scores.dtype, device=scores.device)
    return scores @ w


def steerlm_labels(scores: torch.Tensor) -> torch.Tensor:
    """Raw predictions -> SteerLM labels: clamped to [0, 4] and rounded to integers."""
    return scores.clamp(MIN_SCORE, MAX_SCORE).round().to(torch.long)
