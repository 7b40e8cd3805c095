"""Runs over several nodes (`--num_machines N`, from the accelerate config or `--launcher-args`): which node this is,
and a join check that every node's `hs2` makes before it launches anything.

Left alone, a node that never starts makes the others wait in torch's rendezvous (10 minutes) and then fail with a
traceback. Here every node first meets the others on the head node (`main_process_ip`, port `main_process_port + 1`),
waits at most `HS2_NODE_TIMEOUT` seconds (default 300, printed), and ends in one line naming the nodes that did not
come. The same bound goes to torch's own rendezvous that follows (`--rdzv_conf timeout=...,join_timeout=...`).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import time
from dataclasses import dataclass
from datetime import timedelta

from hs2trl.runtime.errors import Hs2Error, first_line

NODE_TIMEOUT_ENV = "HS2_NODE_TIMEOUT"
DEFAULT_NODE_TIMEOUT = 300
DEFAULT_PORT = 29500  # accelerate's, when neither the config nor the command line names one


@dataclass(frozen=True)
class Nodes:
    count: int
    rank: int
    head: str
    port: int

    @property
    def join_port(self) -> int:
        return self.port + 1


def node_timeout() -> int:
    """Seconds a node waits for the others: `$HS2_NODE_TIMEOUT`, else 300."""
    raw = os.environ.get(NODE_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_NODE_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise Hs2Error(f"{NODE_TIMEOUT_ENV}: expected a number of seconds above 0, got '{raw}'")
    return max(1, round(value))


def launcher_option(args: list[str], name: str) -> str | None:
    """The value of `--name V` or `--name=V` in accelerate launch arguments (the last one wins, as in argparse)."""
    value = None
    for i, token in enumerate(args):
        if token == f"--{name}" and i + 1 < len(args):
            value = args[i + 1]
        elif token.startswith(f"--{name}="):
            value = token.split("=", 1)[1]
    return value


def launch_settings(config_file: str | None, launcher_args: str | list[str] | None):
    """`setting(name, default=None)`: a launch setting, from the command line over the accelerate config."""
    import yaml

    config = {}
    if config_file:
        with open(config_file, encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
    args = shlex.split(launcher_args) if isinstance(launcher_args, str) else list(launcher_args or [])

    def setting(name: str, default=None):
        value = launcher_option(args, name)
        return value if value is not None else config.get(name, default)

    return setting


def multinode(config_file: str | None, launcher_args: str | list[str] | None) -> Nodes | None:
    """The node layout of a launch (the command line over the accelerate config), or None for one machine."""
    setting = launch_settings(config_file, launcher_args)
    try:
        count = int(setting("num_machines", 1))
        if count <= 1:
            return None
        rank = int(setting("machine_rank", 0))
        port = int(setting("main_process_port", DEFAULT_PORT))
    except (TypeError, ValueError) as err:
        raise Hs2Error(f"--launcher-args: {err}") from None
    if not 0 <= rank < count:
        raise Hs2Error(f"--machine_rank {rank}: expected 0 to {count - 1} for {count} nodes")
    head = setting("main_process_ip")
    if not head:
        raise Hs2Error(f"{count} nodes need the head node's address: pass --main_process_ip in --launcher-args")
    return Nodes(count, rank, str(head), port)


def rendezvous_args(timeout: int) -> list[str]:
    """torch's rendezvous (static: `timeout`; c10d: `join_timeout`) bounded like the join check."""
    return ["--rdzv_conf", f"timeout={timeout},join_timeout={timeout}"]


def _key(kind: str, rank: int) -> str:
    return f"hs2/{kind}/{rank}"


def _missing(store, kind: str, ranks) -> list[int]:
    return [r for r in ranks if not store.check([_key(kind, r)])]


def _wait(store, kind: str, ranks, deadline: float) -> list[int]:
    """Poll (Ctrl-C stays responsive) until every rank's key is there or the deadline passes; the ranks missing."""
    missing = _missing(store, kind, ranks)
    while missing and time.monotonic() < deadline:
        time.sleep(0.2)
        missing = _missing(store, kind, missing)
    return missing


