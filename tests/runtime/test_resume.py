"""Interrupted training: a run killed mid-way (SIGKILL, SIGTERM from a scheduler, or Ctrl-C) resumes with `--resume`
from its last complete checkpoint and ends on the same weights as an uninterrupted run with the same seed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.fixtures import REPO

STEPS, SAVE_EVERY = 24, 4  # 16 rows, batch 2: 8 steps an epoch, so 3 epochs; checkpoints every 4 steps


SETTINGS = ["--max_steps", str(STEPS), "--save_steps", str(SAVE_EVERY), "--per_device_train_batch_size", "2",
            "--save_total_limit", "3", "--logging_steps", "4", "--learning_rate", "1e-4",
            "--eval_strategy", "no", "--load_best_model_at_end", "false"]


def _train_cmd(model: str, data: str, out: Path, *extra: str) -> list[str]:
    """`hs2 train-rm ...` as a user types it."""
    return [sys.executable, "-m", "hs2trl.cli", "train-rm", "--model", model, "--dataset", data,
            "--output-dir", str(out), *SETTINGS, *extra]


def _stage_cmd(model: str, data: str, out: Path) -> list[str]:
    """The process `hs2 train-rm` launches (same arguments), started directly: one interpreter start less."""
    recipe = str(REPO / "recipes" / "demo" / "rm.yaml")
    return [sys.executable, "-m", "hs2trl.stages.train_rm", "--config", recipe, "--model_name_or_path", model,
            "--dataset_name", data, "--output_dir", str(out), *SETTINGS]


def _start(cmd: list[str]) -> subprocess.Popen:
    # Its own process group: the group is signalled as a terminal or a batch scheduler would signal the job.
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _interrupt_when(plan: dict, timeout: float = 240) -> None:
    """For each process: send its signal to its group as soon as its file appears (polled together, every 5 ms)."""
    deadline = time.monotonic() + timeout
    pending = dict(plan)
    while pending:
        for proc, (path, sig) in list(pending.items()):
            if path.exists():
                os.killpg(proc.pid, sig)
                del pending[proc]
            elif proc.poll() is not None:
                raise AssertionError(f"the run ended before {path} appeared:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{[str(p) for p, _ in pending.values()]} did not appear in {timeout}s")
        time.sleep(0.005)


def _wait_group_gone(pgid: int, timeout: float = 120) -> None:
    """Every process of the group has exited (the stage may outlive the `hs2` launcher it was started by)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.killpg(pgid, signal.SIGKILL)
    raise AssertionError("the killed run's processes did not exit")


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _assert_same_weights(a: Path, b: Path) -> float:
    import torch

    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5, rtol=0), f"{k}: max diff {(wa[k] - wb[k]).abs().max().item()}"
    return worst


