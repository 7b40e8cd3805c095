"""GPU checks on a 1B-class Llama (Llama-3.2-1B's shape, random weights) in bf16: RM training vs stock TRL, and
the SteerLM 2.0 layouts."""

from __future__ import annotations

import math

from benchmarks.gpu_bench import log_as_gpu_check
from benchmarks.measure import default_device, free_gpu, mfu, param_counts
from benchmarks.rm_training import run_training, timed_training_run
from benchmarks.steerlm2 import run_steerlm2, timed_steerlm2_run
from benchmarks.workload import SHARED_TRAIN, prepare

LLAMA_1B = dict(  # Llama-3.2-1B's shape (random weights: speed does not depend on them)
    hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
    vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=True,
    rms_norm_eps=1e-5, hidden_act="silu",
)
TINY_LLAMA = dict(  # --smoke: the same code paths on a CPU
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True,
)


def _data_path(args) -> str | None:
    """--data, else the 1,000 real HelpSteer2 rows beside the checkout, else None (synthetic rows)."""
    if args.data:
        return args.data
    return str(SHARED_TRAIN) if SHARED_TRAIN.is_file() else None


def _llama_settings(ctx, **extra) -> dict:
    """bench settings for the 1B (or --smoke tiny) Llama with random weights: bf16 mixed precision on a GPU, fused
    AdamW, activation checkpointing off; base copies wait on the CPU (the trainer moves its own copy)."""
    from transformers import LlamaConfig

    args, device = ctx["args"], default_device()
    config = LlamaConfig(**(TINY_LLAMA if args.smoke else LLAMA_1B))
    config._attn_implementation = "sdpa"
    return {
        "model": ctx["model_dir"], "model_config": config, "data": _data_path(args),
        "batch_size": args.llama1b_batch, "steps": args.llama1b_steps, "warmup_steps": args.warmup_steps,
        "repeats": args.repeats, "padded_repeats": 0,
        "max_length": args.max_length, "lr": 1e-5, "annotate_rows": 0, "annotate_batch_size": 1, "device": device,
        "base_device": "cpu", "bf16": device == "cuda", "gradient_checkpointing": False,
        "optim": "adamw_torch_fused" if device == "cuda" else "adamw_torch",
        "work_dir": ctx["work"] / "llama1b", **extra,
    }


def _is_oom(err: BaseException) -> bool:
    return "out of memory" in str(err).lower()


def check_llama1b_rm(ctx) -> dict:
    """RegressionRewardTrainer (packed) vs stock TRL RewardTrainer on a 1B Llama in bf16: tokens/s, MFU, memory.
    Both at the same sequences per step; on out-of-memory both retry at half the batch (like for like)."""
    args = ctx["args"]
    out: dict = {"attempts": []}
    batch = args.llama1b_batch
    while batch >= 2:
        settings = _llama_settings(ctx, batch_size=batch, models=("regression", "bt"),
                                   train_kinds=["trl", "ours"])
        try:
            base, data = prepare(settings)
            params, embedding = param_counts(base["regression"])
            for kind in ("trl", "ours") if not args.smoke else ():  # process warm-up (CUDA context, cuBLAS), untimed
                timed_training_run(kind, base, data, {**settings, "steps": 2, "warmup_steps": 1})
            train = run_training(base, data, settings, log=log_as_gpu_check)
            break
        except Exception as err:  # noqa: BLE001
            if not _is_oom(err):
                raise
            out["attempts"].append({"batch": batch, "error": str(err).splitlines()[0][:300]})
            print(f"gpu-check: llama1b_rm: out of memory at {batch} sequences per step; trying {batch // 2}",
                  flush=True)
        base = data = None  # outside the except block: the traceback no longer holds the failed run's tensors
        free_gpu()
        batch //= 2
    else:
        return {"status": "fail", "error": "out of memory even at 2 sequences per step", **out}
    peak = args.peak_flops
    configs = train["configs"]
    rows = {}
    for kind, c in configs.items():
        tps = c["tokens_per_s_median"]
        rows[kind] = {"tokens_per_s": tps, "mfu": mfu(params, tps, peak),
                      "mfu_non_embedding": mfu(params - embedding, tps, peak),
                      "peak_memory_mib": c["peak_memory_mib_median"]}
    if ctx.get("liger_available"):
        try:  # optional: a failure here is recorded, the comparison above stands
            liger = timed_training_run("ours", base, data, {**settings, "liger": True})
            tps = liger["tokens_per_s"]
            rows["ours_liger"] = {"tokens_per_s": tps, "mfu": mfu(params, tps, peak),
                                  "mfu_non_embedding": mfu(params - embedding, tps, peak),
                                  "peak_memory_mib": liger["peak_memory_mib"], "final_loss": liger["final_loss"]}
        except Exception as err:  # noqa: BLE001
            out["liger_error"] = str(err).strip().splitlines()[-1][:300] if str(err).strip() else repr(err)
            free_gpu()
    best = max((r["mfu"], k) for k, r in rows.items() if k != "trl")
    speedup = train["speedup_vs_trl"]
    print(f"gpu-check: 1B RM: ours {rows['ours']['tokens_per_s']:,.0f} tokens/s "
          f"(MFU {100 * rows['ours']['mfu']:.1f}%, non-embedding {100 * rows['ours']['mfu_non_embedding']:.1f}%), "
          f"stock TRL {rows['trl']['tokens_per_s']:,.0f} (MFU {100 * rows['trl']['mfu']:.1f}%): {speedup:.2f}x; "
          f"peak memory x{train['memory_ratio_vs_trl']:.2f}; "
          f"{batch} sequences/step", flush=True)
    finite = all(math.isfinite(x) for c in configs.values() for x in c["loss_curve"])
    summary = (f"{speedup:.2f}x stock TRL tokens/s (target 1.5x), MFU {100 * rows['ours']['mfu']:.1f}% "
               f"(best {100 * best[0]:.1f}% {best[1]}; target 35%), {batch} seq/step")
    return {"status": "pass" if finite and speedup >= 1.0 else "fail", "summary": summary, "params": params,
            "params_non_embedding": params - embedding, "peak_flops": peak, "sequences_per_step": batch,
            "speedup_vs_trl": speedup, "target_1.5x_met": speedup >= 1.5, "best_mfu": best[0],
            "best_mfu_config": best[1],
            "target_mfu_35pct_met": best[0] >= 0.35, "memory_ratio_vs_trl": train["memory_ratio_vs_trl"],
            "rows": rows, "data": settings["data"] or "synthetic", "train": train, **out}


