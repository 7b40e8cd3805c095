"""The online RL reward step, s/step: TRL's model-as-reward path vs hs2's reward callable in real RLOOTrainers."""

from __future__ import annotations

import time

from benchmarks.measure import interleaved, medians


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
    from hs2trl.rm.scorer import LocalScorer

    tok, device = base["tokenizer"], settings["device"]
    source = settings["work_dir"] / "rloo-rm"
    base["regression"].save_pretrained(source)
    tok.save_pretrained(source)
    export_scalar_model(str(source), "goodness", str(settings["work_dir"] / "rloo-rm-goodness"))
    dtype = next(base["scorer"].parameters()).dtype
    exported = AutoModelForSequenceClassification.from_pretrained(settings["work_dir"] / "rloo-rm-goodness",
                                                                  dtype=dtype).to(device).eval()
    ours_reward = SteerLMReward(LocalScorer.of(base["scorer"], tok, batch_size=settings["rloo_batch_size"]),
                                WEIGHT_PRESETS["goodness"])
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
    runs = interleaved(
        ["trl", "ours"], repeats, step,
        lambda r, kind, x: f"bench: rloo reward repeat {r + 1}/{repeats} {kind:4s} {x['seconds']:.3f} s", log)
    diff = float((runs["ours"][0]["rewards"] - runs["trl"][0]["rewards"]).abs().max())
    summary = {kind: medians(results, "seconds", "cpu_seconds") for kind, results in runs.items()}
    return {
        "configs": summary, "completions": len(completions), "reward_batch_size": settings["rloo_batch_size"],
        "speedup_vs_trl": summary["trl"]["seconds_median"] / summary["ours"]["seconds_median"],
        "speedup_vs_trl_cpu_time": summary["trl"]["cpu_seconds_median"] / summary["ours"]["cpu_seconds_median"],
        "max_abs_reward_diff": diff,
    }