@pytest.mark.slow
def test_killed_runs_resume_to_the_same_weights(tmp_path, helpsteer_file, tiny_lm_dir):
    """Four runs at once (with the demo recipe's length-grouped sampling): A uninterrupted; B SIGKILLed right after
    checkpoint-12 (mid epoch 2), with a cut-off checkpoint-16 left behind as a kill during a save would; C sent SIGTERM
    and D Ctrl-C (SIGINT to the process group, as a terminal sends it) after checkpoint-4: each saves the step it is
    at and exits, 143 / 130. B, C and D then resume with --resume, and all four end on the same weights."""
    a_dir, b_dir, c_dir, d_dir = tmp_path / "A", tmp_path / "B", tmp_path / "C", tmp_path / "D"
    a = _start(_stage_cmd(tiny_lm_dir, helpsteer_file, a_dir))
    b = _start(_stage_cmd(tiny_lm_dir, helpsteer_file, b_dir))
    c = _start(_train_cmd(tiny_lm_dir, helpsteer_file, c_dir))  # through the launcher: `hs2` and the stage get SIGTERM
    d = _start(_train_cmd(tiny_lm_dir, helpsteer_file, d_dir))

    # Watch the runs at once: on an idle machine B trains a step in ~60 ms and would finish while we wait on C.
    _interrupt_when({b: (b_dir / "checkpoint-12" / "trainer_state.json", signal.SIGKILL),
                     c: (c_dir / "checkpoint-4" / "trainer_state.json", signal.SIGTERM),
                     d: (d_dir / "checkpoint-4" / "trainer_state.json", signal.SIGINT)})
    b.wait()
    _wait_group_gone(b.pid)
    c_out = c.communicate()[0]
    _wait_group_gone(c.pid)
    d_out = d.communicate()[0]
    _wait_group_gone(d.pid)
    a_out = a.communicate(timeout=300)[0]
    assert a.returncode == 0, a_out[-3000:]

    # Interrupted for real: no final model in B or C.
    assert not (b_dir / "model.safetensors").exists() and not (c_dir / "model.safetensors").exists()
    assert "hs2: stopped at step" in c_out, c_out[-3000:]
    c_step = int(c_out.split("hs2: stopped at step ")[1].split(";")[0])
    assert SAVE_EVERY <= c_step < STEPS
    assert json.loads((c_dir / f"checkpoint-{c_step}" / "trainer_state.json").read_text())["global_step"] == c_step
    assert c.returncode == 143 and d.returncode == 130, (c.returncode, d.returncode)
    # Ctrl-C: one closing line (after the acknowledgement that a checkpoint is being saved), no traceback.
    assert "Traceback" not in d_out, d_out[-3000:]
    d_last = [line for line in d_out.splitlines() if line.strip()][-1]
    assert d_last.startswith(f"hs2: interrupted; the same command continues from {d_dir}/checkpoint-"), d_out[-3000:]
    d_step = int(d_last.split("checkpoint-")[1].split(" ")[0])
    assert (f"(step {d_step}), with --resume" in d_last
            and (d_dir / f"checkpoint-{d_step}" / "trainer_state.json").exists())

    # A checkpoint cut off while being written (no trainer_state.json yet): --resume must skip and remove it.
    partial = b_dir / "checkpoint-16"
    partial.mkdir(exist_ok=True)
    (partial / "model.safetensors").write_bytes(b"truncated")
    last_b = max(int(p.name.split("-")[1]) for p in b_dir.glob("checkpoint-*") if (p / "trainer_state.json").exists())

    resumed = [subprocess.Popen(_train_cmd(tiny_lm_dir, helpsteer_file, folder, "--resume"), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for folder in (b_dir, c_dir, d_dir)]
    outs = [p.communicate(timeout=300)[0] for p in resumed]
    for p, out in zip(resumed, outs):
        assert p.returncode == 0, out[-3000:]
    assert f"resuming from {b_dir}/checkpoint-{last_b}" in outs[0], outs[0][-3000:]
    assert "checkpoint-16 is incomplete" in outs[0], outs[0][-3000:]
    assert f"resuming from {c_dir}/checkpoint-{c_step}" in outs[1], outs[1][-3000:]
    assert f"resuming from {d_dir}/checkpoint-{d_step}" in outs[2], outs[2][-3000:]

    _assert_same_weights(a_dir, b_dir)
    _assert_same_weights(a_dir, c_dir)
    _assert_same_weights(a_dir, d_dir)
    # The uninterrupted run trained at all (the comparison is not between untouched copies of the base).
    base = _weights(Path(tiny_lm_dir))
    final = _weights(a_dir)
    shared = [k for k in final if k in base and final[k].shape == base[k].shape]
    assert shared and any(not (final[k] == base[k]).all() for k in shared)


def test_resume_checkpoint_picks_the_last_complete_one(tmp_path, capsys):
    from hs2trl.runtime.resume import resume_checkpoint

    assert resume_checkpoint(str(tmp_path / "absent"), True) is None
    for step, complete in ((2, True), (4, True), (6, False), (10, True), (12, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        if complete:
            (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (tmp_path / "checkpoint-10" / "trainer_state.json").write_text('{"global_st')  # cut off mid-write
    assert resume_checkpoint(str(tmp_path), False) is None
    assert "pass --resume" in capsys.readouterr().out
    assert resume_checkpoint(str(tmp_path), True) == str(tmp_path / "checkpoint-4")
    out = capsys.readouterr().out
    # The unusable checkpoints after the one resumed from are removed (the resumed run writes those steps again).
    assert not (tmp_path / "checkpoint-12").exists() and not (tmp_path / "checkpoint-10").exists()
    assert not (tmp_path / "checkpoint-6").exists() and (tmp_path / "checkpoint-2").exists()
    assert "checkpoint-12 is incomplete" in out and "resuming from" in out


def test_saved_recipe_reruns(tmp_path, tiny_lm_dir, helpsteer_file):
    """hs2trl_recipe.yaml holds the run's settings as a recipe that `--config` accepts again, without push/resume."""
    import yaml

    from hs2trl.hub.publish import save_recipe
    from hs2trl.stages import train_rm

    argv = ["--config", str(REPO / "recipes" / "demo" / "rm.yaml"),
            "--model_name_or_path", tiny_lm_dir, "--dataset_name", helpsteer_file, "--output_dir", str(tmp_path),
            "--max_steps", "3", "--resume", "true", "--push_to_hub", "true", "--hub_model_id", "me/x",
            "--truncation_mode", "drop"]
    parsed = train_rm.parse(argv)
    path = save_recipe(str(tmp_path), parsed, "train_rm")
    text = Path(path).read_text()
    assert text.startswith("# hs2trl stage: train_rm")
    recipe = yaml.safe_load(text)
    assert recipe["max_steps"] == 3 and recipe["truncation_mode"] == "drop" and recipe["learning_rate"] == 5e-5
    assert not {"resume", "push_to_hub", "hub_model_id", "hub_token"} & recipe.keys()
    again = train_rm.parse(["--config", path])
    for before, after in zip(parsed, again):
        for key in recipe:
            if hasattr(before, key):
                assert getattr(before, key) == getattr(after, key), key
