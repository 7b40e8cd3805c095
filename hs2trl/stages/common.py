"""What every stage shares: argument parsing (TRL's parser, errors as one line), data splits, resume, push, env."""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass, field

from ..errors import Hs2Error

# Telemetry off and no tokenizer fork warnings in every stage process.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# TRL's own configs still set `gradient_checkpointing`; transformers 5 warns about the name on every parse.
warnings.filterwarnings("ignore", message="`(is_)?gradient_checkpointing` is deprecated", category=FutureWarning)


def _cpu_ranks_use_gloo() -> None:
    """Under a multi-process launch on a machine without a GPU, make accelerate/transformers run a real CPU (gloo)
    data-parallel job; otherwise each rank would believe it is alone."""
    if "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch

        if not torch.cuda.is_available():
            os.environ.setdefault("ACCELERATE_USE_CPU", "true")


_cpu_ranks_use_gloo()


@dataclass
class DataArguments:
    """Where the data comes from; shared by every stage."""

    dataset_name: str = field(
        default="demo:helpsteer2",
        metadata={"help": "A Hub dataset id, a local .jsonl/.jsonl.gz/.json/.parquet file, or demo:helpsteer2."},
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on (Hub/demo datasets)."})
    dataset_test_split: str | None = field(
        default="validation", metadata={"help": "Split to evaluate on (Hub/demo datasets); none to skip."}
    )
    eval_dataset: str | None = field(default=None, metadata={"help": "A separate evaluation file (overrides the split)."})
    max_train_rows: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    max_eval_rows: int | None = field(default=None, metadata={"help": "Use only the first N evaluation rows."})
    resume: bool = field(default=False, metadata={"help": "Resume from the last checkpoint in output_dir."})


def load_splits(data_args: DataArguments) -> tuple[list, list]:
    """Training and evaluation records: the eval file, else the test split of a Hub/demo dataset, else (with an
    `eval_fraction` > 0) the last rows of the training data, an even count so that HelpSteer2 pairs stay whole."""
    from ..data.records import is_local, read_records

    train = read_records(data_args.dataset_name, data_args.dataset_train_split)[: data_args.max_train_rows]
    eval_fraction = getattr(data_args, "eval_fraction", 0.0)
    if data_args.eval_dataset:
        evaluation = read_records(data_args.eval_dataset)
    elif not is_local(data_args.dataset_name) and data_args.dataset_test_split:
        evaluation = read_records(data_args.dataset_name, data_args.dataset_test_split)
    elif eval_fraction > 0:
        n_eval = 2 * max(1, round(len(train) * eval_fraction / 2))
        train, evaluation = train[:-n_eval], train[-n_eval:]
    else:
        evaluation = []
    if not train:
        raise Hs2Error(f"{data_args.dataset_name}: no training rows")
    return train, evaluation[: data_args.max_eval_rows]


def stage_parser(dataclass_types):
    from trl import TrlParser

    class StageParser(TrlParser):
        def error(self, message):  # argparse would print usage and exit; we want one line
            raise Hs2Error(message)

    return StageParser(dataclass_types)


def _field_names(dataclass_types) -> set[str]:
    from dataclasses import fields as dc_fields

    return {f.name for t in dataclass_types for f in dc_fields(t) if f.init}


def _load_recipe(path: str, known: set[str]) -> dict:
    """The recipe as a mapping, with any key no stage dataclass knows reported (with the closest known key)."""
    import difflib

    import yaml

    if not os.path.isfile(path):
        raise Hs2Error(f"{path}: no such recipe file")
    try:
        with open(path, encoding="utf-8") as f:
            recipe = yaml.safe_load(f)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f"line {mark.line + 1}: " if mark is not None else ""
        raise Hs2Error(f"{path}: {at}not valid YAML ({getattr(err, 'problem', None) or err})") from None
    if recipe is None:
        return {}
    if not isinstance(recipe, dict):
        raise Hs2Error(f"{path}: a recipe must be a YAML mapping of `key: value`, got {type(recipe).__name__}")
    unknown = [k for k in recipe if k != "env" and k not in known]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hints.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise Hs2Error(f"{path}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(hints)}")
    return recipe


def _cli_keys(argv: list[str]) -> list[str]:
    """The `--key` names given on a stage command line (after the recipe)."""
    keys = []
    skip = False
    for token in argv:
        if skip:
            skip = False
            continue
        if token == "--config":
            skip = True
        elif token.startswith("--") and len(token) > 2:
            keys.append(token[2:].split("=", 1)[0].replace("-", "_"))
    return keys


def parse_stage_args(dataclass_types, argv: list[str] | None):
    """Parse `--config recipe.yaml` and `--key value` pairs into the dataclasses; any mistake is one line.

    The keys set explicitly (recipe + command line) are remembered on each returned object for `save_recipe`."""
    import sys

    argv = list(argv) if argv is not None else sys.argv[1:]
    recipe_path = argv[argv.index("--config") + 1] if "--config" in argv and argv.index("--config") + 1 < len(argv) else None
    recipe = _load_recipe(recipe_path, _field_names(dataclass_types)) if recipe_path else {}
    where_ = recipe_path or "the command line"
    try:
        parsed = stage_parser(dataclass_types).parse_args_and_config(argv)
    except FileNotFoundError as err:
        raise Hs2Error(f"{err.filename}: no such recipe file") from None
    except ValueError as err:
        msg = str(err)
        if msg.startswith("Unknown arguments from config file"):
            keys = re.findall(r"'--([^']+)'", msg.split(":", 1)[1])[::2] or [msg]
            raise Hs2Error(f"{where_}: unknown key{'s' if len(keys) > 1 else ''} {', '.join(map(repr, keys))}") from None
        if "not used by the HfArgumentParser" in msg:
            unused = re.findall(r"'(--?[^']+)'", msg)
            raise Hs2Error(f"unknown option{'s' if len(unused) > 1 else ''} {' '.join(unused) or msg}") from None
        if "bf16/gpu" in msg:
            raise Hs2Error(
                f"{where_}: bf16 needs a GPU (or a CPU with bf16 support): set `bf16: false` in the recipe or pass "
                "`--bf16 false`"
            ) from None
        raise Hs2Error(msg.splitlines()[0]) from None
    except TypeError as err:
        raise Hs2Error(f"{where_}: {err}") from None
    explicit = [k for k in recipe if k != "env"] + [k for k in _cli_keys(argv) if k not in recipe]
    for obj in parsed:
        try:
            object.__setattr__(obj, "_hs2_explicit", [k for k in explicit if hasattr(obj, k)])
            object.__setattr__(obj, "_hs2_recipe", recipe_path)
        except (AttributeError, TypeError):  # a frozen/slotted dataclass: save_recipe falls back to non-defaults
            pass
    for obj in parsed:
        check_model_source(getattr(obj, "model_name_or_path", None), "model_name_or_path")
    return parsed


def check_model_source(name: str | None, field_name: str = "model_name_or_path", reward_model: bool = False) -> None:
    """A local model folder must hold a model (config.json, adapter or weights); with reward_model, a
    *ForSequenceClassification one. A name that is not a local folder (Hub id, pkg:, a later stage's output) passes.
    """
    if not name or not isinstance(name, str) or not os.path.exists(name):
        return
    from ..hub import model_folder_problem

    problem = model_folder_problem(name)
    if problem:
        raise Hs2Error(f"{field_name} '{name}': {problem}")
    if reward_model:
        from ..modeling import check_reward_model

        try:
            check_reward_model(name)
        except Hs2Error as err:
            raise Hs2Error(f"{field_name} '{name}': {str(err).removeprefix(f'{name}: ')}") from None


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def checkpoint_is_complete(path: str) -> bool:
    """The Trainer writes trainer_state.json last: a checkpoint without a readable one was cut off while saving."""
    import json

    try:
        with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as f:
            return "global_step" in json.load(f)
    except (OSError, ValueError):
        return False


def resume_checkpoint(output_dir: str, resume: bool) -> str | None:
    """The last complete `checkpoint-N` in output_dir when --resume is set (None to start afresh).

    A checkpoint cut off while it was being written (the process was killed mid-save) is skipped, and removed by the
    main process so that the resumed run can write that step again. Without --resume, existing checkpoints are left
    alone and a warning says how to continue them."""
    import shutil

    from ..hub import checkpoint_dirs

    found = checkpoint_dirs(output_dir) if os.path.isdir(output_dir) else []
    if not resume:
        if found and is_main_process():
            print(f"hs2: warning: {output_dir} already holds checkpoints (up to {found[-1].name}) and this run starts "
                  "from the beginning; pass --resume to continue the earlier run instead", flush=True)
        return None
    complete = [str(p) for p in found if checkpoint_is_complete(str(p))]
    last = complete[-1] if complete else None
    for partial in found:
        if str(partial) not in complete and (last is None or int(partial.name.split("-")[1]) > int(last.split("-")[-1])):
            if is_main_process():
                print(f"hs2: --resume: {partial} is incomplete (cut off while saving); removing it", flush=True)
                shutil.rmtree(partial, ignore_errors=True)
    if is_main_process():
        if last is None:
            print(f"hs2: --resume: no complete checkpoint in {output_dir}; starting from the beginning", flush=True)
        else:
            print(f"hs2: resuming from {last}", flush=True)
    return last


class StopOnSignal:
    """SIGTERM (a scheduler's preemption, `kill`) stops training cleanly: the step in progress finishes, a checkpoint
    of that step is saved, and the process exits with status 143. `--resume` continues from there and reaches the
    same weights as an uninterrupted run. A second SIGTERM (2 s or more later) kills at once. In a multi-process run every rank stops at
    the same step (the flag is all-reduced each step), so the collective checkpoint save cannot deadlock."""

    EXIT_STATUS = 128 + 15

    def __init__(self, signals=None):
        import signal

        self.signals = tuple(signals or (signal.SIGTERM,))
        self.received: int | None = None
        self._first_at = 0.0
        self._previous: dict = {}
        self.stopped_at: int | None = None

    # Copies of one stop request arrive together (the process group's signal plus the one a launcher forwards):
    # only a signal that comes this much later is a second request.
    REPEAT_AFTER_S = 2.0

    def _handle(self, signum, frame):
        import signal
        import time

        now = time.monotonic()
        if self.received is not None:
            if now - self._first_at < self.REPEAT_AFTER_S:
                return
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)  # a second request: die at once
            return
        self.received, self._first_at = signum, now
        # os.write, not print: a handler that prints while the main thread prints raises "reentrant call"
        os.write(2, f"hs2: got signal {signum}: saving a checkpoint after this step, then stopping\n".encode())

    def install(self) -> None:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        import signal

        for sig, handler in self._previous.items():
            if self.received != sig:
                signal.signal(sig, handler)
        self._previous.clear()

    def requested(self, device=None) -> bool:
        flag = self.received is not None
        try:
            import torch
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                t = torch.tensor([1 if flag else 0], device=device)
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
                flag = bool(t.item())
        except (ImportError, RuntimeError):
            pass
        return flag

    def callback(self):
        from transformers import TrainerCallback

        owner = self

        class _StopCallback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if owner.requested(getattr(args, "device", None)):
                    control.should_save = True
                    control.should_training_stop = True
                    owner.stopped_at = state.global_step
                return control

        return _StopCallback()


