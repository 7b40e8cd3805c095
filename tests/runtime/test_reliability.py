"""One writer per output, no token ever kept, Ctrl-C, stale locks: real `hs2` processes on tiny models.

- Two `hs2 annotate --output F` at once: exactly one refuses (exit 2, one line naming F and the holder), the other
  completes, and F holds each input row exactly once.
- Two `hs2 train-rm` on one `--output-dir` at once, with `--hub_token T --push-to-hub` against the local fake Hub
  (which only accepts T): one refuses, the other trains and pushes with T, and T is in no file under the output
  folder (checkpoints included), in nothing either command printed, and in no file the Hub received; the pushed card
  and recipe name local files by their file names.
- Ctrl-C (SIGINT to the process group, as a terminal sends it) during `hs2 annotate`: one line, exit 130, the rows
  written stay, and the same command completes the output with each row once.
- A lock whose holder is gone is taken over with a notice (a dead process here, an old record from another machine).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.cli_batch import run_cli_batch
from tests.helpers.fake_hub import FakeHub
from tests.helpers.fixtures import helpsteer_rows, write_jsonl

TOKEN = "hf_plantedToken4d2c9e7b1a55f0"


def _default_sigint() -> None:
    """As in a terminal: pytest run in the background by a non-interactive shell (`make test &`) ignores SIGINT, and
    a child would inherit that and never see the Ctrl-C this file sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args: list[str], env: dict | None = None) -> subprocess.Popen:
    """`hs2 ARGS` in its own process group (a terminal's Ctrl-C goes to the whole group)."""
    return subprocess.Popen([sys.executable, "-m", "hs2trl.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env or {**os.environ}, start_new_session=True,
                            preexec_fn=_default_sigint)


def _finish(procs: list[subprocess.Popen], timeout: float = 600) -> list[tuple[int, str, str]]:
    """(exit status, stdout, stderr) of each process."""
    outputs = [p.communicate(timeout=timeout) for p in procs]
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs)]


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _rows(path: Path) -> list[tuple[str, str]]:
    return [(r["prompt"], r["response"]) for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())]


@pytest.mark.slow
def test_two_annotates_on_one_output(tmp_path, tiny_rm_dir):
    rows = helpsteer_rows(40)
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    out = tmp_path / "out.jsonl"
    args = ["annotate", "--model", tiny_rm_dir, "--dataset", data, "--output", str(out), "--chunk_size", "8"]
    results = _finish([_start(args), _start(args)])
    assert sorted(code for code, _, _ in results) == [0, 2], results
    (_, _, refused), = [r for r in results if r[0] == 2]
    assert "Traceback" not in refused
    last = _last_line(refused)
    assert last.startswith("hs2: error: ") and str(out) in last and "in use by `hs2 annotate` (pid " in last, last
    assert _rows(out) == [(r["prompt"], r["response"]) for r in rows]  # each row once, in input order
    assert not (tmp_path / ".out.jsonl.hs2.lock.json").exists()  # the holder record goes with the holder


@pytest.mark.slow
def test_two_train_rm_on_one_folder_and_the_token_is_never_kept(tmp_path, tiny_lm_dir, helpsteer_file):
    out = tmp_path / "rm"
    args = ["train-rm", "--model", tiny_lm_dir, "--dataset", helpsteer_file, "--output-dir", str(out),
            "--max_steps", "2", "--save_steps", "1", "--per_device_train_batch_size", "4", "--eval_fraction", "0.25",
            "--eval_steps", "1", "--hub_token", TOKEN, "--push-to-hub", "--hub-model-id", "me/tiny-rm"]
    with FakeHub(token=TOKEN) as hub:
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN", "TRANSFORMERS_OFFLINE")}
        env.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_PROGRESS_BARS="1")
        results = _finish([_start(args, env), _start(args, env)])
        pushed = hub.uploaded("me/tiny-rm")
    assert sorted(code for code, _, _ in results) == [0, 2], [(c, e[-3000:]) for c, _, e in results]
    (_, _, refused), = [r for r in results if r[0] == 2]
    (_, stdout, stderr), = [r for r in results if r[0] == 0]
    assert str(out) in _last_line(refused) and "in use by `hs2 train-rm`" in _last_line(refused)
    assert "hs2: pushed" in stdout and "model.safetensors" in pushed  # the push authenticated with the token

    # The token: in nothing printed, in no file written (every checkpoint's training_args.bin too), never pushed.
    printed = "".join(o + e for _, o, e in results)
    assert TOKEN not in printed
    assert "--hub_token '***'" in stdout and stderr.count("prefer HF_TOKEN or `hf auth login`") == 1
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p != Path(helpsteer_file)]
    assert any(p.name == "training_args.bin" and p.parent.name.startswith("checkpoint-") for p in written)
    assert [p for p in written if TOKEN.encode() in p.read_bytes()] == []
    assert [name for name, content in pushed.items() if TOKEN.encode() in content] == []
    assert "training_args.bin" not in pushed

    # Pushed files (card and recipe included) name local files by their file names; the local recipe keeps the paths
    # (it reruns from there).
    local_root = str(Path(tiny_lm_dir).parent).encode()  # pytest's folder: the data, the base model, the output
    assert [name for name, content in pushed.items() if local_root in content] == []
    assert f"dataset_name: {Path(helpsteer_file).name}" in pushed["hs2trl_recipe.yaml"].decode()
    assert f"dataset_name: {helpsteer_file}" in (out / "hs2trl_recipe.yaml").read_text()


