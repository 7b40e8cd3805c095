"""`SteerLM2Config`: the settings of `SteerLM2Trainer` (TRL's config way)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hs2trl.rm.attributes import ATTRIBUTES
from hs2trl.runtime.errors import Hs2Error
from hs2trl.steer.groups import SHARED_PROMPT_DEFAULT
from hs2trl.trl_internals import BaseConfig


@dataclass
class SteerLM2Config(BaseConfig):
    """`TrainingArguments` for `SteerLM2Trainer`. Batch sizes count prompts (each with its n responses).

    Defaults follow the paper's SteerLM 2.0 run: constant LR 1e-7, 2 epochs (global batch 128 prompts is set in the
    recipe through per-device batch size x processes x gradient accumulation)."""

    learning_rate: float = field(default=1e-7, metadata={"help": "AdamW learning rate (paper: 1e-7, constant)."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Learning-rate schedule (paper: constant)."})
    num_train_epochs: float = field(default=2.0, metadata={"help": "Epochs over the sampled prompts (paper: 2)."})
    # None, not TRL's True: transformers 5 warns about the deprecated name whenever it is set; use
    # `activation_checkpointing: true` to recompute activations in the backward pass.
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of activation_checkpointing (transformers 5)."}
    )
    attributes: list[str] = field(
        default_factory=lambda: list(ATTRIBUTES),
        metadata={"help": "Attribute names of the conditioning string, in order."},
    )
    max_length: int | None = field(
        default=4096,
        metadata={
            "help": "Prompts whose longest prompt+response sequence is longer are dropped (counted and reported; "
            "truncating would change the log-probs the weights were computed with). None: no limit."
        },
    )
    length_normalization: bool = field(
        default=False,
        metadata={
            "help": "Divide each prompt's loss by the mean response length (tokens) of its n responses, as "
            "NeMo-Aligner does. Off: the plain formula -Σ_i (w'_i - b'_i) log Q_θ(y_i|a,x)."
        },
    )
    disable_dropout: bool = field(
        default=True, metadata={"help": "Turn dropout off so that b' is computed with the same policy as log Q'."}
    )
    padding_free: bool = field(
        default=True,
        metadata={
            "help": "Pack a batch's sequences into one row with position_ids and varlen boundaries (no padding; the "
            "LM head runs only where a response token is predicted). sdpa/eager models switch to hs2trl's packed "
            "attention; other attention implementations fall back to padded batches. Same log-probs and loss."
        },
    )
    shared_prompt: bool = field(
        default=SHARED_PROMPT_DEFAULT,
        metadata={
            "help": "With padding_free: put each prompt once in the packed row, followed by its n responses, which "
            "all attend to it (the prompt goes through the model once instead of n times). Same log-probs."
        },
    )
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments of `AutoModelForCausalLM.from_pretrained` (model given as a path)."},
    )
    chat_template_path: str | None = field(
        default=None, metadata={"help": "A .jinja chat template or a tokenizer id whose template to use."}
    )
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes for tokenising the dataset."})
    pad_to_multiple_of: int | None = field(
        default=None, metadata={"help": "Pad sequence lengths to a multiple of this."}
    )

    def __post_init__(self):
        super().__post_init__()
        if len(set(self.attributes)) != len(self.attributes) or not self.attributes:
            raise Hs2Error(f"attributes: expected distinct names, got {self.attributes}")
        if isinstance(self.model_init_kwargs, str):
            import json

            self.model_init_kwargs = json.loads(self.model_init_kwargs)
