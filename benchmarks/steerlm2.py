"""SteerLM 2.0 training, tokens/s: `SteerLM2Trainer` in the padded, packed and shared-prompt layouts."""

from __future__ import annotations

import copy
import gc
import random
import statistics
import time

from benchmarks.measure import (
    PeakMemory,
    StepClock,
    interleaved,
    median,
    medians,
    quantiles,
    step_figures,
    trainer_settings,
)

STEERLM2_LAYOUTS = {"padded": dict(padding_free=False), "packed": dict(padding_free=True, shared_prompt=False),
                    "shared_prompt": dict(padding_free=True, shared_prompt=True)}


def steerlm2_rows(rows: list[dict], tokenizer, n: int, batch: int, timed_steps: int, max_length: int, seed: int = 0):
    """SteerLM 2.0 training rows from HelpSteer2 rows, in training order, and facts about them.

    A group is a prompt's own responses, filled up to n with responses of other prompts whose token length is
    closest to the mean of its own (so that a group looks like n samples of one policy). The timed prompts are the
    first `batch * timed_steps` in file order whose longest prompt+response fits max_length, sorted longest first
    in batches of similar length (what group_by_length does). Before them comes the untimed warm-up step, kept
    short: the `batch` shortest prompts, each with the n shortest responses. The log-prob fields are seeded random
    numbers (speed does not depend on them)."""
    from hs2trl.data.helpsteer2 import prompt_to_messages
    from hs2trl.steer.groups import tokenize_group
    from hs2trl.steer.steering import DEFAULT_INFERENCE_ATTRIBUTES

    rng = random.Random(seed)
    by_prompt: dict[str, list[str]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt"], []).append(r["response"])
    pool = [(len(tokenizer(text, add_special_tokens=False)["input_ids"]), prompt, text)
            for prompt, texts in by_prompt.items() for text in texts]
    used: set[str] = set()
    candidates, skipped = [], 0
    wanted = batch * timed_steps + 4 * batch  # the timed prompts, and a few to take the warm-up prompts from
    for prompt, own in by_prompt.items():
        if len(candidates) == wanted:
            break
        own = own[:n]
        target = statistics.mean(length for length, p, _ in pool if p == prompt)
        others = sorted((abs(length - target), rng.random(), text) for length, p, text in pool
                        if p != prompt and text not in used)
        responses = own + [text for _, _, text in others[: n - len(own)]]
        messages = prompt_to_messages(prompt)
        prompt_ids, response_ids = tokenize_group(tokenizer, messages, DEFAULT_INFERENCE_ATTRIBUTES, responses)
        if len(prompt_ids) + max(len(x) for x in response_ids) > max_length:
            skipped += 1
            continue
        used.update(responses)
        tokens = len(prompt_ids) * n + sum(len(x) for x in response_ids)
        candidates.append({"row": {"prompt": messages, "attributes": dict(DEFAULT_INFERENCE_ATTRIBUTES),
                                   "responses": responses,
                                   **{key: [round(rng.uniform(-300, -20), 3) for _ in responses]
                                      for key in ("steerlm_logps", "sft_logps", "attribute_logps")}},
                           "prompt_tokens": len(prompt_ids), "response_tokens": [len(x) for x in response_ids],
                           "tokens": tokens})
    timed = sorted(candidates[: batch * timed_steps], key=lambda c: -c["tokens"])
    # the warm-up step: the shortest prompts, each with the shortest responses (first-step costs, little compute)
    shortest = [text for _, _, text in sorted(pool)[:n]]
    warmup = []
    for c in sorted(candidates, key=lambda c: c["prompt_tokens"])[:batch]:
        prompt_ids, response_ids = tokenize_group(tokenizer, c["row"]["prompt"], DEFAULT_INFERENCE_ATTRIBUTES,
                                                  shortest)
        warmup.append({"row": {**c["row"], "responses": shortest},
                       "tokens": len(prompt_ids) * n + sum(len(x) for x in response_ids)})
    facts = {"timed_prompts": len(timed), "warmup_prompts": len(warmup), "responses_per_prompt": n,
             "prompts_skipped_over_max_length": skipped,
             "timed_prompt_token_lengths": quantiles([c["prompt_tokens"] for c in timed]),
             "timed_response_token_lengths": quantiles([x for c in timed for x in c["response_tokens"]]),
             "timed_sequence_tokens": sum(c["tokens"] for c in timed),
             "warmup_sequence_tokens": sum(c["tokens"] for c in warmup),
             "log_prob_fields": "seeded random (speed does not depend on them)"}
    return [c["row"] for c in warmup + timed], facts


def timed_steerlm2_run(layout: str, base_models: dict, data: dict, settings: dict) -> dict:
    """One SteerLM2Trainer run (one epoch over the rows, in their order: the first step is the warm-up) in `layout`;
    tokens = prompt + response per sequence, the same in every layout."""
    from datasets import Dataset

    from hs2trl.trainers.steerlm2_config import SteerLM2Config
    from hs2trl.trainers.steerlm2_trainer import SteerLM2Trainer

    clock = StepClock(settings["device"])
    args = SteerLM2Config(
        **trainer_settings(settings, f"steerlm2-{layout}"), per_device_train_batch_size=settings["steerlm2_batch"],
        num_train_epochs=1, train_sampling_strategy="sequential", **STEERLM2_LAYOUTS[layout],
    )
    trainer = SteerLM2Trainer(model=copy.deepcopy(base_models["causal"]), args=args,
                              train_dataset=Dataset.from_list(data["steerlm2"]),
                              processing_class=base_models["tokenizer"], callbacks=[clock.callback])
    assert trainer.layout == layout, (trainer.layout, layout)
    clock.trainer = trainer
    with PeakMemory(settings["device"]) as memory:
        trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    result = {
        **step_figures(clock.marks, 1),  # the first step is the warm-up batch
        "losses": [h["loss"] for h in logs], "kl": [h.get("kl") for h in logs],
        "peak_memory_mib": memory.peak_mib, "memory_growth_mib": memory.growth_mib,
    }
    del trainer
    gc.collect()
    return result


def run_prompt_sweep(base, settings, log=print) -> dict:
    """Packed vs shared-prompt forward + backward of the response log-probs (`batch_response_logps`) at several prompt
    lengths: 2 prompts x 4 responses of ~300 tokens (random ids), medians of `--repeats` interleaved timings. Where
    the shared prompt stops paying is where its saving ((n - 1) prompts per group) falls below its cost (gathering
    keys and values, one more attention segment per group)."""
    import torch

    from hs2trl.packing import packed_attention
    from hs2trl.steer.groups import collate_groups
    from hs2trl.steer.objective import batch_response_logps

    model = copy.deepcopy(base["causal"]).train()
    g = torch.Generator().manual_seed(0)
    out = {}
    for prompt_length in settings["prompt_sweep"]:
        groups = [(torch.randint(10, 40000, (prompt_length,), generator=g).tolist(),
                   [torch.randint(10, 40000, (int(n),), generator=g).tolist()
                    for n in torch.randint(250, 350, (4,), generator=g)]) for _ in range(2)]
        times = {"packed": [], "shared_prompt": []}
        cpu_times = {"packed": [], "shared_prompt": []}
        for r in range(settings["repeats"] + 1):  # the first round warms up
            for layout in (("packed", "shared_prompt") if r % 2 == 0 else ("shared_prompt", "packed")):
                batch = {k: v.to(settings["device"]) if torch.is_tensor(v) else v
                         for k, v in collate_groups(groups, layout).items()}
                with packed_attention(model, shared_prefix=layout == "shared_prompt"):
                    start, cpu_start = time.perf_counter(), time.process_time()
                    batch_response_logps(model, batch).sum().backward()
                    if settings["device"] == "cuda":
                        torch.cuda.synchronize()
                    elapsed, cpu_elapsed = time.perf_counter() - start, time.process_time() - cpu_start
                model.zero_grad(set_to_none=True)
                if r:
                    times[layout].append(elapsed)
                    cpu_times[layout].append(cpu_elapsed)
        sequence_tokens = int(batch["sequence_tokens"])
        row = {layout: {"seconds_median": median(t), "tokens_per_s": sequence_tokens / median(t)}
               for layout, t in times.items()}
        row["shared_prompt_speedup"] = row["packed"]["seconds_median"] / row["shared_prompt"]["seconds_median"]
        row["shared_prompt_speedup_cpu_time"] = median(cpu_times["packed"]) / median(cpu_times["shared_prompt"])
        row["tokens_saved_fraction"] = 3 * 2 * prompt_length / sequence_tokens
        out[str(prompt_length)] = row
        log(f"bench: prompt sweep {prompt_length:5d}-token prompts: shared_prompt x{row['shared_prompt_speedup']:.2f} "
            f"(cpu-time x{row['shared_prompt_speedup_cpu_time']:.2f}) vs packed "
            f"({100 * row['tokens_saved_fraction']:.0f}% of the tokens saved)")
    del model
    gc.collect()
    return out


def steerlm2_shipped_layout() -> str:
    """The layout SteerLM2Trainer uses by default (padding_free=True, shared_prompt's default)."""
    from hs2trl.steer.groups import SHARED_PROMPT_DEFAULT

    return "shared_prompt" if SHARED_PROMPT_DEFAULT else "packed"


def run_steerlm2(base, data, settings, log=print) -> dict:
    repeats = settings["steerlm2_repeats"]
    runs = interleaved(
        settings.get("steerlm2_layouts", list(STEERLM2_LAYOUTS)), repeats,
        lambda layout: timed_steerlm2_run(layout, base, data, settings),
        lambda r, layout, x: (f"bench: steerlm2 repeat {r + 1}/{repeats} {layout:13s} {x['tokens_per_s']:8.1f} tok/s "
                              f"(cpu-time {x['tokens_per_cpu_s']:.1f}) loss {x['losses'][-1]:.4f} "
                              f"peak +{x['memory_growth_mib']:.0f} MiB"), log)
    summary = {
        layout: {**medians(results, "tokens_per_s", "tokens_per_cpu_s", "peak_memory_mib", "memory_growth_mib"),
                 "loss_curve": results[0]["losses"], "runs": results}
        for layout, results in runs.items()
    }
    out = {"configs": summary, "data": data["steerlm2_facts"], "batch_prompts": settings["steerlm2_batch"]}
    padded = summary.get("padded")
    for layout in ("packed", "shared_prompt"):
        if padded is None or layout not in summary:
            continue
        ours = summary[layout]
        out[f"{layout}_speedup"] = ours["tokens_per_s_median"] / padded["tokens_per_s_median"]
        out[f"{layout}_speedup_cpu_time"] = ours["tokens_per_cpu_s_median"] / padded["tokens_per_cpu_s_median"]
        out[f"{layout}_memory_growth_ratio"] = (ours["memory_growth_mib_median"]
                                               / max(padded["memory_growth_mib_median"], 1e-9))
        out[f"{layout}_peak_memory_ratio"] = ours["peak_memory_mib_median"] / padded["peak_memory_mib_median"]
        out[f"{layout}_loss_curve_max_rel_diff"] = max(abs(a - b) / abs(b) for a, b in
                                                       zip(ours["loss_curve"], padded["loss_curve"], strict=False))
    return out


