"""Turning an `hs2` command into a process: run the stage module
under `accelerate launch` (several processes, or any accelerate config) or plain python (one process)."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
from typing import NamedTuple

from hs2trl.runtime.errors import Hs2Error
from hs2trl.runtime.nodes import launch_settings, launcher_option, multinode, node_timeout, rendezvous_args
from hs2trl.runtime.recipes import LaunchSettings, recipe_launch, resolve_accelerate_config


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


class Launch(NamedTuple):
    """How a stage is launched: `launch_command`'s accelerate_config, num_processes and launcher_args."""

    accelerate_config: str | None
    num_processes: int | None
    launcher_args: str | None


# Stages that always run as one process, and why: a recipe's `launch:` cannot apply to them.
ONE_PROCESS_STAGES = {
    "iterative_dpo": "it launches each DPO round itself: set round_accelerate_config / round_num_processes / "
                     "round_launcher_args instead",
    "eval_policy": "it spreads the model over the GPUs itself (vLLM, or transformers' device map)",
}


def stage_launch(stage: str, stage_args: list[str], given: Launch) -> Launch:
    """How to launch a stage: the recipe's `launch:` (when its `--config` has one) with the command line over it.

    Processes or an accelerate config on the command line (--num-processes, --accelerate-config, or the same options
    in --launcher-args) set the launch themselves: the recipe's `launch:` is set aside as a whole, since processes,
    machines and config only make sense together. Otherwise --launcher-args add to the recipe's settings (a node's
    --machine_rank and head address), and an option given in both takes the command line's value. Either way one
    line on stderr says what of the recipe's launch the command line replaced."""
    recipe = launcher_option(stage_args, "config")
    launch = recipe_launch(recipe) if recipe else None
    if launch is None:
        return given
    if stage in ONE_PROCESS_STAGES:
        raise Hs2Error(f"{recipe}: launch: this command runs as one process: {ONE_PROCESS_STAGES[stage]}")
    user_args = shlex.split(given.launcher_args or "")
    settings = _recipe_settings(launch)
    if any((given.accelerate_config, given.num_processes, _given(user_args, "config_file"),
            _given(user_args, "num_processes"))):
        _note(f"the command line's processes / accelerate config replace the launch: of {recipe} "
              f"({', '.join(f'{key} {value}' for key, value in settings.items())})")
        return given
    overridden = {key: value for key in launch.options if (value := _given(user_args, key)) is not None}
    if overridden:
        _note(f"--launcher-args override the launch: of {recipe}: "
              + ", ".join(f"{key} {settings[key]} -> {value}" for key, value in overridden.items()))
    # The user's launcher arguments go last: accelerate takes the last of an option given twice, and so does hs2.
    recipe_args = launch.option_args(skip=list(overridden))
    return Launch(launch.config_file, launch.num_processes, shlex.join([*recipe_args, *user_args]) or None)


def _recipe_settings(launch: LaunchSettings) -> dict[str, object]:
    """The recipe's launch settings, as a person reads them: `{config_file: multinode_zero3.yaml, ...}`."""
    settings = {"config_file": launch.config_file and os.path.basename(launch.config_file),
                "num_processes": launch.num_processes}
    settings.update({key: _shown(tokens) for key, tokens in launch.options.items()})
    return {key: value for key, value in settings.items() if value is not None}


def _note(text: str) -> None:
    print(f"hs2: note: {text}", file=sys.stderr, flush=True)


def _shown(tokens: list[str]) -> str:
    """An option's value from its launch arguments (`--num_machines 4`: 4; a flag: true, or false when absent)."""
    return tokens[1] if len(tokens) > 1 else "true" if tokens else "false"


def _given(args: list[str], key: str) -> str | None:
    """The value of an accelerate option in launcher arguments, in either spelling (`--num_machines 4`,
    `--num-machines=4`; the last one wins, as in argparse); a flag given alone reads as 'true'."""
    value = None
    names = {f"--{key}", f"--{key.replace('_', '-')}"}
    for i, token in enumerate(args):
        name, eq, text = token.partition("=")
        if name not in names:
            continue
        following = args[i + 1] if i + 1 < len(args) else ""
        value = text if eq else following if following and not following.startswith("--") else "true"
    return value


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


def run(cmd: list[str], dry_run: bool = False, env: dict[str, str] | None = None) -> int:
    """Print the command (tokens masked); run it unless dry_run, in `env` (default: this process's environment);
    return its exit status."""
    print(shlex.join(masked(cmd)), flush=True)
    if dry_run:
        return 0
    env = dict(os.environ if env is None else env)
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
