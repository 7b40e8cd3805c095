"""Stage: annotate every response of a dataset with a reward model (`hs2 annotate`), resumable, on 1 or more processes.

Each process scores a contiguous shard of the rows not yet in the output (chunks of `chunk_size` rows, length-sorted
batches inside a chunk) and appends them to its part file (with one process, the output itself): the shared resumable
pass of `hs2trl.runtime.resumable`, with annotate's own rule on top (the rows already written must be the input's, in
input order). The main process then appends the parts' rows, in input order, to the output. See `hs2trl.rm.annotate`
for the input formats and the columns added.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from hs2trl.data.sources import read_records
from hs2trl.rm.annotate import (
    ShardParts,
    added_columns,
    annotated_rows,
    append_rows,
    count_done,
    finish_parquet,
    in_shard,
    parquet_rows,
    part_file,
    row_conversation,
    shards,
    stale_parts,
    work_file,
)
from hs2trl.rm.rewards import check_weights
from hs2trl.rm.scorer import open_scorer, require_one_source
from hs2trl.runtime.args import parse_stage_args, run_stage
from hs2trl.runtime.errors import Hs2Error, continues_from
from hs2trl.runtime.locks import output_lock
from hs2trl.runtime.multinode import require_shared_folder
from hs2trl.runtime.resumable import start_pass
from hs2trl.runtime.say import say

COMMAND = "annotate"  # the hs2 command that runs this stage (named in lock holder records)


@dataclass
class AnnotateArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "The reward model (folder or Hub id)."})
    reward_url: str | None = field(
        default=None, metadata={"help": "Score with `hs2 serve-rm` server(s) instead: URL[,URL...]."}
    )
    reward_api_key_env: str | None = field(
        default=None, metadata={"help": "Environment variable with the servers' API key (default HS2_RM_API_KEY)."}
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub id, local .jsonl/.jsonl.gz/.json/.parquet, or demo:helpsteer2."}
    )
    output: str | None = field(default=None, metadata={"help": "Output .jsonl (appended to, resumable) or .parquet."})
    dataset_split: str = field(default="train", metadata={"help": "Split (Hub and demo datasets)."})
    weights: str | None = field(
        default=None, metadata={"help": "Also add a `reward` column: a preset or one number per model output."}
    )
    batch_size: int = field(default=16, metadata={"help": "Sequences per forward pass."})
    chunk_size: int = field(default=512, metadata={"help": "Rows scored (length-sorted) and appended at a time."})
    max_length: int | None = field(
        default=None, metadata={"help": "Truncate longer conversations from the left (counted)."}
    )
    max_rows: int | None = field(default=None, metadata={"help": "Annotate only the first N rows."})
    dtype: str = field(default="float32", metadata={"help": "The dtype to score in.",
                                                    "choices": ["float32", "bfloat16", "float16", "auto"]})
    device_map: str | None = field(
        default=None,
        metadata={"help": "'auto': split one model over all GPUs (one process; for RMs too big for one GPU)."},
    )
    overwrite: bool = field(default=False, metadata={"help": "Start again instead of resuming an existing output."})


def parse(argv) -> tuple[AnnotateArguments]:
    (args,) = parse_stage_args((AnnotateArguments,), argv)
    require_one_source(args.model_name_or_path, args.reward_url, "--model", "--reward-url")
    for name, flag in (("dataset_name", "--dataset"), ("output", "--output")):
        if not getattr(args, name):
            raise Hs2Error(f"annotate: {flag} is required")
    work_file(args.output)  # validates the suffix
    check_weights(args.weights, args.model_name_or_path)
    if args.reward_url and args.device_map is not None:
        raise Hs2Error("annotate: --device_map places a local model; a served one is placed by `hs2 serve-rm`")
    if args.device_map is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise Hs2Error("annotate: --device_map splits one model over the GPUs of one process; use 1 process with it")
    if args.batch_size < 1 or args.chunk_size < 1:
        raise Hs2Error("annotate: --batch-size and --chunk_size must be at least 1")
    return (args,)


def load_inputs(args: AnnotateArguments):
    records = read_records(args.dataset_name, args.dataset_split)[: args.max_rows]
    if not records:
        raise Hs2Error(f"{args.dataset_name}: no rows")
    return records, [row_conversation(r) for r in records]


def rm_scorer(args: AnnotateArguments, **options):
    """The RM's scorer: local (its config read now, its weights at the first chunk) or the servers of --reward-url."""
    return open_scorer(args.model_name_or_path, args.reward_url, args.reward_api_key_env,
                       batch_size=args.batch_size, max_length=args.max_length, **options)


def check(args: AnnotateArguments) -> None:
    """Validate every row and the model's config (or reach its servers), before any process is launched."""
    load_inputs(args)
    scorer = rm_scorer(args)
    try:
        if args.weights is not None:
            scorer.weights(args.weights, None)
    finally:
        scorer.close()


