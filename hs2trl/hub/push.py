"""Pushing an output folder to the Hub: one commit, local paths reduced to file names, one-line failures that name
the retry command."""

from __future__ import annotations

import os
from pathlib import Path

from hs2trl.hub.card import has_own_card, write_model_card
from hs2trl.hub.folders import CARD_FILE, RECIPE_FILE, check_push_folder, local_paths, public_text, read_recipe
from hs2trl.runtime.errors import Hs2Error

# Never uploaded: intermediate checkpoints, optimizer/RNG state, the pickled training arguments (hs2trl_recipe.yaml
# holds the settings), locks and their holder records, logs.
PUSH_IGNORE = ["checkpoint-*/**", "*.lock", "*.hs2.lock.json", "optimizer.pt", "scheduler.pt", "rng_state*.pth",
               "*training_args.bin", "runs/**", ".cache/**"]


def retry_command(folder: str, hub_model_id: str, revision: str | None = None) -> str:
    return f"hs2 push {folder} --hub-model-id {hub_model_id}" + (f" --revision {revision}" if revision else "")


def push_folder(folder: str, hub_model_id: str, revision: str | None = None, commit_message: str = "hs2trl upload",
                private: bool | None = None) -> str:
    """Upload `folder` to the model repo `hub_model_id` (created if needed; `revision` is a branch, created from main
    if needed: one per iterative round, say) and return the commit URL. The hs2trl model card is written first when
    the folder has none (or only the trainer's generic one). Any failure is one Hs2Error naming the retry command."""
    check_push_folder(folder)
    if not has_own_card(folder):
        write_model_card(folder, hub_model_id=hub_model_id, revision=revision)
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(hub_model_id, repo_type="model", exist_ok=True, private=private)
        if revision:
            api.create_branch(hub_model_id, branch=revision, exist_ok=True)
        info = api.create_commit(repo_id=hub_model_id, operations=upload_operations(folder), revision=revision,
                                 commit_message=commit_message)
    except Exception as err:  # network, auth, permissions, offline mode: all reported the same way
        raise Hs2Error(
            f"push of {folder} to '{hub_model_id}' failed ({_describe(err)}); the local checkpoint is kept: retry "
            f"with `{retry_command(folder, hub_model_id, revision)}`"
        ) from None
    return str(getattr(info, "commit_url", info))


def upload_operations(folder: str | os.PathLike) -> list:
    """One upload per file of the folder except PUSH_IGNORE (and huggingface_hub's own ignores, .git/ ...), as
    `upload_folder` would make them; the card and the recipe go up with local paths reduced to file names (the local
    copies keep them: the recipe reruns from there)."""
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    root = Path(folder)
    files = {p.relative_to(root).as_posix(): p for p in sorted(root.glob("**/*")) if p.is_file()}
    paths = local_paths(read_recipe(root))
    operations = []
    for name in filter_repo_objects(list(files), ignore_patterns=[*PUSH_IGNORE, *DEFAULT_IGNORE_PATTERNS]):
        content = files[name]
        if name in (CARD_FILE, RECIPE_FILE):
            content = public_text(content.read_text(encoding="utf-8"), paths).encode("utf-8")
        operations.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=content))
    return operations


def _describe(err: Exception) -> str:
    """One short line for a Hub failure (HTTP status when there is one)."""
    text = " ".join(str(err).split()) or type(err).__name__
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    if type(err).__name__ == "OfflineModeIsEnabled" or "offline mode is enabled" in text.lower():
        return "HF_HUB_OFFLINE is set: unset it to push"
    if status is None and any(t in text for t in ("Connection refused", "Name or service not known", "timed out",
                                                  "Temporary failure in name resolution", "No route to host")):
        from huggingface_hub import constants

        return f"cannot reach {constants.ENDPOINT}: {text}"
    if status in (401, 403):
        text = f"HTTP {status}: check your token (HF_TOKEN or `hf auth login`)"
    elif status is not None:
        server = getattr(err, "server_message", None)
        text = f"HTTP {status}: {' '.join(str(server).split()) if server else text.split(' for url ')[0]}"
    return text if len(text) <= 200 else text[:197] + "..."
