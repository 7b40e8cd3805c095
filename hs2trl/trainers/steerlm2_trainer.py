"""`SteerLM2Trainer`, a TRL trainer for SteerLM 2.0 (the objective is `hs2trl.steer.objective`).

`SteerLM2Trainer` takes the dataset written by `hs2 steerlm2`'s sampling stage: one row per prompt with
`prompt` (chat messages), `attributes` (target levels), `responses` (n strings) and the three precomputed
`steerlm_logps`, `sft_logps`, `attribute_logps` (each n floats). A training batch holds whole prompts:
`per_device_train_batch_size` counts prompts, each bringing its n sequences.
"""


from collections import defaultdict

import torch
from accelerate import PartialState

from hs2trl.packing import attention_implementation, prepare_for_packing
from hs2trl.runtime.errors import Hs2Error
from hs2trl.runtime.say import say
from hs2trl.steer.groups import DataCollatorForSteerLM2, row_attributes, tokenize_group, validate_group
from hs2trl.steer.objective import batch_response_logps, normalised_weights, steerlm2_loss
from hs2trl.trainers.steerlm2_config import SteerLM2Config
from hs2trl.trl_internals import BaseTrainer, disable_dropout_in_model

# ----------------------------------------------------------------------------------------------- the mathematics


# ------------------------------------------------------------------------------------------------ config, data


# ---------------------------------------------------------------------------------------------------- the trainer


