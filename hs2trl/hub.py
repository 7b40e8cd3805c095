"""Pushing a finished output folder to the Hugging Face Hub, separately from training.

Training never talks to the Hub: the stage saves locally first, then pushes the folder. A failed push keeps the
local checkpoint and says how to retry (`hs2 push DIR --hub-model-id ID`).
"""

from __future__ import annotations

from pathlib import Path

from .errors import Hs2Error


def push_folder(folder: str, hub_model_id: str, revision: str | None = None, commit_message: str = "hs2trl upload") -> str:
    """Upload `folder` to the model repo `hub_model_id` (created if needed); returns the commit URL."""
    from huggingface_hub import HfApi

    if not Path(folder, "config.json").exists() and not any(Path(folder).glob("*.safetensors")):
        raise Hs2Error(f"{folder}: nothing to push (no config.json or weights)")
    api = HfApi()
    try:
        api.create_repo(hub_model_id, repo_type="model", exist_ok=True)
        if revision:
            api.create_branch(hub_model_id, branch=revision, exist_ok=True)
        info = api.upload_folder(
            repo_id=hub_model_id,
            folder_path=folder,
            revision=revision,
            commit_message=commit_message,
            ignore_patterns=["checkpoint-*/**", "*.lock", "optimizer.pt", "rng_state*.pth"],
        )
    except Exception as err:  # network, auth, permissions: all reported the same way
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise Hs2Error(
            f"push of {folder} to '{hub_model_id}' failed ({first}); the local checkpoint is kept: retry with "
            f"`hs2 push {folder} --hub-model-id {hub_model_id}`"
        ) from None
    return str(getattr(info, "commit_url", info))
