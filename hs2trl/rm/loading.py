"""Loading a reward model: checking the name before a long run, and loading it to score.
"""

from __future__ import annotations

import os

from hs2trl.runtime.errors import Hs2Error


def probe_reward_model(name_or_path: str):
    """Fail early, in one line, when the reward model is neither a reward-model folder nor loadable as a Hub id (a
    typo would otherwise surface only after hours of sampling). Returns its tokenizer."""
    from hs2trl.rm.modeling import check_reward_model, load_tokenizer
    from hs2trl.runtime.pretrained import resolve_model

    path = resolve_model(name_or_path)
    if os.path.isdir(path):
        check_reward_model(path)
    try:
        return load_tokenizer(path)
    except Hs2Error as err:
        raise Hs2Error(f"reward model '{name_or_path}': no such local folder, and not loadable as a Hub id "
                       f"({str(err).split('(', 1)[-1].rstrip(')')})") from None


def load_scoring_rm(name_or_path: str, dtype: str | None = None, spread: bool = False):
    """(model, tokenizer, attributes) of a reward model for batch scoring: on this process's accelerator, or spread
    over every visible GPU (`device_map="auto"`) when `spread` and there are several (a 70B RM in one process)."""
    import torch
    from accelerate import PartialState

    from hs2trl.rm.rewards import load_scoring_model

    dtype = dtype or "float32"
    if spread and torch.cuda.device_count() > 1:
        return load_scoring_model(name_or_path, dtype=dtype, device_map="auto")
    return load_scoring_model(name_or_path, dtype=dtype, device=str(PartialState().device))