@pytest.mark.slow
def test_ctrl_c_during_annotate(tmp_path, tiny_rm_dir):
    rows = helpsteer_rows(300)
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    out = tmp_path / "out.jsonl"
    args = ["annotate", "--model", tiny_rm_dir, "--dataset", data, "--output", str(out), "--chunk_size", "2"]
    proc = _start(args)
    deadline = time.monotonic() + 300
    while not (out.exists() and out.stat().st_size > 0):  # the first chunk is written: press Ctrl-C
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGINT)
    code, _, stderr = _finish([proc])[0]
    assert code == 130, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert _last_line(stderr) == f"hs2: interrupted; the same command continues from the rows already in {out}"
    done = _rows(out)
    expected = [(r["prompt"], r["response"]) for r in rows]
    assert 0 < len(done) < len(rows) and done == expected[: len(done)]  # complete rows, a prefix of the input

    code, stdout, stderr = _finish([_start(args)])[0]
    assert code == 0, stderr[-3000:]
    assert f"resuming: {len(done)} of {len(rows)} rows already in {out}" in stdout
    assert _rows(out) == expected


def test_a_lock_whose_holder_is_gone_is_taken_over(tmp_path):
    """A record left by a process that died on this machine, and one not refreshed for an hour on another machine,
    are taken over with a one-line notice; the command then runs."""
    from hs2trl.runtime.locks import lock_files

    data = write_jsonl(tmp_path / "data.jsonl", helpsteer_rows(4))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    outputs = {"dead": tmp_path / "dead.jsonl", "old": tmp_path / "old.jsonl"}
    records = {"dead": {"pid": int(dead.stdout), "host": socket.gethostname()}, "old": {"pid": 1, "host": "node-7"}}
    for key, output in outputs.items():
        record = lock_files(output)[1]
        record.write_text(json.dumps({**records[key], "command": "data to-dpo", "since": "2026-01-01 00:00:00"}))
        if key == "old":
            os.utime(record, (time.time() - 3600, time.time() - 3600))
    results = run_cli_batch([["data", "to-dpo", "--dataset", data, "--output", str(o)] for o in outputs.values()])
    for (key, output), proc in zip(outputs.items(), results):
        assert proc.returncode == 0, proc.stderr[-3000:]
        notices = [line for line in proc.stderr.splitlines() if "taking over the lock" in line]
        assert len(notices) == 1 and str(output) in notices[0], proc.stderr
        assert f"pid {records[key]['pid']} on {records[key]['host']}" in notices[0]
        assert ("no longer running" if key == "dead" else "not been seen for over 10 minutes") in notices[0]
        assert output.read_text().count("\n") == 4 and not lock_files(output)[1].exists()


@pytest.mark.slow
@pytest.mark.parametrize("rank_does, status, line", [
    ("sys.exit(2)", 2, None),  # a user mistake: the rank printed its own line
    ("os.kill(os.getpid(), signal.SIGKILL) if os.environ['RANK'] == '1' else time.sleep(30)", 128 + 9,
     "hs2: error: rank 1 was killed by signal 9 SIGKILL (out of memory?)"),
])
def test_accelerate_launch_ends_on_the_ranks_status(tmp_path, rank_does, status, line):
    """A real 2-rank launch through hs2trl.runtime.accelerate_launch: the launcher's exit status is the rank's, with no
    torch elastic traceback or error report; a rank killed by a signal is one line naming it."""
    from hs2trl.runtime.launch import launch_command

    script = tmp_path / "rank.py"
    script.write_text(f"import os, signal, sys, time\n{rank_does}\n")
    cmd = launch_command("x", [], "cpu_ddp", 2)
    cmd = [*cmd[: cmd.index("-m", 1 + cmd.index("--num_processes"))], str(script)]  # the script instead of a stage
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == status, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr, proc.stderr[-3000:]
    if line:
        assert _last_line(proc.stderr) == line, proc.stderr[-3000:]
