"""Two nodes on one machine: each node its own `hs2` process on the real multi-node launch path (`--launcher-args
"--num_machines 2 --machine_rank R --main_process_ip 127.0.0.1 --main_process_port P"`, as the multi-node make targets
pass LAUNCH; gloo on CPU; tiny models), against the same global batch on one 2-rank machine; and what a node sees
when another never comes or dies."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.fixtures import helpsteer_rows, write_jsonl

TINY_STEPS = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--learning_rate", "1e-3", "--bf16", "false",
              "--save_strategy", "no", "--report_to", "none"]


def free_port_pair() -> int:
    """A port P with P + 1 free too (the launch's and the node-join check's)."""
    from hs2trl.runtime.launch import free_port

    while True:
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue


def node(rank: int, port: int) -> list[str]:
    return ["--num-processes", "2", "--launcher-args",
            f"--num_machines 2 --machine_rank {rank} --main_process_ip 127.0.0.1 --main_process_port {port}"]


def start(args: list[str], **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hs2trl.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **env})


def finish(procs: list[subprocess.Popen], timeout: float = 600) -> list[tuple[int, str, str]]:
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        results.append((proc.returncode, out, err))
    return results


def two_nodes_and_one_machine(args: list[str], two: Path, one: Path) -> list[tuple[int, str, str]]:
    """The same command as two nodes (output folder `two`, seen by both: a shared filesystem) and as one 2-rank
    machine (`one`), all three processes at once."""
    port = free_port_pair()
    procs = [start([*args, "--output-dir", str(two), *node(r, port)]) for r in (0, 1)]
    procs.append(start([*args, "--output-dir", str(one), "--num-processes", "2"]))
    results = finish(procs)
    for rc, out, err in results:
        assert rc == 0, out[-3000:] + err[-3000:]
    return results


def assert_same_weights(a: Path, b: Path, start: str) -> None:
    import torch
    from safetensors.torch import load_file

    wa, wb, w0 = (load_file(str(Path(p) / "model.safetensors")) for p in (a, b, start))
    moved = max((wa[k] - w0[k]).abs().max().item() for k in wa if k in w0)
    assert moved > 1e-4, "training did not move the weights: the comparison would say nothing"
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6, msg=k)


# ------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_dpo_on_two_nodes_reaches_the_one_machine_weights(tmp_path, tiny_lm_dir):
    from hs2trl.data.pairs import helpsteer2_pairs
    from hs2trl.data.sources import read_records

    pairs = write_jsonl(tmp_path / "pairs.jsonl",
                        helpsteer2_pairs(read_records(write_jsonl(tmp_path / "hs.jsonl", helpsteer_rows(4)))).pairs)
    args = ["dpo", "--model", tiny_lm_dir, "--dataset", pairs, *TINY_STEPS]
    results = two_nodes_and_one_machine(args, tmp_path / "two", tmp_path / "one")
    (_, head, head_err), (_, other, _), (_, single, _) = results
    assert "hs2: node 0 of 2: waiting up to 300 s for 2 nodes at 127.0.0.1:" in head
    assert "hs2: all 2 nodes joined" in head and "hs2: all 2 nodes joined" in other
    assert "training DPOTrainer on 2 process(es) (world size 2)" in head
    assert "training DPOTrainer on 2 process(es) (world size 2)" in single
    for noise in ("find_unused_parameters=True", "pin_memory"):  # DDP's and the DataLoader's CPU warnings are gone
        assert noise not in head_err
    assert_same_weights(tmp_path / "two", tmp_path / "one", tiny_lm_dir)


@pytest.mark.slow
def test_steerlm2_samples_on_the_head_and_trains_on_both_nodes(tmp_path, tiny_lm_dir, tiny_rm_dir, helpsteer_file):
    args = ["steerlm2", "--model", tiny_lm_dir, "--sft-model", tiny_lm_dir, "--reward-model", tiny_rm_dir,
            "--dataset", helpsteer_file, "--iterations", "1", "--num_samples", "2", "--max_new_tokens", "4",
            "--max_prompts", "2", "--sampling_processes", "single", "--gradient_accumulation_steps", "1",
            *TINY_STEPS, "--per_device_train_batch_size", "1"]
    (_, head, _), (_, other, other_err), _ = two_nodes_and_one_machine(args, tmp_path / "two", tmp_path / "one")
    two, one = tmp_path / "two" / "iteration-0", tmp_path / "one" / "iteration-0"
    # sampling ran once, in a child of the head node's rank 0; the other node only waited for its file
    assert "sampling in one child process" in head
    assert "sampling in one child process" not in other and "SteerLM 2.0: sampling" not in other_err
    assert (two / "samples.jsonl").read_text() == (one / "samples.jsonl").read_text()
    assert "training SteerLM2Trainer (SteerLM 2.0, iteration 0) on 2 process(es) (world size 2)" in head
    assert not (tmp_path / "two" / ".hs2-shared-folder-check").exists()  # the shared-folder check cleans up
    assert_same_weights(two / "model", one / "model", tiny_lm_dir)


@pytest.mark.slow
def test_steerlm2_stops_when_the_nodes_do_not_share_the_output_folder(tmp_path, tiny_lm_dir, tiny_rm_dir,
                                                                       helpsteer_file):
    """Each node gets its own folder (as two machines with local disks would): every node stops with one line before
    any sampling, instead of node 1 waiting for a samples file it will never see."""
    args = ["steerlm2", "--model", tiny_lm_dir, "--sft-model", tiny_lm_dir, "--reward-model", tiny_rm_dir,
            "--dataset", helpsteer_file, "--iterations", "1", "--num_samples", "2", "--max_prompts", "2", *TINY_STEPS]
    port = free_port_pair()
    results = finish([start([*args, "--output-dir", str(tmp_path / f"local{r}"), *node(r, port)]) for r in (0, 1)])
    for rank, (_, _out, err) in enumerate(results):
        assert re.findall(r"hs2: error: [^\r\n]*", err) == [(
            f"hs2: error: output_dir '{tmp_path / f'local{rank}'}' is not shared between the nodes: node 1 cannot "
            "see the file node 0 wrote there; SteerLM 2.0 passes each iteration's samples and models between the "
            "nodes through it: put output_dir on a filesystem every node mounts (NFS, Lustre, ...)")], err[-3000:]
        assert "sampling" not in err


def _lines_with_times(proc: subprocess.Popen, into: list) -> None:
    for line in proc.stdout:
        into.append((time.monotonic(), line))


@pytest.mark.slow
def test_a_node_that_never_comes_ends_the_other_in_one_line(tmp_path, tiny_lm_dir, helpsteer_file):
    """HS2_NODE_TIMEOUT bounds the wait, on the head (node 1 missing) and on a node whose head never starts."""
    args = ["dpo", "--model", tiny_lm_dir, "--dataset", helpsteer_file, "--output-dir", str(tmp_path / "o"),
            *TINY_STEPS]
    procs = {rank: start([*args, *node(rank, free_port_pair())], HS2_NODE_TIMEOUT="2") for rank in (0, 1)}
    lines = {rank: [] for rank in procs}
    readers = [threading.Thread(target=_lines_with_times, args=(procs[r], lines[r])) for r in procs]
    for reader in readers:
        reader.start()
    errors = {rank: proc.stderr.read() for rank, proc in procs.items()}
    ended = {rank: (proc.wait(timeout=120), time.monotonic()) for rank, proc in procs.items()}
    for reader in readers:
        reader.join()
    expected = {0: "hs2: error: node 1 of 2 did not join within 2 s (head 127.0.0.1:",
                1: "hs2: error: the head node (machine_rank 0) at 127.0.0.1:"}
    for rank in procs:
        status, when = ended[rank]
        assert status == 2, errors[rank]
        assert errors[rank].count("\n") == 1 and errors[rank].startswith(expected[rank]), errors[rank]
        waiting = [t for t, line in lines[rank] if "waiting up to 2 s for 2 nodes" in line]
        assert waiting, lines[rank]
        assert when - waiting[0] < 2 + 15  # the printed bound, plus process exit
    assert "did not answer within 2 s: start the same command there with --machine_rank 0" in errors[1]


@pytest.mark.slow
def test_a_node_that_dies_ends_the_other_in_one_line(tmp_path, tiny_lm_dir, helpsteer_file):
    """Node 1 (its hs2, launcher and rank, as when a machine goes down) is killed mid-training: node 0's rank
    loses its connection at the next gradient exchange and stops with one line, within seconds."""
    import psutil

    args = ["dpo", "--model", tiny_lm_dir, "--dataset", helpsteer_file, "--output-dir", str(tmp_path / "o"),
            *TINY_STEPS, "--max_steps", "100000"]
    port = free_port_pair()
    head, other = start([*args, *node(0, port)]), start([*args, *node(1, port)])
    lines: list = []
    reader = threading.Thread(target=_lines_with_times, args=(head, lines))
    reader.start()
    deadline = time.monotonic() + 300
    while not any("hs2: training DPOTrainer" in line for _, line in lines) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)  # a few steps in
    victims = [other, *psutil.Process(other.pid).children(recursive=True)]
    # torchelastic starts each rank in its own session: a machine going down takes it too
    for proc in psutil.Process(other.pid).children(recursive=True):
        victims += proc.children(recursive=True)
    for victim in victims:
        try:
            victim.kill()
        except psutil.NoSuchProcess:
            pass
    killed = time.monotonic()
    err = head.stderr.read()
    head.wait(timeout=120)
    reader.join()
    other.communicate()
    assert time.monotonic() - killed < 60
    assert head.returncode != 0
    ours = re.findall(r"hs2: error: [^\r\n]*", err)  # after the progress bar's last redraw
    assert ours == [("hs2: error: lost contact with another process of this run at 127.0.0.1 (it stopped, or its node "
                     "went away; its own log says why): start the run again on every node (--resume continues from "
                     "the last checkpoint)")], err[-3000:]


# ------------------------------------------------------------------------------------------- the pieces


def test_join_meets_every_node_and_names_what_is_wrong():
    from hs2trl.runtime.errors import Hs2Error
    from hs2trl.runtime.nodes import Nodes, join

    def meet(ranks_and_stages, timeout=10, count=2):
        port, results = free_port_pair(), {}

        def one(i, rank, stage):
            try:
                join(Nodes(count, rank, "127.0.0.1", port), stage, timeout)
                results[i] = "ok"
            except Hs2Error as err:
                results[i] = str(err)

        threads = [threading.Thread(target=one, args=(i, r, s)) for i, (r, s) in enumerate(ranks_and_stages)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return [results[i] for i in range(len(ranks_and_stages))]

    assert meet([(1, "dpo"), (0, "dpo")]) == ["ok", "ok"]
    mixed = meet([(0, "sft"), (1, "dpo")])
    assert mixed[0] == mixed[1] == ("the nodes run different commands (node 0: sft, node 1: dpo): every node runs the "
                                    "same command")
    # node 2 of 3 never comes, so the head is still waiting when the second node 1 arrives
    twice = meet([(0, "dpo"), (1, "dpo"), (1, "dpo")], timeout=3, count=3)
    assert sum(r.startswith("another node already joined with --machine_rank 1") for r in twice) == 1
    assert twice[0].startswith("node 2 of 3 did not join within 3 s")
    alone = meet([(0, "dpo")], timeout=1)[0]
    assert alone.startswith("node 1 of 2 did not join within 1 s (head 127.0.0.1:")
    assert alone.endswith("start the same command there with --machine_rank 1")


def test_node_layout_comes_from_launcher_args_over_the_config(monkeypatch):
    from hs2trl.runtime.errors import Hs2Error
    from hs2trl.runtime.launch import launch_command, launch_nodes
    from hs2trl.runtime.nodes import Nodes, node_timeout

    cmd = launch_command("dpo", ["--x"], None, 2, "--num_machines 2 --machine_rank 1 --main_process_ip 10.0.0.1")
    assert launch_nodes(cmd) == Nodes(2, 1, "10.0.0.1", 29500)
    assert "--main_process_port" not in cmd  # every node must use the same port: no free port picked per node
    assert cmd[cmd.index("--rdzv_conf") + 1] == "timeout=300,join_timeout=300"  # torch's rendezvous bounded too
    cmd = launch_command("dpo", [], "multinode_zero3", 16, "--machine_rank=1 --main_process_ip=10.0.0.2")
    assert launch_nodes(cmd) == Nodes(2, 1, "10.0.0.2", 29500)
    one = launch_command("dpo", [], None, 2, None)
    assert launch_nodes(one) is None and "--main_process_port" in one and "--rdzv_conf" not in one
    with pytest.raises(Hs2Error, match="--machine_rank 2: expected 0 to 1 for 2 nodes"):
        launch_nodes(launch_command("dpo", [], None, 2, "--num_machines 2 --machine_rank 2 --main_process_ip h"))
    with pytest.raises(Hs2Error, match="need the head node's address: pass --main_process_ip"):
        launch_nodes(launch_command("dpo", [], None, 2, "--num_machines 2 --machine_rank 1"))
    monkeypatch.setenv("HS2_NODE_TIMEOUT", "45")
    assert node_timeout() == 45
    monkeypatch.setenv("HS2_NODE_TIMEOUT", "soon")
    with pytest.raises(Hs2Error, match="HS2_NODE_TIMEOUT: expected a number of seconds above 0, got 'soon'"):
        node_timeout()


def test_lost_process_is_one_line_and_other_errors_are_not():
    from hs2trl.runtime.errors import lost_process

    gloo = RuntimeError("[../gloo/transport/tcp/pair.cc:553] Connection closed by peer [10.1.2.3]:18094. This is "
                        "typically caused by a remote worker crashing.")
    assert lost_process(gloo).startswith("lost contact with another process of this run at 10.1.2.3 (")
    reset = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [10.1.2.4]:63878: "
                         "Connection reset by peer. This is typically caused by a remote worker hanging")
    assert lost_process(reset).startswith("lost contact with another process of this run at 10.1.2.4 (")
    assert lost_process(RuntimeError("CUDA out of memory")) is None
