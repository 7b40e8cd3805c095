"""Stage: iterative DPO (paper §4: 20k Daring Anteater prompts, 10 samples each at T 0.7 / top-p 0.9, scored by the
RM's goodness; highest = chosen, lowest = rejected; 3 epochs, beta 1e-3, LR 9e-8).

One process drives the rounds; for round r, under OUTPUT/round-r/:
1. `generations.jsonl`: `--num_samples` responses per prompt from the current policy (the original model in round 1,
   round r-1's model after), appended a chunk of prompts at a time. HF `generate` in this process, or vLLM (when
   installed and a GPU is present) in a child process, so that its GPU memory is surely released afterwards.
2. `scores.jsonl`: the RM's goodness (and the raw attribute predictions) of every sample, appended the same way.
3. `pairs.jsonl`: highest- versus lowest-goodness sample per prompt; prompts whose samples all tie are skipped.
4. `model/`: one DPO round (stock DPOTrainer) from the current policy, with the ORIGINAL model as reference, run as a
   child process: plain python, or `accelerate launch` with --round_accelerate_config / --round_num_processes.
5. `DONE`: written last. A rerun skips finished rounds and resumes the first unfinished one where it stopped
   (generations and scores per chunk, training from its last checkpoint).
The prompts (each distinct prompt once) are fixed in OUTPUT/prompts.jsonl on the first run and reused by every round
and every rerun, so that prompt ids stay stable. `--push-to-hub` pushes each round's model as revision `round-r`.
"""

from __future__ import annotations

import gc
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from hs2trl.data.conversations import distinct_prompts
from hs2trl.data.pairs import best_worst_pair, preference_rows
from hs2trl.data.records import write_jsonl
from hs2trl.data.sources import read_records
from hs2trl.hub.publish import finish_training, take_push_settings
from hs2trl.rm.scorer import probe_source
from hs2trl.runtime.args import parse_stage_args, run_stage, stage_argv
from hs2trl.runtime.errors import Hs2Error, continues_from
from hs2trl.runtime.launch import launch_nodes
from hs2trl.runtime.locks import output_lock
from hs2trl.runtime.models import load_policy, load_policy_tokenizer, rank_device
from hs2trl.runtime.multinode import require_shared_folder
from hs2trl.runtime.nodes import NODE_TIMEOUT_ENV, node_timeout
from hs2trl.runtime.resumable import KeyedLog, OneFile, start_pass
from hs2trl.runtime.rounds import Rounds, drive_rounds, run_in_child
from hs2trl.runtime.say import say
from hs2trl.runtime.training import last_checkpoint, require_model
from hs2trl.stages.dpo import DPOArguments
from hs2trl.steer.generation import DEFAULT_TEMPERATURE, DEFAULT_TOP_P

COMMAND = "dpo --iterative"  # the hs2 command that runs this stage (named in lock holder records)

VLLM_CHOICES = ("auto", "true", "false")
ROUND_PREFIX = "round-"  # OUTPUT/round-1, ...: also each round's Hub revision
PHASES = ("sample", "train")


@dataclass
class IterativeArguments:
    reward_model_path: str | None = field(default=None, metadata={"help": "The SteerLM reward model (hs2 train-rm)."})
    reward_url: str | None = field(
        default=None, metadata={"help": "The reward model served by `hs2 serve-rm` instead: URL[,URL...]."}
    )
    reward_api_key_env: str | None = field(
        default=None, metadata={"help": "Environment variable with the servers' API key (default HS2_RM_API_KEY)."}
    )
    reward_weights: str = field(
        default="goodness", metadata={"help": "Attribute weights: a preset or one number per RM output."}
    )
    rounds: int = field(default=1, metadata={"help": "Rounds of sample -> score -> pair -> DPO."})
    num_samples: int = field(default=10, metadata={"help": "Responses sampled per prompt and round."})
    max_prompts: int | None = field(
        default=None, metadata={"help": "Use this many distinct prompts (a seeded random subset, in dataset order)."}
    )
    sample_temperature: float = field(default=DEFAULT_TEMPERATURE, metadata={"help": "Sampling temperature."})
    sample_top_p: float = field(default=DEFAULT_TOP_P, metadata={"help": "Sampling top-p."})
    max_new_tokens: int = field(default=1024, metadata={"help": "Longest sampled response, in tokens."})
    generation_batch_size: int = field(default=16, metadata={"help": "Sequences per `generate` call (HF path)."})
    scoring_batch_size: int = field(default=16, metadata={"help": "Conversations per RM forward pass."})
    prompts_per_chunk: int = field(
        default=256, metadata={"help": "Prompts sampled/scored between appends (resume unit)."}
    )
    use_vllm: str = field(default="auto", metadata={"help": "auto (when installed and a GPU is present), true, false.",
                                                                 "choices": list(VLLM_CHOICES)})
    round_accelerate_config: str | None = field(
        default=None,
        metadata={"help": "Accelerate config for each DPO round (e.g. zero3); set by --accelerate-config."},
    )
    round_num_processes: int | None = field(
        default=None, metadata={"help": "Processes per DPO round (--num-processes)."}
    )
    round_launcher_args: str | None = field(default=None, metadata={"help": "Extra accelerate arguments per round."})
    round_phase: str | None = field(
        default=None,
        metadata={"help": "Internal: run one phase (sample, train) of a round.", "choices": list(PHASES)},
    )
    round_index: int | None = field(default=None, metadata={"help": "Internal: the round of --round_phase."})


