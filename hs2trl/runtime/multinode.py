"""What a stage needs when its ranks span several nodes and pass files through the output folder (SteerLM 2.0's
samples): a check, at the start, that every node sees the same folder, and a way for a rank that waits on a file to
notice that the head node has gone."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from hs2trl.runtime.errors import Hs2Error, first_line
from hs2trl.runtime.nodes import describe_nodes

MARKER = ".hs2-shared-folder-check"


def spans_nodes() -> bool:
    """True in a launch whose ranks run on more than one node (torchelastic sets both sizes)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world > int(os.environ.get("LOCAL_WORLD_SIZE", world))


def node_rank() -> int:
    return int(os.environ.get("GROUP_RANK", "0"))


def require_shared_folder(folder: str | Path, why: str) -> None:
    """Over several nodes: rank 0 writes a marker with a fresh token into `folder`, and every rank reads it back after
    a barrier; when any node does not see it, every rank stops with the same line naming the folder and those nodes.
    One process or one node: nothing to check."""
    if not spans_nodes():
        return
    import torch
    import torch.distributed as dist
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # CPU ranks form their (gloo) group only with cpu=True
    folder = Path(folder)
    marker = folder / MARKER
    token = [uuid.uuid4().hex if state.is_main_process else None]
    dist.broadcast_object_list(token, src=0)
    if state.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        marker.write_text(token[0])
    state.wait_for_everyone()
    try:
        sees = marker.read_text() == token[0]
    except OSError:
        sees = False
    seen = [None] * state.num_processes
    dist.all_gather_object(seen, (node_rank(), sees))
    state.wait_for_everyone()
    if state.is_main_process:
        marker.unlink(missing_ok=True)
    blind = sorted({node for node, ok in seen if not ok})
    if blind:
        raise Hs2Error(f"output_dir '{folder}' is not shared between the nodes: {describe_nodes(blind)} cannot see "
                       f"the file node 0 wrote there; {why}: put output_dir on a filesystem every node mounts "
                       "(NFS, Lustre, ...)")


def check_head_alive() -> None:
    """For a rank that waits on a file the head node writes: raise (one line) when the head's launcher, which holds
    the run's store, has gone, rather than wait forever. A no-op outside a distributed run."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        dist.distributed_c10d._get_default_store().check(["hs2/alive"])
    except RuntimeError as err:  # torch's DistNetworkError: the store's host (node 0's launcher) has stopped
        raise Hs2Error(f"lost the head node while waiting for it ({first_line(err)}); its own log says why: rerun "
                       "the same command on every node to continue") from None
