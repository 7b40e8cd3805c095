"""Stage: annotate every response of a dataset with a reward model (`hs2 annotate`), resumable, on 1 or more processes.

Each process scores a contiguous shard of the rows not yet in the output (chunks of `chunk_size` rows, length-sorted
batches inside a chunk) and appends them to its part file; the main process then appends the parts, in order, to the
output. See `hs2trl.rm.annotate` for the input formats and the columns added.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hs2trl.data.sources import read_records
from hs2trl.rm.annotate import (
    added_columns,
    annotated_rows,
    append_rows,
    count_done,
    finish_parquet,
    parquet_rows,
    part_file,
    read_jsonl,
    row_conversation,
    shards,
    stale_parts,
    work_file,
)
from hs2trl.rm.rewards import check_weights
from hs2trl.runtime.args import parse_stage_args
from hs2trl.runtime.errors import Hs2Error, continues_from, exit_on_user_error
from hs2trl.runtime.locks import output_lock
from hs2trl.runtime.multinode import require_shared_folder

COMMAND = "annotate"  # the hs2 command that runs this stage (named in lock holder records)


@dataclass
class AnnotateArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "The reward model (folder or Hub id)."})
    dataset_name: str | None = field(default=None, metadata={"help": "Hub id, local .jsonl/.jsonl.gz/.json/.parquet, or demo:helpsteer2."})
    output: str | None = field(default=None, metadata={"help": "Output .jsonl (appended to, resumable) or .parquet."})
    dataset_split: str = field(default="train", metadata={"help": "Split (Hub and demo datasets)."})
    weights: str | None = field(default=None, metadata={"help": "Also add a `reward` column: a preset or one number per model output."})
    batch_size: int = field(default=16, metadata={"help": "Sequences per forward pass."})
    chunk_size: int = field(default=512, metadata={"help": "Rows scored (length-sorted) and appended at a time."})
    max_length: int | None = field(default=None, metadata={"help": "Truncate longer conversations from the left (counted)."})
    max_rows: int | None = field(default=None, metadata={"help": "Annotate only the first N rows."})
    dtype: str = field(default="float32", metadata={"help": "float32, bfloat16, float16 or auto."})
    device_map: str | None = field(default=None, metadata={"help": "'auto': split one model over all GPUs (one process; for RMs too big for one GPU)."})
    overwrite: bool = field(default=False, metadata={"help": "Start again instead of resuming an existing output."})


def parse(argv) -> AnnotateArguments:
    (args,) = parse_stage_args((AnnotateArguments,), argv)
    for name, flag in (("model_name_or_path", "--model"), ("dataset_name", "--dataset"), ("output", "--output")):
        if not getattr(args, name):
            raise Hs2Error(f"annotate: {flag} is required")
    work_file(args.output)  # validates the suffix
    check_weights(args.weights, args.model_name_or_path)
    if args.device_map is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise Hs2Error("annotate: --device_map splits one model over the GPUs of one process; use 1 process with it")
    if args.batch_size < 1 or args.chunk_size < 1:
        raise Hs2Error("annotate: --batch-size and --chunk_size must be at least 1")
    return args


def load_inputs(args: AnnotateArguments):
    records = read_records(args.dataset_name, args.dataset_split)[: args.max_rows]
    if not records:
        raise Hs2Error(f"{args.dataset_name}: no rows")
    return records, [row_conversation(r) for r in records]


def model_outputs(model_path: str) -> list[str]:
    """The model's output names, from its config (no weights loaded)."""
    from transformers import AutoConfig

    from hs2trl.rm.modeling import check_reward_model, reward_attributes
    from hs2trl.runtime.pretrained import resolve_model

    path = resolve_model(model_path)
    check_reward_model(path)
    try:
        return reward_attributes(AutoConfig.from_pretrained(path))
    except (OSError, ValueError) as err:
        raise Hs2Error(f"reward model '{model_path}': cannot load its config ({str(err).splitlines()[0]})") from None


def check(argv) -> None:
    """Parse, validate every row and the model's config, before any process is launched."""
    from hs2trl.rm.rewards import resolve_scoring_weights

    args = parse(argv)
    load_inputs(args)
    outputs = model_outputs(args.model_name_or_path)
    if args.weights is not None:
        resolve_scoring_weights(args.model_name_or_path, outputs, args.weights, None)