def _types():
    from trl import DPOConfig, ModelConfig

    return IterativeArguments, DPOArguments, DPOConfig, ModelConfig


def parse(argv):
    return parse_stage_args(_types(), argv)



def validate(it_args: IterativeArguments) -> None:
    if it_args.rounds < 1:
        raise Hs2Error(f"rounds: must be at least 1 (got {it_args.rounds})")
    if it_args.num_samples < 2:
        raise Hs2Error(f"num_samples: at least 2 samples per prompt are needed for a pair (got {it_args.num_samples})")


# ---------------------------------------------------------------- prompts


def select_prompts(data_args, it_args, seed: int) -> tuple[list[list[dict]], str]:
    """Each distinct prompt once; `max_prompts` of them chosen at random (seeded), kept in dataset order."""
    records = read_records(data_args.dataset_name, data_args.dataset_train_split)[: data_args.max_train_rows]
    prompts, repeats = distinct_prompts(records)
    if not prompts:
        raise Hs2Error(f"{data_args.dataset_name}: no prompts")
    total = len(prompts)
    if it_args.max_prompts is not None and it_args.max_prompts < total:
        keep = sorted(random.Random(seed).sample(range(total), it_args.max_prompts))
        prompts = [prompts[i] for i in keep]
    note = (f"{data_args.dataset_name}: {len(prompts)} prompts used of {total} distinct prompts in "
            f"{len(records)} rows ({repeats} rows repeat a prompt)")
    return prompts, note


def fixed_prompts(out: Path, data_args, it_args, seed: int) -> list[list[dict]]:
    """The run's prompts, chosen on the first run and read back from OUTPUT/prompts.jsonl afterwards."""
    path = out / "prompts.jsonl"
    if path.is_file():
        prompts = [json.loads(line)["prompt"] for line in path.read_text(encoding="utf-8").splitlines() if line]
        say(f"resuming with the {len(prompts)} prompts fixed in {path}")
        return prompts
    prompts, note = select_prompts(data_args, it_args, seed)
    say(note)
    tmp = path.with_suffix(".tmp")
    write_jsonl(tmp, ({"id": i, "prompt": p} for i, p in enumerate(prompts)))
    tmp.rename(path)
    return prompts


# ---------------------------------------------------------------- phases of a round


def use_vllm(it_args: IterativeArguments) -> bool:
    from hs2trl.steer.generation import vllm_available

    if it_args.use_vllm == "true":
        if not vllm_available():
            raise Hs2Error("use_vllm: true, but vLLM is not installed or there is no GPU (pip install 'hs2trl[vllm]')")
        return True
    return it_args.use_vllm == "auto" and vllm_available()


def sample_round(round_dir: Path, policy: str, prompts: list[list[dict]], it_args, model_args, seed: int,
                 with_vllm: bool) -> None:
    """Append `num_samples` responses per prompt not yet in generations.jsonl."""
    import torch

    from hs2trl.steer.generation import sample_hf, sample_vllm, vllm_engine

    items = [{"id": i, "prompt": p} for i, p in enumerate(prompts)]
    work = start_pass(items, OneFile(round_dir / "generations.jsonl"))
    if not work.mine:
        return
    tokenizer = load_policy_tokenizer(policy)
    if with_vllm:
        engine = vllm_engine(policy, seed=seed)
        model = None
    else:
        spread = torch.cuda.device_count() > 1  # a large policy over every GPU of this node
        model = load_policy(policy, tokenizer, model_args, device_map="auto" if spread else None)
        if not spread and torch.cuda.is_available():
            model.to("cuda")
        model.eval()
    say(f"{round_dir.name}: sampling {it_args.num_samples} responses for {len(work.mine)} prompts from {policy} "
        f"({'vLLM' if with_vllm else 'transformers generate'})")
    kwargs = dict(temperature=it_args.sample_temperature, top_p=it_args.sample_top_p,
                  max_new_tokens=it_args.max_new_tokens)

    def sample_chunk(chunk: list[dict]) -> list[dict]:
        batch = [item["prompt"] for item in chunk]
        if with_vllm:
            responses = sample_vllm(policy, tokenizer, batch, it_args.num_samples, llm=engine, **kwargs)
        else:
            torch.manual_seed(seed + chunk[0]["id"])  # the same chunk samples the same way after a restart
            responses = sample_hf(model, tokenizer, batch, it_args.num_samples,
                                  batch_size=it_args.generation_batch_size, **kwargs)
        return [{"id": item["id"], "prompt": item["prompt"], "responses": r} for item, r in zip(chunk, responses)]

    work.run(sample_chunk, it_args.prompts_per_chunk, f"{round_dir.name}: sampling", unit="prompt")
    model = None  # freed before the reward model is loaded
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def read_rows(path: Path) -> dict[int, dict]:
    return KeyedLog(path, key="id").read()