def seed_each_epoch_callback():
    """Reseed torch's global RNG with `seed + epoch` at the start of every epoch.

    The Trainer's samplers (random, group_by_length) draw each epoch's order from the global RNG when the epoch
    starts. An uninterrupted run draws epoch e's order from whatever state epoch e-1 left; a run resumed in epoch e
    draws it from the freshly seeded state, so from epoch 2 on it would see another order (and end on other
    weights). Seeding every epoch from (seed, epoch) makes the order a function of the epoch alone, as
    DistributedSampler.set_epoch does; the Trainer then restores the checkpoint's RNG state for the steps."""
    import torch
    from transformers import TrainerCallback

    class _SeedEachEpoch(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            seed = args.data_seed if getattr(args, "data_seed", None) is not None else args.seed
            # state.epoch is exactly e.0 when epoch e starts, and e.x when a run resumed inside epoch e starts it
            epoch = int(math.floor((state.epoch or 0) + 1e-6))
            torch.manual_seed(seed + epoch)
            return control

    return _SeedEachEpoch()


def train_resumable(trainer, output_dir: str, resume: bool):
    """`trainer.train()` that resumes from the last complete checkpoint with --resume (reaching the same weights as
    an uninterrupted run: see seed_each_epoch_callback), and turns SIGTERM into a checkpoint and exit status 143
    (see StopOnSignal). Returns the train output of a finished run."""
    stopper = StopOnSignal()
    callbacks = [stopper.callback(), seed_each_epoch_callback()]
    for callback in callbacks:
        trainer.add_callback(callback)
    stopper.install()
    try:
        result = trainer.train(resume_from_checkpoint=resume_checkpoint(output_dir, resume))
    finally:
        stopper.uninstall()
        for callback in callbacks:
            trainer.remove_callback(callback)
    if stopper.stopped_at is not None:
        if is_main_process():
            print(f"hs2: stopped at step {stopper.stopped_at}; checkpoint saved in {output_dir}/checkpoint-"
                  f"{stopper.stopped_at}. Continue with the same command and --resume", flush=True)
        raise SystemExit(StopOnSignal.EXIT_STATUS)
    return result


def take_push_settings(training_args) -> tuple[bool, str | None]:
    """Training never talks to the Hub (a network failure must not kill a run): push only after saving locally."""
    push, hub_id = training_args.push_to_hub, training_args.hub_model_id
    training_args.push_to_hub = False
    if push and getattr(training_args, "hub_token", None):
        os.environ.setdefault("HF_TOKEN", training_args.hub_token)  # the later push_folder authenticates with it
    if push and not hub_id:
        hub_id = os.path.basename(os.path.normpath(training_args.output_dir))
    return push, hub_id


def push_after_training(folder: str, push: bool, hub_model_id: str | None, revision: str | None = None) -> None:
    if not (push and is_main_process()):
        return
    from ..hub import push_folder

    url = push_folder(folder, hub_model_id, revision=revision)
    print(f"hs2: pushed {folder} to {hub_model_id} ({url})", flush=True)


# Keys that describe one run, not the recipe: never written to hs2trl_recipe.yaml (a replayed recipe must not push,
# resume or carry a token).
RUN_ONLY_KEYS = {"resume", "push_to_hub", "hub_model_id", "hub_token", "hub_revision", "config"}


def _plain(value):
    """A YAML-safe value: enums by value, tuples as lists, anything else unusual as its string."""
    import enum

    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def recipe_values(parsed_args) -> dict:
    """The settings of a run as a recipe: every key set in the recipe or on the command line (as parsed), or, for
    objects not made by parse_stage_args, every field that differs from its default."""
    from dataclasses import MISSING, fields, is_dataclass

    values: dict = {}
    for obj in parsed_args:
        if not is_dataclass(obj):
            continue
        explicit = getattr(obj, "_hs2_explicit", None)
        for f in fields(obj):
            if not f.init or f.name in RUN_ONLY_KEYS or f.name in values:
                continue
            value = getattr(obj, f.name, None)
            if explicit is not None:
                if f.name not in explicit:
                    continue
            else:
                default = f.default if f.default is not MISSING else (
                    f.default_factory() if f.default_factory is not MISSING else MISSING)
                if _plain(value) == _plain(default):
                    continue
            values[f.name] = _plain(value)
    return values


def save_recipe(output_dir: str, parsed_args, stage: str) -> str | None:
    """Write output_dir/hs2trl_recipe.yaml: the run's settings as a recipe that `--config` accepts again (main process
    only). The first line names the stage (the model card reads it)."""
    import yaml

    from ..hub import RECIPE_FILE

    if not is_main_process():
        return None
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, RECIPE_FILE)
    header = f"# hs2trl stage: {stage}\n# The settings of this run; rerun with: --config {RECIPE_FILE}\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(header + yaml.safe_dump(recipe_values(parsed_args), sort_keys=False, allow_unicode=True))
    return path