def remove_outputs(output: str) -> None:
    for path in [Path(output), work_file(output), *stale_parts(output, [])]:
        if path.exists():
            path.unlink()


def main(args: AnnotateArguments) -> None:
    import torch
    from accelerate import PartialState

    # CPU ranks need cpu=True to form a (gloo) group; plain PartialState() would see one process each. Called from
    # another stage (hs2 steerlm), this shares that stage's state and leaves its process group alone.
    state = PartialState(cpu=not torch.cuda.is_available())
    # Held already by `hs2 annotate` (or `hs2 steerlm`) when launched by it.
    with output_lock(args.output, COMMAND), continues_from(f"the rows already in {args.output}"):
        annotate(args, state)


def annotate(args: AnnotateArguments, state) -> None:
    from hs2trl.rm.rewards import scalar_rewards

    main_process, rank, world = state.is_main_process, state.process_index, state.num_processes
    require_shared_folder(Path(args.output).parent, "each rank writes its part of the annotation next to the output "
                          "and rank 0 merges them")
    records, conversations = load_inputs(args)
    total = len(records)
    scorer = rm_scorer(args, dtype=args.dtype, device=str(state.device), device_map=args.device_map)
    outputs = scorer.attributes
    multi = len(outputs) > 1
    weights = None
    if args.weights is not None:
        weights, wname = scorer.weights(args.weights, None)
    skip = added_columns(outputs, multi, weights is not None)
    clashing = sorted(set(skip) & set(records[0].data))
    if clashing:
        say(f"note: the input already has {', '.join(clashing)}: replaced by this model's values")

    if args.overwrite and main_process:
        remove_outputs(args.output)
    state.wait_for_everyone()
    if args.output.endswith(".parquet") and Path(args.output).exists():
        n = parquet_rows(args.output)
        if n != total:
            raise Hs2Error(f"{args.output}: holds {n} rows, the input {total}: pass --overwrite or choose "
                           "another --output")
        say(f"{args.output} is already complete ({total} rows)")
        return
    work = work_file(args.output)
    work.parent.mkdir(parents=True, exist_ok=True)
    done = count_done(work, records, skip)
    state.wait_for_everyone()  # every rank has read the output before anything is appended to it
    if done == total:
        if main_process:
            for stale in stale_parts(args.output, []):
                stale.unlink()
            if args.output.endswith(".parquet"):
                finish_parquet(args.output)
            say(f"{args.output} is already complete ({total} rows)")
        state.wait_for_everyone()  # callers (hs2 steerlm) read the output next, on every rank
        return
    if done:
        say(f"resuming: {done} of {total} rows already in {work}")

    plan = shards(done, total, world)
    parts = [part_file(args.output, s, e) for s, e in plan] if world > 1 else [work]
    if world > 1 and main_process:
        for stale in stale_parts(args.output, parts):  # left by a run with another number of processes
            stale.unlink()
    # The shared resumable pass over the rows left: one process appends to the work file itself (its rows from row 0);
    # several each append their contiguous shard to their own part, merged in input order at the end.
    starts = [s for s, _ in plan] if world > 1 else [0]
    rows_left = start_pass([{"id": i} for i in range(done, total)], ShardParts(parts, starts, records, skip),
                           ranks=state, share=in_shard(plan))

    scorer.load()  # before the progress bar
    started = time.perf_counter()

    def annotate_chunk(chunk: list[dict]) -> list[dict]:
        ids = [item["id"] for item in chunk]
        scores = scorer.scores([conversations[i] for i in ids])
        rewards = scalar_rewards(scores, weights) if weights is not None else None
        return annotated_rows([records[i] for i in ids], scores, outputs, multi, rewards)

    rows_left.run(annotate_chunk, args.chunk_size, f"Annotating (rank {rank})" if world > 1 else "Annotating",
                  unit="row")
    scorer.close()
    if scorer.truncated:
        limit = f"max_length={args.max_length}" if args.max_length else "the server's --max-length"
        print(f"hs2: rank {rank}: {scorer.truncated} rows longer than {limit} tokens were truncated from the left",
              flush=True)  # every rank counts its own share
    if main_process:
        if world > 1:  # the shards' rows, in input order, after the work file's
            rows = rows_left.rows()
            append_rows(work, [rows[i] for i in range(done, total)])
            for part in parts:  # a crash before this leaves them stale: a rerun finds their rows in the work file
                part.unlink(missing_ok=True)
        if args.output.endswith(".parquet"):
            finish_parquet(args.output)
        extra = f", reward = {wname} weights" if weights is not None else ""
        say(f"annotated {total - done} rows on {world} process(es) in {time.perf_counter() - started:.1f}s; "
            f"{args.output} holds all {total} rows (columns added: {', '.join(skip)}{extra})")
    state.wait_for_everyone()  # callers (hs2 steerlm) read the output next, on every rank


if __name__ == "__main__":
    run_stage(parse, main)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():  # a clean exit for a multi-process run
        dist.destroy_process_group()