def score_round(round_dir: Path, it_args, model_args) -> None:
    """Append the goodness of every sample of the prompts not yet in scores.jsonl."""
    from hs2trl.rm.rewards import scalar_rewards, weights_for
    from hs2trl.rm.scorer import open_scorer

    generations = read_rows(round_dir / "generations.jsonl")
    work = start_pass([generations[i] for i in sorted(generations)], OneFile(round_dir / "scores.jsonl"))
    if not work.mine:
        return
    rm = open_scorer(it_args.reward_model_path, it_args.reward_url, it_args.reward_api_key_env,
                     dtype=model_args.dtype, device=str(rank_device()), spread=True,
                     batch_size=it_args.scoring_batch_size)
    weights = weights_for(rm.attributes, it_args.reward_weights)
    say(f"{round_dir.name}: scoring {sum(len(g['responses']) for g in work.mine)} samples with {rm.name} "
        f"({it_args.reward_weights})")

    def score_chunk(chunk: list[dict]) -> list[dict]:
        conversations, spans = [], []
        for generation in chunk:
            start = len(conversations)
            conversations += [generation["prompt"] + [{"role": "assistant", "content": response}]
                              for response in generation["responses"]]
            spans.append((generation["id"], start, len(conversations)))
        predictions = rm.scores(conversations)
        rewards = scalar_rewards(predictions, weights).tolist()
        return [{"id": i, it_args.reward_weights: rewards[a:b], "attributes": predictions[a:b].tolist()}
                for i, a, b in spans]

    work.run(score_chunk, it_args.prompts_per_chunk, f"{round_dir.name}: scoring", unit="prompt")
    rm.close()  # freed before the DPO round starts


def pair_round(round_dir: Path, it_args, n_prompts: int) -> tuple[int, int]:
    """pairs.jsonl from generations and scores; returns (pairs, prompts skipped because all samples tied)."""
    generations = read_rows(round_dir / "generations.jsonl")
    scores = read_rows(round_dir / "scores.jsonl")
    missing = [i for i in range(n_prompts) if i not in generations or i not in scores]
    if missing:
        raise Hs2Error(f"{round_dir}: prompts {missing[:5]} have no generations or scores (an interrupted run? rerun)")
    pairs, ties = [], 0
    for i in range(n_prompts):
        pair = best_worst_pair(generations[i]["prompt"], generations[i]["responses"],
                               scores[i][it_args.reward_weights])
        if pair is None:
            ties += 1
            continue
        pairs.append({"id": i, **pair})
    write_jsonl(round_dir / "pairs.jsonl", pairs)
    return len(pairs), ties


def train_round(round_dir: Path, data_args, training_args, model_args) -> None:
    """One DPO round (run as a child process, possibly several ranks): pairs.jsonl -> round_dir/model."""
    from hs2trl.stages import dpo

    require_shared_folder(round_dir, "the other nodes read the round's pairs.jsonl the head node wrote there")
    records = read_records(str(round_dir / "pairs.jsonl"))
    train_rows = preference_rows(records)
    eval_rows = preference_rows(read_records(data_args.eval_dataset)) if data_args.eval_dataset else []
    training_args.output_dir = str(round_dir / "model")
    resume = last_checkpoint(training_args.output_dir) is not None  # a killed round continues where it stopped
    dpo.train(data_args, training_args, model_args, resume, rows=(train_rows, eval_rows, []))


# ---------------------------------------------------------------- the driver


def round_folders(output_dir: str | Path) -> Rounds:
    """OUTPUT/round-1, round-2, ...: the Hub revision of each round's model is its folder name."""
    return Rounds(Path(output_dir), ROUND_PREFIX)


def child_command(argv: list[str], phase: str, r: int, policy: str, it_args, distributed: bool) -> list[str]:
    from hs2trl.runtime.launch import launch_command

    args = [*argv, "--round_phase", phase, "--round_index", str(r), "--model_name_or_path", policy]
    if not distributed:
        return launch_command("iterative_dpo", args)
    return launch_command("iterative_dpo", args, it_args.round_accelerate_config, it_args.round_num_processes,
                          it_args.round_launcher_args)