def write_run_card(output_dir: str, parsed_args, stage: str, hub_model_id: str | None = None,
                   revision: str | None = None) -> None:
    """Recipe file + model card for a finished output folder (main process only)."""
    if not is_main_process():
        return
    from ..hub import write_model_card

    save_recipe(output_dir, parsed_args, stage)
    write_model_card(output_dir, hub_model_id=hub_model_id, revision=revision, stage=stage)


def finish_training(trainer, output_dir: str, parsed_args, stage: str, push: bool, hub_model_id: str | None,
                    revision: str | None = None, save: bool = True) -> None:
    """The end of a training stage (trainer may be None with save=False): save the model (unless the stage saved it
    itself), write the recipe and the model card, then push when asked. A failed push leaves everything local in
    place and exits 2 with the retry command."""
    if save:
        trainer.save_model(output_dir)
    accelerator = getattr(trainer, "accelerator", None)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    write_run_card(output_dir, parsed_args, stage, hub_model_id if push else None, revision)
    push_after_training(output_dir, push, hub_model_id, revision)


# Recipe file name -> the stage module that reads it: `recipes/<experiment>/<name>[-variant].yaml`. A recipe may also
# name its stage in a comment line `# stage: <module>`. Every bundled recipe must map to a stage (tests check it).
RECIPE_STAGES = {
    "rm": "train_rm", "annotate": "annotate", "sft": "sft", "dpo": "dpo", "iterative-dpo": "iterative_dpo",
    "ppo": "ppo", "steerlm": "steerlm", "steerlm2": "steerlm2",
}


def recipe_stage(path: str) -> str | None:
    """The stage module name (in hs2trl.stages) for a recipe file, or None when its name maps to no stage."""
    from pathlib import Path

    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.startswith("#"):
                    break
                m = re.match(r"#\s*stage:\s*([A-Za-z0-9_]+)\s*$", line)
                if m:
                    return m.group(1)
    except OSError:
        pass
    stem = Path(path).stem.replace("_", "-")
    matches = [k for k in RECIPE_STAGES if stem == k or stem.startswith(k + "-")]
    return RECIPE_STAGES[max(matches, key=len)] if matches else None


def recipe_description(path: str) -> str:
    """The first comment line of a recipe or accelerate config (its one-line description)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#"):
                return line.lstrip("#").strip()
            if line.strip():
                break
    return ""
