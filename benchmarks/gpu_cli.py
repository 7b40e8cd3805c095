"""GPU checks through the real `hs2` CLI: train-rm under ZeRO-3, steerlm2, eval-policy and rloo in bf16."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.measure import default_device
from benchmarks.workload import REPO, synthetic_rows


def _run_cli(ctx, args: list[str], log_name: str, timeout: int) -> tuple[object, str]:
    """`python -m hs2trl.cli ARGS` with this checkout importable; (return code or "timeout", output), output also
    written to <out-dir>/LOG_NAME."""
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    try:
        proc = subprocess.run([sys.executable, "-m", "hs2trl.cli", *args], capture_output=True, text=True,
                              timeout=timeout, env=env)
        rc, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        rc = "timeout"
        output = (err.stdout or b"").decode(errors="replace") + (err.stderr or b"").decode(errors="replace")
    (ctx["out_dir"] / log_name).write_text(output)
    return rc, output


def check_zero3_cli(ctx) -> dict:
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        return {"status": "skip", "reason": "deepspeed not installed (pip install deepspeed from the carried wheel)"}
    work = ctx["work"] / "zero3"
    work.mkdir(parents=True, exist_ok=True)
    data = work / "helpsteer.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(32, seed=1)))
    out = work / "model"
    args = ["train-rm", "--model", ctx["model_dir"], "--dataset", str(data),
            "--output-dir", str(out), "--accelerate-config", "zero3", "--num-processes", "1",
            "--max_steps", "3", "--per_device_train_batch_size", "4", "--max_length", "512", "--logging_steps", "1",
            "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
            "--report_to", "none", "--bf16", "true", "--gradient_checkpointing", "false",
            "--dataloader_num_workers", "0"]
    started = time.time()
    rc, output = _run_cli(ctx, args, "zero3_cli.log", ctx["args"].zero3_timeout)
    saved = out.is_dir() and any(out.glob("*.safetensors"))
    losses = [line for line in output.splitlines() if "'loss'" in line]
    status = "pass" if rc == 0 and saved and losses else "fail"
    return {"status": status, "returncode": rc, "seconds": round(time.time() - started, 1), "model_saved": saved,
            "loss_lines": losses[-3:], "command": " ".join([sys.executable, "-m", "hs2trl.cli", *args]),
            "log_tail": output[-3000:]}


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
    from tests.helpers.eval_fixtures import write_eval_data

    work = ctx["work"] / "eval_policy"
    work.mkdir(parents=True, exist_ok=True)
    rm_dir = _random_rm(ctx, work)
    data_dir = write_eval_data(work / "data")
    prompts = work / "helpsteer.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(64, seed=3)))
    out = work / "out"
    rc, output = _run_cli(ctx, [
        "eval-policy", "--model", ctx["model_dir"], "--benchmarks", "mt-bench,reward", "--reward-model", str(rm_dir),
        "--reward_dataset", str(prompts), "--data-dir", str(data_dir), "--output-dir", str(out),
        "--max_new_tokens", "128", "--batch_size", "32",
        "--dtype", "bfloat16" if default_device() == "cuda" else "float32", "--engine", "hf"],
        "eval_policy_cli.log", ctx["args"].zero3_timeout)
    results_file = out / "results.json"
    model = next(iter(json.loads(results_file.read_text())["models"].values()), {}) if results_file.exists() else {}
    bench_results = model.get("benchmarks", {})
    generation = {b: r.get("generation", {}) for b, r in bench_results.items()}
    reward = bench_results.get("reward", {}).get("score")
    ok = (rc == 0 and reward is not None and math.isfinite(reward)
          and generation.get("reward", {}).get("answers") == 32)
    answers = sum(g.get("answers", 0) for g in generation.values())
    seconds = sum(g.get("seconds", 0) for g in generation.values())
    summary = f"{answers} answers in {seconds:.0f} s of generation; reward {reward}"
    return {"status": "pass" if ok else "fail", "returncode": rc, "summary": summary, "generation": generation,
            "reward": reward, "log_tail": output[-3000:]}


def check_steerlm2_cli(ctx) -> dict:
    """SteerLM 2.0 in bf16 on the GPU through the real CLI: sampling (n = 4), the three log-probs, one training
    pass."""
    import torch

    work = ctx["work"] / "steerlm2"
    work.mkdir(parents=True, exist_ok=True)
    rm_dir = _random_rm(ctx, work)
    data = work / "helpsteer.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(16, seed=2)))
    out = work / "out"
    started = time.time()
    rc, output = _run_cli(ctx, [
        "steerlm2", "--model", ctx["model_dir"], "--sft-model", ctx["model_dir"], "--reward-model", str(rm_dir),
        "--dataset", str(data), "--output-dir", str(out), "--iterations", "1", "--num_samples", "4",
        "--max_prompts", "8", "--max_new_tokens", "32", "--per_device_train_batch_size", "2", "--max_length", "1024",
        "--gradient_accumulation_steps", "2", "--num_train_epochs", "1",
        "--bf16", "true" if torch.cuda.is_available() else "false", "--logging_steps", "1",
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

    import torch

    work = ctx["work"] / "rloo"
    work.mkdir(parents=True, exist_ok=True)
    rm_dir = _random_rm(ctx, work)
    data = work / "helpsteer.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(16, seed=4)))
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