def push_round(rounds: Rounds, parsed, push: bool, hub_model_id: str | None, r: int) -> None:
    """Model card + recipe (of the whole iterative run) in the round's model folder, then the push as revision
    `round-r`, once: the PUSHED marker remembers it, so that a rerun after a failed push pushes the round again."""
    if push and rounds.pushed_to(r) == hub_model_id:
        return
    finish_training(None, str(rounds.model(r)), parsed, "iterative_dpo", push, hub_model_id,
                    revision=rounds.revision(r), save=False)
    if push:
        rounds.mark_pushed(r, hub_model_id)


def drive(argv: list[str], it_args, data_args, training_args, model_args) -> None:
    parsed = (it_args, data_args, training_args, model_args)
    out = Path(training_args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    push, hub_model_id = take_push_settings(training_args)
    original = require_model(model_args)
    reference = data_args.ref_model_name_or_path or original
    prompts = fixed_prompts(out, data_args, it_args, training_args.seed)
    with_vllm = use_vllm(it_args)
    rounds = round_folders(out)

    def run_round(r: int, policy: str) -> dict:
        round_dir = rounds.folder(r)
        round_dir.mkdir(exist_ok=True)
        seed = training_args.seed + 1000 * r
        if with_vllm:  # vLLM's GPU memory is only surely freed when its process ends
            run_in_child(child_command(argv, "sample", r, policy, it_args, distributed=False),
                         f"{round_dir.name} sampling")
        else:
            sample_round(round_dir, policy, prompts, it_args, model_args, seed, with_vllm=False)
        score_round(round_dir, it_args, model_args)
        n_pairs, ties = pair_round(round_dir, it_args, len(prompts))
        say(f"{round_dir.name}: {n_pairs} pairs kept, {ties} prompts skipped (all samples tied) "
            f"-> {round_dir / 'pairs.jsonl'}")
        if not n_pairs:
            raise Hs2Error(f"{round_dir.name}: no pairs: every prompt's samples tied")
        cmd = child_command([*argv, "--ref_model_name_or_path", reference], "train", r, policy, it_args,
                            distributed=True)
        nodes = launch_nodes(cmd)  # the node layout of the launch itself
        if nodes:
            say(f"{round_dir.name}: DPO over {nodes.count} nodes: start the command below on each other node "
                f"with its --machine_rank (torch waits up to {node_timeout()} s for them, {NODE_TIMEOUT_ENV})")
        run_in_child(cmd, f"{round_dir.name} DPO training")
        say(f"{round_dir.name}: model saved to {rounds.model(r)}")
        return {"round": r, "policy": policy, "reference": reference, "prompts": len(prompts), "pairs": n_pairs,
                "ties": ties}

    def after_done(r: int, fresh: bool) -> None:
        if fresh or push:  # a round finished before is pushed again only if its push failed (no PUSHED marker)
            push_round(rounds, parsed, push, hub_model_id, r)

    policy = drive_rounds(rounds, range(1, it_args.rounds + 1), original, run_round, after_done)
    say(f"iterative DPO finished: {it_args.rounds} round(s); final model {policy}")


def check(it_args, data_args, training_args, model_args) -> None:
    validate(it_args)
    require_model(model_args)
    probe_source(it_args.reward_model_path, it_args.reward_url, it_args.reward_api_key_env)
    if it_args.round_phase is None:
        select_prompts(data_args, it_args, seed=0)
    use_vllm(it_args)


def main(it_args, data_args, training_args, model_args) -> None:
    argv = stage_argv(it_args)
    validate(it_args)
    hint = f"the finished rounds, samples and scores in {training_args.output_dir}"
    with output_lock(training_args.output_dir, COMMAND), continues_from(hint):  # held for round children
        run_phase(argv, it_args, data_args, training_args, model_args)


def run_phase(argv: list[str], it_args, data_args, training_args, model_args) -> None:
    if it_args.round_phase is None:
        drive(argv, it_args, data_args, training_args, model_args)
        return
    round_dir = round_folders(training_args.output_dir).folder(it_args.round_index)
    take_push_settings(training_args)  # the driver pushes, once per round
    if it_args.round_phase == "train":
        train_round(round_dir, data_args, training_args, model_args)
    else:
        prompts = fixed_prompts(Path(training_args.output_dir), data_args, it_args, training_args.seed)
        sample_round(round_dir, require_model(model_args), prompts, it_args, model_args,
                     training_args.seed + 1000 * it_args.round_index, with_vllm=True)


if __name__ == "__main__":
    run_stage(parse, main)
