"""`RegressionRewardConfig`: TRL's `RewardConfig` with the regression reward model's settings."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from trl import RewardConfig

from hs2trl.rm.attributes import ATTRIBUTES
from hs2trl.runtime.choices import check_choices
from hs2trl.runtime.errors import Hs2Error
from hs2trl.runtime.say import say

TRUNCATION_MODES = ("keep_end", "drop")


@dataclass
class RegressionRewardConfig(RewardConfig):
    """`RewardConfig` plus the SteerLM regression settings (NeMo-Aligner's `regression:` block)."""

    attributes: list[str] = field(
        default_factory=lambda: list(ATTRIBUTES),
        metadata={"help": "Attribute names, one model output each, in head order."},
    )
    truncation_mode: str = field(
        default="keep_end",
        metadata={
            "help": "Rows longer than max_length: 'keep_end' truncates from the left (the prompt first, keeping the "
            "end of the response that the head reads) or 'drop' removes them. Both are counted and reported.",
            "choices": list(TRUNCATION_MODES),
        },
    )
    padding_free: bool = field(
        default=True,
        metadata={
            "help": "Concatenate a batch into one row with position_ids and varlen boundaries (no padding tokens: "
            "measured faster on CPU and GPU, same loss). sdpa/eager models switch to hs2trl's packed attention; "
            "flash_attention_2/3 read the boundaries natively; other attention implementations fall back to padding."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        check_choices(self)  # a config built in Python passes no parser
        if len(set(self.attributes)) != len(self.attributes) or not self.attributes:
            raise Hs2Error(f"attributes: expected distinct names, got {self.attributes}")
        if self.use_liger_kernel and not torch.cuda.is_available():
            # Liger's kernels are Triton (GPU) kernels; on CPU they cannot run, so a GPU recipe stays usable here.
            say("use_liger_kernel needs a GPU; training without Liger kernels on this machine")
            self.use_liger_kernel = False
        if self.use_liger_kernel:
            # A reward model has no LM head: Liger's (fused linear) cross-entropy patches would replace its forward.
            self.liger_kernel_config = {
                "cross_entropy": False,
                "fused_linear_cross_entropy": False,
                **(self.liger_kernel_config or {}),
            }
