"""RM training, tokens/s: stock TRL `RewardTrainer` vs `RegressionRewardTrainer` padded, padding-free and bf16."""

from __future__ import annotations

import copy
import gc
import math
import warnings

from benchmarks.measure import PeakMemory, StepClock, interleaved, median, medians, step_figures, trainer_settings
from benchmarks.workload import ATTRIBUTES

# Stock TRL's RewardConfig still sets `gradient_checkpointing`; transformers 5 warns about the name on every parse.
warnings.filterwarnings("ignore", message="`(is_)?gradient_checkpointing` is deprecated", category=FutureWarning)


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
        out["speedup_per_repeat"] = [o["tokens_per_s"] / t["tokens_per_s"] for o, t in
                                     zip(runs["ours"], runs["trl"], strict=False)]
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
        out["bf16_final_loss_rel_diff_vs_fp32"] = (abs(bf16["final_loss"] - fp32["final_loss"])
                                                   / abs(fp32["final_loss"]))
    if "ours_padded" in summary and "ours" in summary:
        a, b = summary["ours"]["final_loss"], summary["ours_padded"]["final_loss"]
        out["final_loss_rel_diff_padding_free_vs_padded"] = abs(a - b) / abs(b)
        curve_a, curve_b = summary["ours"]["loss_curve"], summary["ours_padded"]["loss_curve"]
        out["loss_curve_max_rel_diff"] = max(abs(x - y) / abs(y) for x, y in zip(curve_a, curve_b, strict=False))
        out["speedup_padding_free_vs_padded"] = (summary["ours"]["tokens_per_s_median"]
                                                 / summary["ours_padded"]["tokens_per_s_median"])
    return out