class SteerLM2Trainer(BaseTrainer):
    """SteerLM 2.0 policy training on pre-sampled responses (see the module doc for the data and the loss).

    `model`: a causal LM or its path (the SteerLM model, or the previous iteration's policy). Nothing else is loaded:
    `log Q'`, `log P(y|x)` and `log P(a|x,y)` come precomputed in the dataset. Logs `loss`, `kl` (the KL monitor
    `Σ_i w'_i log(w'_i / b'_i)`), `weights_entropy` (entropy of w': low means one response dominates) and
    `num_tokens`. Saves a plain causal LM.
    """

    _tag_names = ["trl", "hs2trl", "steerlm", "steerlm2"]
    _name = "SteerLM 2.0"
    _paper = {
        "title": "HelpSteer2: Open-source dataset for training top-performing reward models",
        "id": "2406.08673",
        "citation": "@article{wang2024helpsteer2,\n  title={HelpSteer2: Open-source dataset for training "
        "top-performing reward models},\n  author={Wang, Zhilin and Dong, Yi and Delalleau, Olivier and Zeng, Jiaqi "
        "and Shen, Gerald and Egert, Daniel and Zhang, Jimmy J. and Sreedhar, Makesh Narsimhan and Kuchaiev, "
        "Oleksii},\n  journal={arXiv preprint arXiv:2406.08673},\n  year={2024}\n}",
    }

    def __init__(self, model, args: SteerLM2Config | None = None, data_collator=None, train_dataset=None,
                 eval_dataset=None, processing_class=None, callbacks=None, optimizers=(None, None),
                 peft_config=None):
        from transformers import AutoModelForCausalLM

        from hs2trl.runtime.models import load_tokenizer
        from hs2trl.runtime.pretrained import resolve_model

        args = args or SteerLM2Config("steerlm2-model")
        if train_dataset is None:
            raise ValueError("`train_dataset` is required")
        if processing_class is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            processing_class = load_tokenizer(name, args.chat_template_path)
        if isinstance(model, str):
            kwargs = dict(args.model_init_kwargs or {})
            kwargs.setdefault("dtype", "float32")
            model = AutoModelForCausalLM.from_pretrained(resolve_model(model), **kwargs)
        if len(processing_class) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(processing_class))
        model.config.pad_token_id = processing_class.pad_token_id
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
            if args.gradient_checkpointing:
                model.enable_input_require_grads()
        if args.disable_dropout:
            disable_dropout_in_model(model)

        self.dropped_rows: dict[str, int] = {}
        train_dataset = self._prepare_dataset(train_dataset, processing_class, args, "train")
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: self._prepare_dataset(v, processing_class, args, k) for k, v in eval_dataset.items()}
        elif eval_dataset is not None:
            eval_dataset = self._prepare_dataset(eval_dataset, processing_class, args, "eval")
        self.layout = _training_layout(model, args)
        if data_collator is None:
            data_collator = DataCollatorForSteerLM2(processing_class.pad_token_id, args.pad_to_multiple_of,
                                                    self.layout)

        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, callbacks=callbacks,
                         optimizers=optimizers)
        self.model_accepts_loss_kwargs = False  # our loss is per prompt: let Trainer scale it for accumulation
        self.can_return_loss = True
        self.label_names = []
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._total_train_tokens = 0
        self.model.add_model_tags(self._tag_names)

    # -- data

    def _prepare_dataset(self, dataset, tokenizer, args, dataset_name):
        """Rows from the sampling stage -> `{prompt_ids, response_ids, log_weights, steerlm_logps}`."""
        if "prompt_ids" in dataset.column_names:
            return dataset
        sizes = set()
        for i, row in enumerate(dataset):
            sizes.add(validate_group(row, f"{dataset_name} dataset: row {i + 1}"))
        if len(sizes) > 1:
            raise Hs2Error(f"{dataset_name} dataset: prompts have different numbers of responses ({sorted(sizes)}); "
                           "a batch keeps each prompt's responses together and needs the same n everywhere")
        attribute_names = list(args.attributes)

        def tokenize(row):
            prompt_ids, response_ids = tokenize_group(tokenizer, row["prompt"], row_attributes(row, attribute_names),
                                                      row["responses"], attribute_names)
            log_weights = [a + s - q
                           for a, s, q in zip(row["attribute_logps"], row["sft_logps"], row["steerlm_logps"])]
            return {"prompt_ids": prompt_ids, "response_ids": response_ids, "log_weights": log_weights,
                    "steerlm_logps": [float(q) for q in row["steerlm_logps"]],
                    "length": len(prompt_ids) + max(len(r) for r in response_ids)}

        with PartialState().main_process_first():
            dataset = dataset.map(tokenize, remove_columns=dataset.column_names, num_proc=args.dataset_num_proc,
                                  desc=f"Tokenizing {dataset_name} dataset")
            if args.max_length is not None:
                too_long = sum(1 for n in dataset["length"] if n > args.max_length)
                self.dropped_rows[dataset_name] = too_long
                if too_long:
                    dataset = dataset.filter(lambda row: row["length"] <= args.max_length,
                                             desc="Dropping over-long prompts")
                    say(f"{dataset_name}: {too_long} of {too_long + len(dataset)} prompts have a "
                        f"prompt+response longer than max_length={args.max_length} tokens and were dropped")
                if len(dataset) == 0:
                    raise Hs2Error(f"{dataset_name} dataset: every prompt is longer than max_length={args.max_length}")
        return dataset

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["prompt_ids", "response_ids", "log_weights", "steerlm_logps", "length"]

    # -- loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        log_weights, steerlm_logps = inputs["log_weights"], inputs["steerlm_logps"]
        num_prompts, n = log_weights.shape
        policy_logps = batch_response_logps(model, inputs).view(num_prompts, n)
        scale = inputs["response_lengths"].mean(-1).clamp(min=1.0) if self.args.length_normalization else None
        loss, kl = steerlm2_loss(policy_logps, steerlm_logps, log_weights, length_scale=scale)

        with torch.no_grad():
            w, _ = normalised_weights(policy_logps, steerlm_logps, log_weights)
            entropy = -(w * torch.log(w.clamp(min=1e-30))).sum(-1).mean()
            gathered = self.accelerator.gather_for_metrics(torch.stack([kl, entropy]).unsqueeze(0)).mean(0)
        self._metrics[mode]["kl"].append(gathered[0].item())
        self._metrics[mode]["weights_entropy"].append(gathered[1].item())
        if mode == "train":
            tokens = inputs["sequence_tokens"]  # prompt + response per sequence, in every layout
            self._total_train_tokens += self.accelerator.gather_for_metrics(tokens).sum().item()
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return (loss, {"policy_logps": policy_logps.detach()}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = {key: sum(val) / len(val) for key, val in self._metrics[mode].items() if val}
        if mode == "eval":
            metrics = {f"eval_{key}": val for key, val in metrics.items()}
        logs.update(metrics)
        super().log(logs, start_time)
        self._metrics[mode].clear()

    def _save_checkpoint(self, model, trial):
        from pathlib import Path

        self.create_model_card(model_name=self.args.hub_model_id.split("/")[-1] if self.args.hub_model_id
                               else Path(self.args.output_dir).name)
        super()._save_checkpoint(model, trial)


def _training_layout(model, args: SteerLM2Config) -> str:
    """`padded`, `packed` or `shared_prompt` (see `collate_groups`), from the config and the model's attention."""
    if not args.padding_free:
        return "padded"
    if prepare_for_packing(model, shared_prefix=args.shared_prompt):
        return "shared_prompt" if args.shared_prompt else "packed"
    say(f"padding_free: attention implementation '{attention_implementation(model)}' cannot separate "
        "packed sequences; training with padded batches")
    return "padded"