def remove_outputs(output: str) -> None:
    for path in [Path(output), work_file(output), *stale_parts(output, [])]:
        if path.exists():
            path.unlink()


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    import torch
    from accelerate import PartialState

    args = parse(argv)
    # CPU ranks need cpu=True to form a (gloo) group; plain PartialState() would see one process each. Called from
    # another stage (hs2 steerlm), this shares that stage's state and leaves its process group alone.
    state = PartialState(cpu=not torch.cuda.is_available())
    # Held already by `hs2 annotate` (or `hs2 steerlm`) when launched by it.
    with output_lock(args.output, COMMAND), continues_from(f"the rows already in {args.output}"):
        annotate(args, state)


def annotate(args: AnnotateArguments, state) -> None:
    from tqdm.auto import tqdm

    from hs2trl.data.chat import encode_conversation
    from hs2trl.rm.rewardbench import truncate_left
    from hs2trl.rm.rewards import load_scoring_model, resolve_scoring_weights, scalar_rewards
    from hs2trl.rm.scoring import score_token_ids

    main_process, rank, world = state.is_main_process, state.process_index, state.num_processes
    require_shared_folder(Path(args.output).parent, "each rank writes its part of the annotation next to the output "
                          "and rank 0 merges them")
    records, conversations = load_inputs(args)
    total = len(records)
    outputs = model_outputs(args.model_name_or_path)
    multi = len(outputs) > 1
    weights = None
    if args.weights is not None:
        weights, wname = resolve_scoring_weights(args.model_name_or_path, outputs, args.weights, None)
    skip = added_columns(outputs, multi, weights is not None)
    clashing = sorted(set(skip) & set(records[0].data))
    if clashing and main_process:
        print(f"hs2: note: the input already has {', '.join(clashing)}: replaced by this model's values", flush=True)

    if args.overwrite and main_process:
        remove_outputs(args.output)
    state.wait_for_everyone()
    if args.output.endswith(".parquet") and Path(args.output).exists():
        n = parquet_rows(args.output)
        if n != total:
            raise Hs2Error(f"{args.output}: holds {n} rows, the input {total}: pass --overwrite or choose another --output")
        if main_process:
            print(f"hs2: {args.output} is already complete ({total} rows)", flush=True)
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
            print(f"hs2: {args.output} is already complete ({total} rows)", flush=True)
        state.wait_for_everyone()  # callers (hs2 steerlm) read the output next, on every rank
        return
    if done and main_process:
        print(f"hs2: resuming: {done} of {total} rows already in {work}", flush=True)

    plan = shards(done, total, world)
    parts = [part_file(args.output, s, e) for s, e in plan] if world > 1 else [work]
    if world > 1 and main_process:
        for stale in stale_parts(args.output, parts):  # left by a run with another number of processes
            stale.unlink()
    first, end = plan[rank]
    start = first + (count_done(parts[rank], records, skip, offset=first) if world > 1 else 0)
    parts[rank].touch()  # an empty shard still leaves its (empty) part for the merge

    model, tokenizer, _ = load_scoring_model(args.model_name_or_path, dtype=args.dtype, device=str(state.device),
                                             device_map=args.device_map)
    truncated, started = 0, time.perf_counter()
    # A `with` closes the bar before an interruption's message is printed, not after it.
    with tqdm(total=end - first, initial=start - first, desc=f"Annotating (rank {rank})" if world > 1 else "Annotating",
              unit="row", disable=not main_process) as bar:
        for lo in range(start, end, args.chunk_size):
            hi = min(lo + args.chunk_size, end)
            sequences = [encode_conversation(tokenizer, c) for c in conversations[lo:hi]]
            truncated += truncate_left(sequences, args.max_length)
            scores = score_token_ids(model, tokenizer.pad_token_id, sequences, batch_size=args.batch_size)
            rewards = scalar_rewards(scores, weights) if weights is not None else None
            append_rows(parts[rank], annotated_rows(records[lo:hi], scores, outputs, multi, rewards))
            bar.update(hi - lo)
    if truncated:
        print(f"hs2: rank {rank}: {truncated} rows longer than max_length={args.max_length} tokens were truncated "
              "from the left", flush=True)
    state.wait_for_everyone()
    if main_process:
        if world > 1:  # parts in order; each is removed once appended (a crash between the two is caught on rerun)
            for part in parts:
                append_rows(work, read_jsonl(part))
                part.unlink()
        if args.output.endswith(".parquet"):
            finish_parquet(args.output)
        extra = f", reward = {wname} weights" if weights is not None else ""
        print(f"hs2: annotated {total - done} rows on {world} process(es) in {time.perf_counter() - started:.1f}s; "
              f"{args.output} holds all {total} rows (columns added: {', '.join(skip)}{extra})", flush=True)
    state.wait_for_everyone()  # callers (hs2 steerlm) read the output next, on every rank


if __name__ == "__main__":
    main(sys.argv[1:])
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():  # a clean exit for a multi-process run
        dist.destroy_process_group()
