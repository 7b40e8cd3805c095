"""SteerLM 2.0 sampling: n responses per prompt under the target attributes, and the three log-probabilities.

For each prompt x with target attributes a, one iteration writes a row
`{"id", "prompt", "attributes", "responses": [n], "steerlm_logps": [n], "sft_logps": [n], "attribute_logps": [n],
"predictions": [n x k]}` where

- `responses` are sampled from the current policy Q' under `condition(x, a)` (T 0.7, top-p 0.9 in the paper);
- `steerlm_logps` = log Q'(y|a,x): summed response log-probs under the same (sampling) model, conditioned prompt;
- `sft_logps` = log P(y|x): the same response tokens under the SFT model with the plain prompt (no attribute
  system message; a template that adds a default system prompt, like SmolLM2's, adds it here as it did in SFT);
- `attribute_logps` = log P(a|x,y): `attribute_log_likelihood(RM predictions for [x, y], a)`.

The response tokens run from the first token after the assistant header through the end-of-turn token
(`<|im_end|>`): stopping is part of y. Log-probs are at temperature 1 (the models' own distributions), computed by
the trainer's own function (`batch_response_logps`) in its default layout (packed, each prompt once), so that log Q'
here and log Q_θ in training agree at the start of an iteration.

The work is done in passes, one model in memory at a time (generate+Q' with the policy, then the SFT model, then the
RM). Each pass (`hs2trl.runtime.resumable`) appends per chunk to `parts/<pass>.rank<R>.jsonl` and skips prompts
already there, so a killed run resumes where it stopped; with several processes (accelerate launch) each rank takes
every R-th remaining prompt.
The merged result is written atomically to `samples.jsonl` (its existence means the iteration's sampling is done).
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from hs2trl.runtime.errors import Hs2Error
from hs2trl.runtime.models import Lazy, load_causal_lm, spread_over_gpus, torch_dtype
from hs2trl.runtime.say import say

TARGET_FROM_DATASET = "dataset"


# ------------------------------------------------------------------------------------------------------ prompts


def target_levels(record, spec: str, attributes: Sequence[str]) -> dict[str, int]:
    """The target attributes of one prompt: a fixed attribute string, or (`dataset`) the row's own levels: the RM's
    SteerLM labels of its original response (`label_<a>`, from `hs2 annotate` / `hs2 steerlm`'s annotated.jsonl)
    when present, else the row's attribute columns (HelpSteer2 gold scores)."""
    from hs2trl.steer.steering import attribute_values, parse_attribute_string

    if spec != TARGET_FROM_DATASET:
        return parse_attribute_string(spec, attributes)
    # hs2 annotate's SteerLM labels (label_<a>) first, else the row's own scores (HelpSteer2 columns)
    prefix = "label_" if all(record.data.get(f"label_{a}") is not None for a in attributes) else ""
    missing = [a for a in attributes if record.data.get(prefix + a) is None]
    if missing:
        raise Hs2Error(f"{record.where(missing[0])}: target_attributes=dataset needs every attribute's level in the "
                       f"row ({', '.join(attributes)}, or label_<attribute> from `hs2 annotate`)")
    try:
        return attribute_values({a: record.data[prefix + a] for a in attributes}, attributes)
    except Hs2Error as err:
        raise Hs2Error(f"{record.where()}: {err}") from None


def load_prompts(source: str, split: str, target_spec: str, attributes: Sequence[str],
                 max_prompts: int | None = None, seed: int = 42) -> list[dict]:
    """Distinct prompts of a dataset (first row wins for repeated prompts, as in HelpSteer2's pairs) as
    `{"id", "prompt", "attributes"}`; with `max_prompts`, a seeded random subset. Ids are stable for a given
    dataset, `max_prompts` and seed: they are what resuming matches on."""
    from hs2trl.data.conversations import prompt_of
    from hs2trl.data.sources import read_records

    records = read_records(source, split)
    seen, prompts = set(), []
    for record in records:
        messages = prompt_of(record)
        key = json.dumps(messages, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        prompts.append({"prompt": messages, "attributes": target_levels(record, target_spec, attributes),
                        "source_row": record.row})
    if not prompts:
        raise Hs2Error(f"{source}: no prompts")
    if max_prompts is not None and max_prompts < len(prompts):
        prompts = sorted(random.Random(seed).sample(prompts, max_prompts), key=lambda p: p["source_row"])
    return [{"id": f"{p['source_row']}", **p} for p in prompts]


# ------------------------------------------------------------------------------------------ resumable passes


def iteration_pass(parts_dir: str | Path, name: str, items: Sequence[dict], fn: Callable[[list[dict]], list[dict]],
                   chunk_size: int, desc: str) -> dict[str, dict]:
    """One pass of an iteration (`hs2trl.runtime.resumable`): `fn` over the prompts not yet in any
    `parts_dir/<name>.rank*.jsonl`, each rank appending its share to its own part; every row by id once all
    are done."""
    from accelerate import PartialState

    from hs2trl.runtime.resumable import RankParts, run_pass

    return run_pass(items, RankParts(Path(parts_dir), name), fn, chunk_size, desc, ranks=PartialState(), unit="prompt",
                    resuming=lambda n: f"{desc}: {n} of {len(items)} prompts already done, resuming")


# ------------------------------------------------------------------------------------------------- log-probs


@torch.no_grad()
def sequence_logps(model, pad_token_id: int, prompts_ids: Sequence[Sequence[int]],
                   responses_ids: Sequence[Sequence[int]], batch_size: int = 8) -> list[float]:
    """Summed log-probs of each response given its prompt (right-padded, length-sorted batches), input order: the
    plain padded reference (the stage itself uses `groups_logps`)."""
    from hs2trl.rm.scoring import length_sorted_batches
    from hs2trl.steer.objective import response_logps

    device = next(model.parameters()).device
    out = [0.0] * len(prompts_ids)
    lengths = [len(p) + len(r) for p, r in zip(prompts_ids, responses_ids)]
    for batch in length_sorted_batches(lengths, batch_size):
        width = max(lengths[i] for i in batch)
        input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        response_mask = torch.zeros_like(input_ids)
        for row, i in enumerate(batch):
            p, r = list(prompts_ids[i]), list(responses_ids[i])
            input_ids[row, : len(p) + len(r)] = torch.as_tensor(p + r)
            attention_mask[row, : len(p) + len(r)] = 1
            response_mask[row, len(p) : len(p) + len(r)] = 1
        logps = response_logps(model, input_ids.to(device), attention_mask.to(device), response_mask.to(device))
        for row, i in enumerate(batch):
            out[i] = float(logps[row])
    return out


@torch.no_grad()
def groups_logps(model, pad_token_id: int, groups: Sequence[tuple[list[int], list[list[int]]]],
                 batch_size: int = 8) -> list[list[float]]:
    """Summed log-probs of each group's responses given its prompt, in input order: batches of whole groups
    (about `batch_size` sequences each, longest first) through `batch_response_logps`, the trainer's own function,
    in its default layout (packed, each prompt once with `shared_prompt`; padded when the model's attention cannot
    take packed rows)."""
    from hs2trl.packing import packed_attention
    from hs2trl.rm.scoring import input_device, length_sorted_batches
    from hs2trl.steer.groups import SHARED_PROMPT_DEFAULT, collate_groups
    from hs2trl.steer.objective import batch_response_logps

    device = input_device(model)
    sizes = [len(responses) for _, responses in groups]
    per_batch = max(1, batch_size // max(1, max(sizes, default=1)))
    lengths = [len(prompt) * len(rs) + sum(len(r) for r in rs) for prompt, rs in groups]
    out: list[list[float]] = [[] for _ in groups]
    with packed_attention(model, shared_prefix=SHARED_PROMPT_DEFAULT) as packable:
        layout = ("shared_prompt" if SHARED_PROMPT_DEFAULT else "packed") if packable else "padded"
        for batch in length_sorted_batches(lengths, per_batch):
            inputs = collate_groups([groups[i] for i in batch], layout, pad_token_id)
            inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
            logps = batch_response_logps(model, inputs).tolist()
            for i in batch:
                out[i], logps = logps[: sizes[i]], logps[sizes[i]:]
    return out


def group_logps(model, tokenizer, rows: Sequence[dict], conditioned: bool, attributes: Sequence[str],
                batch_size: int) -> list[list[float]]:
    """Per row, the summed log-probs of its responses under `model` (conditioned prompt or the plain prompt)."""
    from hs2trl.steer.groups import tokenize_group

    groups = [tokenize_group(tokenizer, row["prompt"], row["attributes"], row["responses"], attributes,
                             conditioned=conditioned) for row in rows]
    return groups_logps(model, tokenizer.pad_token_id, groups, batch_size)


# ------------------------------------------------------------------------------------------------ the passes


def sample_iteration(prompts: Sequence[dict], folder: str | Path, policy: str, sft_model: str, reward_model: str,
                     attributes: Sequence[str], num_samples: int, temperature: float, top_p: float,
                     max_new_tokens: int, generation_batch_size: int = 8, scoring_batch_size: int = 8,
                     chunk_size: int = 64, concentration: float = 24.0, use_vllm: bool = False,
                     dtype: str = "auto", seed: int = 42, reward_url: str | None = None,
                     reward_api_key_env: str | None = None) -> Path:
    """Write (or finish) `folder/samples.jsonl` for one SteerLM 2.0 iteration; returns its path. The RM is
    `reward_model`, loaded here, or the `hs2 serve-rm` servers at `reward_url`."""
    from accelerate import PartialState
    from transformers import set_seed

    from hs2trl.data.records import write_jsonl
    from hs2trl.rm.scorer import open_scorer
    from hs2trl.runtime.models import load_tokenizer
    from hs2trl.steer.generation import sample_hf, sample_vllm
    from hs2trl.steer.objective import attribute_log_likelihood
    from hs2trl.steer.steering import condition

    state = PartialState()
    folder = Path(folder)
    final = folder / "samples.jsonl"
    if final.exists():
        return final
    parts = folder / "parts"
    tokenizer = load_tokenizer(policy)
    items = [dict(p) for p in prompts]
    set_seed(seed + state.process_index)

    # Pass 1: sample from the policy, then score the samples under it (log Q'); the model is loaded once for both.
    policy_model = Lazy(lambda: load_causal_lm(policy, dtype))

    def generate(chunk):
        conditioned = [condition(p["prompt"], p["attributes"], attributes) for p in chunk]
        if use_vllm:
            responses = sample_vllm(policy, tokenizer, conditioned, num_samples, temperature, top_p, max_new_tokens)
        else:
            responses = sample_hf(policy_model(), tokenizer, conditioned, num_samples, temperature, top_p,
                                  max_new_tokens, generation_batch_size)
        return [{"id": p["id"], "prompt": p["prompt"], "attributes": p["attributes"], "responses": r}
                for p, r in zip(chunk, responses)]

    # vLLM loads the model once per call: one chunk per rank.
    generated = iteration_pass(parts, "generate", items, generate, len(items) if use_vllm else chunk_size,
                               "SteerLM 2.0: sampling")
    rows = [generated[item["id"]] for item in items]
    for got, want in zip(rows, items):  # parts from an earlier run must belong to these prompts
        if got["prompt"] != want["prompt"] or got["attributes"] != want["attributes"]:
            raise Hs2Error(f"{parts}: prompt {want['id']} differs from the one sampled before (dataset, max_prompts, "
                           "seed or target_attributes changed); remove that folder to start afresh")
    q = iteration_pass(parts, "steerlm_logps", rows, lambda chunk: [
        {"id": r["id"], "steerlm_logps": v}
        for r, v in zip(chunk, group_logps(policy_model(), tokenizer, chunk, True, attributes, scoring_batch_size))
    ], chunk_size, "SteerLM 2.0: log Q'(y|a,x)")
    policy_model.free()

    # Pass 2: the SFT model, plain prompt (log P(y|x)). Same tokenizer: SteerLM is fine-tuned from the SFT model.
    def load_sft():
        model = load_causal_lm(sft_model, dtype)
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            raise Hs2Error(f"sft_model '{sft_model}': its vocabulary is smaller than the policy tokenizer's "
                           f"({model.get_input_embeddings().num_embeddings} < {len(tokenizer)}); use the SFT model "
                           "the SteerLM model was trained from")
        return model

    sft = Lazy(load_sft)
    p = iteration_pass(parts, "sft_logps", rows, lambda chunk: [
        {"id": r["id"], "sft_logps": v}
        for r, v in zip(chunk, group_logps(sft(), tokenizer, chunk, False, attributes, scoring_batch_size))
    ], chunk_size, "SteerLM 2.0: log P(y|x)")
    sft.free()

    # Pass 3: the reward model on the plain conversation [x, y] (log P(a|x,y) through the Beta model).
    def load_rm():
        scorer = open_scorer(reward_model, reward_url, reward_api_key_env,
                             dtype=str(torch_dtype(dtype)).removeprefix("torch."), device=str(state.device),
                             spread=spread_over_gpus(), batch_size=scoring_batch_size)
        if scorer.attributes != list(attributes):
            raise Hs2Error(f"reward_model '{scorer.name}': its outputs are {scorer.attributes}, the conditioning "
                           f"uses {list(attributes)}")
        return scorer

    rm = Lazy(load_rm)

    def attribute_pass(chunk):
        conversations = [r["prompt"] + [{"role": "assistant", "content": y}] for r in chunk for y in r["responses"]]
        predictions = rm().scores(conversations)
        out, start = [], 0
        for r in chunk:
            n = len(r["responses"])
            pred = predictions[start : start + n]
            target = torch.tensor([[r["attributes"][a] for a in attributes]] * n)
            logp = attribute_log_likelihood(pred, target, concentration)
            out.append({"id": r["id"], "predictions": [[round(v, 4) for v in x] for x in pred.tolist()],
                        "attribute_logps": logp.tolist()})
            start += n
        return out

    a = iteration_pass(parts, "attribute_logps", rows, attribute_pass, chunk_size, "SteerLM 2.0: log P(a|x,y)")
    rm.free()

    if state.is_main_process:
        merged = [{**r, "steerlm_logps": q[r["id"]]["steerlm_logps"], "sft_logps": p[r["id"]]["sft_logps"],
                   "attribute_logps": a[r["id"]]["attribute_logps"], "predictions": a[r["id"]]["predictions"]}
                  for r in rows]
        tmp = final.with_suffix(".jsonl.tmp")
        write_jsonl(tmp, merged)
        tmp.replace(final)
        shutil.rmtree(parts, ignore_errors=True)  # everything is in samples.jsonl now
        say(f"{len(merged)} prompts x {num_samples} samples written to {final}")
    state.wait_for_everyone()
    return final


def read_samples(path: str | Path) -> list[dict]:
    from hs2trl.data.sources import read_records
    from hs2trl.steer.groups import validate_group

    records = read_records(str(path))
    for r in records:
        validate_group(r.data, r.where())
    return [r.data for r in records]