def describe_nodes(ranks: list[int]) -> str:
    """`node 1` or `nodes 1, 2`."""
    return ("node " if len(ranks) == 1 else "nodes ") + ", ".join(map(str, ranks))


def _release(store, nodes: Nodes) -> None:
    """The head keeps its store up until every node that joined has read what it needs from it (30 s at most)."""
    with contextlib.suppress(RuntimeError):  # torch's DistError: the head is gone already, nothing to release
        if nodes.rank == 0:
            joined = [r for r in range(1, nodes.count) if store.check([_key("joined", r)])]
            _wait(store, "seen", joined, time.monotonic() + 30)
        else:
            store.set(_key("seen", nodes.rank), "1")


def _wait_for_head(nodes: Nodes, deadline: float, timeout: int) -> None:
    """Until the head listens: plain connection attempts (torch's store client would log every failed try, with a
    C++ stack, and its wait does not stop for Ctrl-C)."""
    while True:
        try:
            socket.create_connection((nodes.head, nodes.join_port), timeout=2).close()
            return
        except OSError:
            if time.monotonic() >= deadline:
                raise Hs2Error(f"the head node (machine_rank 0) at {nodes.head}:{nodes.join_port} did not answer "
                               f"within {timeout} s: start the same command there with --machine_rank 0") from None
            time.sleep(0.5)


def join(nodes: Nodes, stage: str, timeout: int | None = None) -> None:
    """Meet every node of the run on the head node before the launch; one line and exit status 2 when one does not
    come within the timeout. Also refuses two nodes with the same machine_rank and nodes running different stages."""
    from torch.distributed import TCPStore

    timeout = node_timeout() if timeout is None else timeout
    address = f"{nodes.head}:{nodes.join_port}"
    print(f"hs2: node {nodes.rank} of {nodes.count}: waiting up to {timeout} s for {nodes.count} nodes at {address} "
          f"({NODE_TIMEOUT_ENV} sets the wait) ...", flush=True)
    start = time.monotonic()
    deadline = start + timeout
    if nodes.rank != 0:
        _wait_for_head(nodes, deadline, timeout)
    try:
        store = TCPStore(nodes.head, nodes.join_port, is_master=nodes.rank == 0, wait_for_workers=False,
                         timeout=timedelta(seconds=30))
    except RuntimeError as err:  # torch's DistNetworkError: address in use, or the head went away just now
        if nodes.rank == 0:
            raise Hs2Error(f"cannot listen on port {nodes.join_port} of this node (the node-join port, "
                           f"main_process_port + 1): {first_line(err)}") from None
        raise Hs2Error(f"cannot reach the head node at {address}: {first_line(err)}") from None
    store.set_timeout(timedelta(seconds=max(timeout, 30)))
    try:
        if store.add(_key("count", nodes.rank), 1) > 1:
            raise Hs2Error(f"another node already joined with --machine_rank {nodes.rank}: give each node its own "
                           f"rank, 0 to {nodes.count - 1} (after a node was stopped, restart every node)")
        store.set(_key("stage", nodes.rank), stage)
        store.set(_key("joined", nodes.rank), "1")
        missing = _wait(store, "joined", range(nodes.count), deadline)
        if missing:
            raise Hs2Error(f"{describe_nodes(missing)} of {nodes.count} did not join within {timeout} s "
                           f"(head {address}): start the same command there with --machine_rank {missing[0]}")
        stages = {r: store.get(_key("stage", r)).decode() for r in range(nodes.count)}
        if len(set(stages.values())) > 1:
            raise Hs2Error("the nodes run different commands ("
                           + ", ".join(f"node {r}: {s}" for r, s in stages.items())
                           + "): every node runs the same command")
    except Hs2Error:
        raise
    except RuntimeError as err:  # torch's DistError: the head went away while we waited
        raise Hs2Error(f"lost the head node at {address} while waiting for the others ({first_line(err)})") from None
    finally:
        _release(store, nodes)
    print(f"hs2: all {nodes.count} nodes joined ({time.monotonic() - start:.1f} s)", flush=True)
