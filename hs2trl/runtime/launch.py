"""Turning an `hs2` command into a process: run the stage module
under `accelerate launch` (several processes, or any accelerate config) or plain python (one process)."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys

from hs2trl.runtime.nodes import launch_settings, launcher_option, multinode, node_timeout, rendezvous_args
from hs2trl.runtime.recipes import resolve_accelerate_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def launch_command(stage: str, stage_args: list[str], accelerate_config: str | None = None,
                   num_processes: int | None = None, launcher_args: str | None = None) -> list[str]:
    """The command line that runs `hs2trl.stages.<stage>`."""
    module = f"hs2trl.stages.{stage}"
    if accelerate_config is None and (num_processes or 1) == 1 and not launcher_args:
        return [sys.executable, "-m", module, *stage_args]
    if accelerate_config is None:  # several processes, no config named: DDP on GPUs, or a 2-rank gloo run on CPU
        accelerate_config = "ddp" if has_gpu() else "cpu_ddp"
    config_file = resolve_accelerate_config(accelerate_config)
    # accelerate launch, with a stopped or failed run ending on the rank's own message (see accelerate_launch.py)
    cmd = [sys.executable, "-m", "hs2trl.runtime.accelerate_launch", "--config_file", config_file]
    if num_processes:
        cmd += ["--num_processes", str(num_processes)]
    extra = shlex.split(launcher_args or "")
    if multinode(config_file, extra):  # every node must use the same port: none is picked here
        if launcher_option(extra, "rdzv_conf") is None:
            cmd += rendezvous_args(node_timeout())  # torch's own rendezvous waits no longer than hs2's join check
    elif launch_settings(config_file, extra)("main_process_port") is None:
        cmd += ["--main_process_port", str(free_port())]  # parallel runs on one machine must not collide
    return [*cmd, *extra, "-m", module, *stage_args]


def launch_nodes(cmd: list[str]):
    """The node layout of a command from `launch_command`: `nodes.Nodes`, or None for one machine."""
    if cmd[1:3] != ["-m", "hs2trl.runtime.accelerate_launch"]:
        return None
    launcher = cmd[3 : cmd.index("-m", 3)]  # accelerate's own arguments, up to the stage module
    return multinode(launcher_option(launcher, "config_file"), launcher)


SECRET_OPTIONS = ("--hub_token", "--hub-token")


def masked(cmd: list[str]) -> list[str]:
    """The command with the value of every token option replaced by ***, for printing."""
    out = list(cmd)
    for i, token in enumerate(out):
        name, eq, _ = token.partition("=")
        if name in SECRET_OPTIONS:
            if eq:
                out[i] = f"{name}=***"
            elif i + 1 < len(out):
                out[i + 1] = "***"
    return out


def run(cmd: list[str], dry_run: bool = False) -> int:
    """Print the command (tokens masked); run it unless dry_run; return its exit status."""
    print(shlex.join(masked(cmd)), flush=True)
    if dry_run:
        return 0
    env = dict(os.environ)
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    child = subprocess.Popen(cmd, env=env)

    # A scheduler's SIGTERM/SIGHUP goes to this process: pass it on so the stage saves a checkpoint and exits.
    def forward(signum, _frame):
        child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        while True:
            try:
                status = child.wait()
                break
            except KeyboardInterrupt:  # Ctrl-C reached the child too (same process group): wait for its exit
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - status if status < 0 else status  # killed by signal N: the shell's 128+N