def check_llama1b_steerlm2(ctx) -> dict:
    """SteerLM2Trainer on a 1B Llama in bf16, padded vs packed vs shared-prompt: tokens/s (prompt + response per
    sequence, the same count in every layout) and peak memory. On out-of-memory all layouts retry at half the
    batch."""
    args = ctx["args"]
    out: dict = {"attempts": []}
    batch = args.steerlm2_batch
    while batch >= 1:
        settings = _llama_settings(ctx, models=("causal",), steerlm2_steps=args.steerlm2_steps, steerlm2_batch=batch,
                                   steerlm2_responses=4, steerlm2_repeats=args.repeats,
                                   steerlm2_max_length=args.max_length, steerlm2_data=_data_path(args),
                                   batch_size=2, steps=1)
        try:
            base, data = prepare(settings)
            params = sum(p.numel() for p in base["causal"].parameters())
            if not args.smoke:  # process warm-up, untimed
                timed_steerlm2_run("packed", base, data, settings)
            result = run_steerlm2(base, data, settings, log=log_as_gpu_check)
            break
        except Exception as err:  # noqa: BLE001
            if not _is_oom(err):
                raise
            out["attempts"].append({"batch": batch, "error": str(err).splitlines()[0][:300]})
            print(f"gpu-check: llama1b_steerlm2: out of memory at {batch} prompts per step; trying {batch // 2}",
                  flush=True)
        base = data = None
        free_gpu()
        batch //= 2
    else:
        return {"status": "fail", "error": "out of memory even at 1 prompt per step", **out}
    rows = {layout: {"tokens_per_s": c["tokens_per_s_median"], "peak_memory_mib": c["peak_memory_mib_median"],
                     "mfu_sequence_tokens": mfu(params, c["tokens_per_s_median"], args.peak_flops)}
            for layout, c in result["configs"].items()}
    line = ", ".join(f"{k} {v['tokens_per_s']:,.0f} tokens/s ({v['peak_memory_mib']:,.0f} MiB)"
                     for k, v in rows.items())
    print(f"gpu-check: 1B SteerLM 2.0 ({batch} prompts x 4 per step): {line}; "
          f"packed x{result.get('packed_speedup', 0):.2f}, "
          f"shared_prompt x{result.get('shared_prompt_speedup', 0):.2f} vs padded", flush=True)
    # bf16: the layouts round differently; the loss curves must still agree closely
    close = all(result.get(f"{k}_loss_curve_max_rel_diff", 0) <= 0.05 for k in ("packed", "shared_prompt"))
    summary = (f"vs padded: packed {result.get('packed_speedup', 0):.2f}x tokens/s "
               f"({result.get('packed_peak_memory_ratio', 0):.2f}x memory), shared_prompt "
               f"{result.get('shared_prompt_speedup', 0):.2f}x "
               f"({result.get('shared_prompt_peak_memory_ratio', 0):.2f}x); "
               f"{batch} prompts x 4/step")
    return {"status": "pass" if close else "fail", "summary": summary, "params": params, "prompts_per_step": batch,
            "rows": rows, "packed_speedup": result.get("packed_speedup"),
            "shared_prompt_speedup": result.get("shared_prompt_speedup"),
            "packed_memory_ratio": result.get("packed_peak_memory_ratio"),
            "shared_prompt_memory_ratio": result.get("shared_prompt_peak_memory_ratio"), "steerlm2": result, **out}
