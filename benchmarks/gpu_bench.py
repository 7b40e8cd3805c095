"""`make bench`'s comparisons on the GPU (SmolLM2-135M, bf16): RM training MFU, stock TRL, Liger, annotation."""

from __future__ import annotations

import math
from pathlib import Path

from benchmarks.annotation import run_annotation
from benchmarks.measure import mfu, param_counts
from benchmarks.rm_training import run_training, timed_training_run


def settings_for(args, work: Path, steps: int, model_dir: str) -> dict:
    """bench settings for --model on the GPU in bf16, `steps` optimizer steps per run."""
    return {
        "model": model_dir, "data": args.data, "batch_size": args.batch_size, "steps": steps,
        "warmup_steps": args.warmup_steps, "repeats": args.repeats, "padded_repeats": args.repeats,
        "max_length": args.max_length, "lr": 1e-5, "annotate_rows": 64, "annotate_batch_size": 16,
        "device": "cuda", "bf16": True, "gradient_checkpointing": False, "work_dir": work / f"runs-{steps}",
    }


def log_as_gpu_check(message: str) -> None:
    """bench's progress lines, as gpu-check's."""
    print("gpu-check: " + message.removeprefix("bench: "), flush=True)


def check_rm_train_mfu(ctx) -> dict:
    settings = settings_for(ctx["args"], ctx["work"], ctx["args"].mfu_steps, ctx["model_dir"])
    base, data = ctx["prepared"](settings)
    result = timed_training_run("ours", base, data, settings)
    params, embedding = param_counts(base["regression"])
    peak = ctx["args"].peak_flops
    utilisation = mfu(params, result["tokens_per_s"], peak)
    utilisation_non_embedding = mfu(params - embedding, result["tokens_per_s"], peak)
    print(f"gpu-check: bf16 RM training {result['tokens_per_s']:,.0f} tokens/s, MFU {100 * utilisation:.1f}% "
          f"(6 x {params / 1e6:.1f}M params x tokens/s / {peak / 1e12:.0f} TFLOP/s; non-embedding "
          f"{100 * utilisation_non_embedding:.1f}%)", flush=True)
    finite = all(math.isfinite(x) for x in result["losses"])
    return {"status": "pass" if finite else "fail", "tokens_per_s": result["tokens_per_s"], "mfu": utilisation,
            "mfu_non_embedding": utilisation_non_embedding, "params": params, "peak_flops": peak,
            "batch_sequences": settings["batch_size"], "run": result}


def check_vs_stock_trl(ctx) -> dict:
    settings = settings_for(ctx["args"], ctx["work"], ctx["args"].compare_steps, ctx["model_dir"])
    base, data = ctx["prepared"](settings)
    for kind in ("trl", "ours"):  # process warm-up (CUDA context, cuBLAS, allocator), untimed
        timed_training_run(kind, base, data, {**settings, "steps": 2, "warmup_steps": 1})
    train = run_training(base, data, settings, log=log_as_gpu_check)
    same_loss = train["final_loss_rel_diff_padding_free_vs_padded"] <= 0.05
    faster = train["speedup_vs_trl"] >= 1.0
    print(f"gpu-check: vs stock TRL: {train['speedup_vs_trl']:.2f}x tokens/s, peak memory "
          f"x{train['memory_ratio_vs_trl']:.2f}, padding-free vs padded final loss rel. diff "
          f"{train['final_loss_rel_diff_padding_free_vs_padded']:.2e}", flush=True)
    return {"status": "pass" if same_loss and faster else "fail", "target_1.3x_met": train["speedup_vs_trl"] >= 1.3,
            "speedup_vs_trl": train["speedup_vs_trl"], "memory_ratio_vs_trl": train["memory_ratio_vs_trl"],
            "train": train}


def check_liger(ctx) -> dict:
    import importlib.util

    if importlib.util.find_spec("liger_kernel") is None:
        return {"status": "skip", "reason": "liger-kernel not installed"}
    settings = settings_for(ctx["args"], ctx["work"], ctx["args"].compare_steps, ctx["model_dir"])
    base, data = ctx["prepared"](settings)
    plain = timed_training_run("ours", base, data, settings)
    liger = timed_training_run("ours", base, data, {**settings, "liger": True})
    rel = abs(liger["final_loss"] - plain["final_loss"]) / abs(plain["final_loss"])
    speed = liger["tokens_per_s"] / plain["tokens_per_s"]
    print(f"gpu-check: liger {liger['tokens_per_s']:,.0f} vs {plain['tokens_per_s']:,.0f} tokens/s (x{speed:.2f}), "
          f"final loss rel. diff {rel:.2e}", flush=True)
    return {"status": "pass" if rel <= 0.05 else "fail", "speedup": speed, "final_loss_rel_diff": rel,
            "liger": liger, "plain": plain}


def check_annotate(ctx) -> dict:
    settings = settings_for(ctx["args"], ctx["work"], ctx["args"].compare_steps, ctx["model_dir"])
    base, data = ctx["prepared"](settings)
    result = run_annotation(base, data, settings, log=lambda s: None)
    print(f"gpu-check: annotate {result['speedup_vs_naive']:.2f}x responses/s vs naive, max |diff| "
          f"{result['max_abs_score_diff_vs_naive']:.3f} (bf16)", flush=True)
    return {"status": "pass" if result["speedup_vs_naive"] >= 1.0 else "fail", **result}


def check_rm_server(ctx) -> dict:
    """`hs2 serve-rm` on the GPU (bf16, one replica on cuda:0) under 32 concurrent one-row clients vs offline
    scoring of the same 64 rows: the `make bench` server line (benchmarks/rm_server.py)."""
    from benchmarks.rm_server import run_rm_server

    settings = settings_for(ctx["args"], ctx["work"], ctx["args"].compare_steps, ctx["model_dir"])
    settings.update(rm_server_clients=32, rm_server_request_rows=[1], rm_server_options=[])
    base, data = ctx["prepared"](settings)
    result = run_rm_server(base, data, settings, log=log_as_gpu_check)
    ratio = result.get("rm_server_throughput_vs_offline", 0.0)
    p50 = result.get("latency_ms_p50", float("nan"))
    print(f"gpu-check: rm_server {ratio:.2f}x offline rows/s, p50 {p50:.0f} ms, scores match: "
          f"{result.get('scores_match')}", flush=True)
    ok = ratio >= 0.8 and result.get("scores_match") and result.get("server_exit_code") == 0
    return {"status": "pass" if ok else "fail", **result}
