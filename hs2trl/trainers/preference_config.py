"""`PreferenceRewardConfig`: TRL's `RewardConfig` with the preference-strength losses of HelpSteer2-Preference."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import RewardConfig

from hs2trl.runtime.choices import check_choices

# HelpSteer2-Preference (arXiv 2410.01257), m = |preference strength|: -log σ(r_c - r_r), -log σ(r_c - r_r - m),
# -m · log σ(r_c - r_r); each averaged over the pairs of a batch (NeMo-Aligner averages one pair per micro-batch).
PREFERENCE_LOSSES = ("bt", "margin_bt", "scaled_bt")


@dataclass
class PreferenceRewardConfig(RewardConfig):
    """`RewardConfig` plus the loss that reads each pair's preference strength (the `margin` column), and hs2trl's
    padding-free batches. The best checkpoint is the one with the lowest eval loss, as for the regression RM."""

    loss: str = field(
        default="scaled_bt",
        metadata={
            "help": "How a pair's strength m (its `margin` column, 1 where absent) enters the Bradley-Terry loss: "
            "'bt' -log σ(r_c - r_r) (m unused), 'margin_bt' -log σ(r_c - r_r - m), 'scaled_bt' -m · log σ(r_c - r_r) "
            "(HelpSteer2-Preference's best).",
            "choices": list(PREFERENCE_LOSSES),
        },
    )
    padding_free: bool = field(
        default=True,
        metadata={
            "help": "Concatenate a batch's chosen and rejected sequences into one row with position_ids and varlen "
            "boundaries (no padding tokens, same loss). sdpa/eager models switch to hs2trl's packed attention; "
            "flash_attention_2/3 read the boundaries natively; other attention implementations fall back to padding."
        },
    )
    metric_for_best_model: str | None = field(
        default="eval_loss",
        metadata={"help": "With load_best_model_at_end: the checkpoint with the lowest eval loss is kept."},
    )

    def __post_init__(self):
        super().__post_init__()
        check_choices(self)  # a config built in Python passes no parser
