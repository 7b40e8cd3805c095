"""Stage: SteerLM 2.0 (paper §4.5): iterations of sampling and `SteerLM2Trainer` training.

Iteration i (0-based) with policy π_i (π_0 = the SteerLM model, `--model`):
1. sample n responses per prompt from π_i under the target attributes and compute log Q'(y|a,x) under π_i itself,
   log P(y|x) under the SFT model and log P(a|x,y) from the RM -> `<output_dir>/iteration-i/samples.jsonl`
   (`hs2trl.steer.sampling`; resumable);
2. train `SteerLM2Trainer` from π_i on those samples -> `<output_dir>/iteration-i/model` (= π_{i+1}), then write
   `iteration-i/DONE` (a JSON summary; the folders, markers and loop are `hs2trl.runtime.rounds`).

Q' is always the model the responses were sampled from (π_i), as the importance weights require; the SFT model and
the RM stay fixed. A rerun skips finished iterations and reuses finished sampling passes; `--resume` also resumes
training from the iteration's last checkpoint.

Where sampling runs (`sampling_processes`): `shared` — every rank of the launch samples and scores a share of the
prompts with full model copies (models that fit one device, DDP); `single` — the main rank starts one child process
(`--phase sample`) that uses every GPU of the node (models spread with `device_map="auto"`, or vLLM) while the other
ranks wait; `auto` picks `single` under ZeRO-3/FSDP (whose partitioned weights cannot `generate` outside the trainer),
else `shared`. `phase: sample` only writes the next iteration's samples; `phase: train` only trains iterations whose
samples exist.
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from hs2trl.hub.publish import push_after_training, take_push_settings
from hs2trl.runtime.args import DataArguments, parse_stage_args, run_stage, stage_argv
from hs2trl.runtime.errors import Hs2Error, continues_from
from hs2trl.runtime.locks import output_lock
from hs2trl.runtime.multinode import check_head_alive, require_shared_folder
from hs2trl.runtime.process import is_main_process
from hs2trl.runtime.rounds import Rounds, drive_rounds, run_in_child
from hs2trl.runtime.say import say
from hs2trl.steer.steering import DEFAULT_INFERENCE_ATTRIBUTES, attribute_string
from hs2trl.trainers.steerlm2_config import SteerLM2Config

COMMAND = "steerlm2"  # the hs2 command that runs this stage (named in lock holder records)

PHASES = ("all", "sample", "train")
SAMPLING_PROCESSES = ("auto", "shared", "single")
ITERATION_PREFIX = "iteration-"  # OUTPUT/iteration-0, ...: also each iteration's Hub revision


@dataclass
class SteerLM2Arguments(DataArguments):
    reward_model: str | None = field(default=None, metadata={"help": "The regression reward model: log P(a|x,y)."})
    reward_url: str | None = field(
        default=None, metadata={"help": "The reward model served by `hs2 serve-rm` instead: URL[,URL...]."}
    )
    reward_api_key_env: str | None = field(
        default=None, metadata={"help": "Environment variable with the servers' API key (default HS2_RM_API_KEY)."}
    )
    sft_model: str | None = field(
        default=None, metadata={"help": "The SFT model the SteerLM model was trained from: log P(y|x)."}
    )
    iterations: int = field(default=2, metadata={"help": "Sampling + training rounds (paper: 2)."})
    num_samples: int = field(default=10, metadata={"help": "Responses per prompt, n (paper: 10)."})
    max_prompts: int | None = field(
        default=None, metadata={"help": "Use a seeded random subset of this many prompts (paper: 20,000)."}
    )
    target_attributes: str = field(
        default=attribute_string(DEFAULT_INFERENCE_ATTRIBUTES),
        metadata={"help": "The attributes a to sample under and to train for: an attribute string, or 'dataset' for "
                  "each row's own levels (e.g. `hs2 steerlm`'s annotated.jsonl)."},
    )
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (paper: 0.7)."})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling (paper: 0.9)."})
    max_new_tokens: int = field(default=1024, metadata={"help": "Longest sampled response, in tokens."})
    generation_batch_size: int = field(default=8, metadata={"help": "Sequences per generate call."})
    scoring_batch_size: int = field(default=8, metadata={"help": "Sequences per log-prob / RM batch."})
    sampling_chunk_size: int = field(default=64, metadata={"help": "Prompts per resumable chunk."})
    concentration: float = field(default=24.0, metadata={"help": "α + β of the Beta model of P(a|x,y) (paper: 24)."})
    sampling_dtype: str = field(
        default="auto", metadata={"help": "dtype for sampling/scoring models (auto: bf16 on GPU)."}
    )
    use_vllm: bool = field(
        default=False, metadata={"help": "Sample with vLLM (one process, GPU, `pip install hs2trl[vllm]`)."}
    )
    phase: str = field(
        default="all", metadata={"help": "all | sample | train (see the stage doc).", "choices": list(PHASES)}
    )
    sampling_processes: str = field(
        default="auto",
        metadata={"help": "shared: every rank samples a share of the prompts (each model must fit one device); "
                  "single: one child process samples with every GPU of the node (models spread with device_map=auto, "
                  "or vLLM) while the ranks wait; auto: single under ZeRO-3/FSDP, else shared.",
                  "choices": list(SAMPLING_PROCESSES)},
    )

    def __post_init__(self):
        if self.iterations < 1:
            raise Hs2Error(f"iterations: expected at least 1, got {self.iterations}")
        if self.num_samples < 2:
            raise Hs2Error(f"num_samples: SteerLM 2.0 needs at least 2 responses per prompt, got {self.num_samples}")


def _types():
    from trl import ModelConfig

    return SteerLM2Arguments, SteerLM2Config, ModelConfig


def parse(argv):
    return parse_stage_args(_types(), argv)


def _prompts(args, training_args):
    from hs2trl.steer.sampling import load_prompts

    return load_prompts(args.dataset_name, args.dataset_train_split, args.target_attributes,
                        list(training_args.attributes), args.max_prompts, training_args.seed)


def check(args, training_args, model_args) -> None:
    """Parse, read the prompts, check the model folders; nothing is loaded."""
    from hs2trl.rm.loading import check_reward_model
    from hs2trl.runtime.outputs import check_model_source
    from hs2trl.runtime.training import require_model

    require_model(model_args)
    require_models(args)
    for name, value, hint in (("model_name_or_path", model_args.model_name_or_path, "hs2 steerlm"),
                              ("reward_model", args.reward_model, "hs2 train-rm"),
                              ("sft_model", args.sft_model, "hs2 sft")):
        if value:
            missing_output(name, value, hint)
    if args.reward_model:
        check_model_source(args.reward_model, "reward_model", check_folder=check_reward_model)
    else:
        check_served_attributes(args, list(training_args.attributes))
    check_model_source(args.sft_model, "sft_model")
    if args.use_vllm:
        from hs2trl.steer.generation import vllm_available

        if not vllm_available():
            raise Hs2Error("use_vllm: vLLM is not installed or no GPU is visible (pip install 'hs2trl[vllm]')")
    _prompts(args, training_args)


def require_models(args) -> None:
    from hs2trl.rm.scorer import require_one_source

    require_one_source(args.reward_model, args.reward_url)
    if not args.sft_model:
        raise Hs2Error("sft_model: required (--sft-model: the SFT model the SteerLM model was trained from)")


def check_served_attributes(args, attributes: list[str]) -> None:
    """The served RM answers, and predicts the attributes the policy is conditioned on."""
    from hs2trl.rm.scorer import probe_source

    served = probe_source(None, args.reward_url, args.reward_api_key_env)
    if served != attributes:
        raise Hs2Error(f"--reward-url {args.reward_url}: its model's outputs are {served}, the conditioning uses "
                       f"{attributes}")


def missing_output(name: str, value: str, hint: str) -> None:
    """A model named as an earlier stage's output folder (`outputs/...`) that does not exist yet: say which command
    makes it, rather than letting it be looked up on the Hub."""
    if value.startswith(("outputs/", "./", "../", "/")) and not os.path.exists(value):
        raise Hs2Error(f"{name} '{value}': no such folder (make it first, e.g. with `{hint}`)")


def iteration_folders(output_dir: str | Path) -> Rounds:
    """OUTPUT/iteration-0, iteration-1, ... (named "iteration i" in what the run prints)."""
    return Rounds(Path(output_dir), ITERATION_PREFIX, label="iteration")


def train_iteration(policy: str, samples: Path, folder: Path, parsed, push: bool, hub_model_id: str | None,
                    revision: str) -> Path:
    """Train π_{i+1} from π_i on one iteration's samples; returns the saved model folder (card, recipe, pushed)."""
    from datasets import Dataset
    from trl import get_peft_config

    from hs2trl.hub.publish import finish_training
    from hs2trl.runtime.models import load_policy, load_policy_tokenizer
    from hs2trl.runtime.resume import train_resumable
    from hs2trl.runtime.training import announce, save_policy
    from hs2trl.steer.sampling import read_samples
    from hs2trl.trainers.steerlm2_trainer import SteerLM2Trainer

    args, training_args, model_args = parsed
    root = training_args.output_dir
    training_args.output_dir = str(folder)  # checkpoints of this iteration
    tokenizer = load_policy_tokenizer(policy, training_args.chat_template_path)
    trainer = SteerLM2Trainer(
        model=load_policy(policy, tokenizer, model_args, training_args),
        args=training_args,
        train_dataset=Dataset.from_list(read_samples(samples)),
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    announce(trainer, f" (SteerLM 2.0, iteration {folder.name.split('-')[-1]})")
    train_resumable(trainer, str(folder), args.resume)
    model_dir = folder / "model"
    save_policy(trainer, str(model_dir))
    training_args.output_dir = root  # the recipe written next to the model names the run's folder
    finish_training(trainer, str(model_dir), parsed, "steerlm2", push, hub_model_id, revision=revision, save=False)
    del trainer
    gc.collect()
    return model_dir


def sharded_weights() -> bool:
    """ZeRO-3 / FSDP: models loaded in a rank are partitioned, unusable for `generate` outside the trainer."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    return (is_deepspeed_zero3_enabled() or os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3"
            or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true")


def sample_in_child(argv: list[str], folder: Path, poll_seconds: float = 5.0) -> None:
    """Sampling as one child process (`--phase sample`, no distributed environment, every local GPU) started by the
    main process; the other ranks wait for its samples file without entering a collective (no NCCL timeout)."""
    from accelerate import PartialState

    from hs2trl.runtime.launch import launch_command

    state = PartialState()
    samples, failed = folder / "samples.jsonl", folder / "SAMPLING_FAILED"

    def tell_the_waiting_ranks(status: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        failed.write_text(f"exit status {status}\n")

    if state.is_main_process:
        failed.unlink(missing_ok=True)
        say("sampling in one child process:")
        run_in_child(launch_command("steerlm2", [*argv, "--phase", "sample"]), f"{folder.name} sampling", alone=True,
                     on_failure=tell_the_waiting_ranks)
        if not samples.exists():
            tell_the_waiting_ranks(0)
            raise SystemExit(1)
    else:
        while not samples.exists():
            if failed.exists():
                raise SystemExit(1)
            check_head_alive()  # a head node that died never writes either file
            time.sleep(poll_seconds)
    state.wait_for_everyone()


def main(args, training_args, model_args) -> None:
    parsed, argv = (args, training_args, model_args), stage_argv(args)
    output_dir = training_args.output_dir
    hint = f"the finished iterations and sampled prompts in {output_dir} (add --resume to continue training too)"
    with output_lock(output_dir, COMMAND), continues_from(hint):  # the sampling child finds the lock held
        run_iterations(parsed, argv)


def run_iterations(parsed, argv: list[str]) -> None:
    from accelerate import PartialState

    from hs2trl.runtime.training import require_model
    from hs2trl.steer.sampling import sample_iteration

    args, training_args, model_args = parsed
    push, hub_model_id = take_push_settings(training_args)
    policy = require_model(model_args)
    require_models(args)
    root = training_args.output_dir
    prompts = _prompts(args, training_args)
    state = PartialState()
    require_shared_folder(root, "SteerLM 2.0 passes each iteration's samples and models between the nodes through it")
    rounds = iteration_folders(root)

    def run_iteration(i: int, policy: str) -> dict | None:
        """Sample and train iteration i; its summary, or None where `--phase` stops before training."""
        folder = rounds.folder(i)
        samples = folder / "samples.jsonl"
        if args.phase == "train" and not samples.exists():
            say(f"iteration {i}: no {samples} yet; run with --phase sample first")
            return None
        say(f"iteration {i}: policy {policy}; {len(prompts)} prompts x {args.num_samples} samples")
        single = args.sampling_processes == "single" or (args.sampling_processes == "auto" and state.num_processes > 1
                                                           and sharded_weights())
        if args.use_vllm and not single and state.num_processes > 1:
            raise Hs2Error("use_vllm: with several processes set sampling_processes: single (vLLM runs as "
                           "one process)")
        if single and args.phase != "sample" and not samples.exists():
            sample_in_child(argv, folder)
        else:
            sample_iteration(
                prompts, folder, policy, args.sft_model, args.reward_model, list(training_args.attributes),
                args.num_samples, args.temperature, args.top_p, args.max_new_tokens, args.generation_batch_size,
                args.scoring_batch_size, args.sampling_chunk_size, args.concentration, args.use_vllm,
                args.sampling_dtype, training_args.seed + i, reward_url=args.reward_url,
                reward_api_key_env=args.reward_api_key_env,
            )
        if args.phase == "sample":
            say(f"iteration {i}: samples in {samples}; --phase sample stops here")
            return None
        model_dir = train_iteration(policy, samples, folder, parsed, push, hub_model_id, revision=rounds.revision(i))
        state.wait_for_everyone()  # every rank has finished training before DONE says so
        say(f"iteration {i}: model saved to {model_dir}")
        return {"iteration": i, "policy": policy, "prompts": len(prompts), "samples_per_prompt": args.num_samples}

    policy = drive_rounds(rounds, range(args.iterations), policy, run_iteration, writes_markers=is_main_process())
    if policy is None:  # --phase stopped before an iteration finished
        return
    say(f"SteerLM 2.0 done; final model: {policy}")
    push_after_training(policy, push, hub_model_id)


if __name__ == "__main__":
    run_stage(parse, main)
