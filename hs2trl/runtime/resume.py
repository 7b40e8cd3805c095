"""Resuming training: the last complete checkpoint, the same data order as an uninterrupted run, SIGTERM and Ctrl-C
as a checkpoint."""

from __future__ import annotations

import math
import os
import signal

from hs2trl.runtime.errors import Interrupted
from hs2trl.runtime.process import is_main_process
from hs2trl.runtime.say import say
from hs2trl.runtime.signals import StopOnSignal


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

    from hs2trl.runtime.outputs import checkpoint_dirs

    found = checkpoint_dirs(output_dir) if os.path.isdir(output_dir) else []
    if not resume:
        if found:
            say(f"warning: {output_dir} already holds checkpoints (up to {found[-1].name}) and this run starts "
                "from the beginning; pass --resume to continue the earlier run instead")
        return None
    complete = [str(p) for p in found if checkpoint_is_complete(str(p))]
    last = complete[-1] if complete else None
    for partial in found:
        if str(partial) not in complete and (last is None
                                             or int(partial.name.split("-")[1]) > int(last.split("-")[-1])):
            if is_main_process():
                say(f"--resume: {partial} is incomplete (cut off while saving); removing it")
                shutil.rmtree(partial, ignore_errors=True)
    if last is None:
        say(f"--resume: no complete checkpoint in {output_dir}; starting from the beginning")
    else:
        say(f"resuming from {last}")
    return last


def resumed(output_dir: str, what: str = "") -> str:
    """What the same command continues from after Ctrl-C outside the training loop (see errors.continues_from)."""
    return f"{what}the last complete checkpoint in {output_dir}, with --resume"


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
    an uninterrupted run: see seed_each_epoch_callback), and turns SIGTERM or Ctrl-C into a checkpoint and exit
    status 143 or 130 (see StopOnSignal). Returns the train output of a finished run."""
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
        checkpoint = f"{output_dir}/checkpoint-{stopper.stopped_at}"
        if stopper.received == signal.SIGINT:  # Ctrl-C: one line, printed by errors.exit_on_user_error
            raise Interrupted(f"{checkpoint} (step {stopper.stopped_at}), with --resume")
        say(f"stopped at step {stopper.stopped_at}; checkpoint saved in {checkpoint}. Continue with the "
            "same command and --resume")
        raise SystemExit(stopper.exit_status)
    return result
