"""Every private TRL name hs2trl uses, in one place, with the TRL versions each was checked on.

hs2trl supports TRL 1.12 to 1.16 (pyproject.toml). Public TRL API (`trl.RewardTrainer`, `trl.RLOOTrainer`,
`trl.get_peft_config`, `trl.chat_template_utils`, ...) is imported where it is used; what TRL does not export lives
here, so that a TRL release that moves or drops one of these breaks this module alone, and `make test-trl112` (TRL
1.12, the last line with a PPOTrainer) and `make test` (the newest TRL) say which.

| name | from | checked on |
|---|---|---|
| `BaseConfig` (`_BaseConfig`) | `trl.trainer.base_config` | 1.12.0, 1.16.0 |
| `BaseTrainer` (`_BaseTrainer`) | `trl.trainer.base_trainer` | 1.12.0, 1.16.0 |
| `disable_dropout_in_model`, `pad`, `selective_log_softmax` | `trl.trainer.utils` | 1.12.0, 1.16.0 |
| `get_act_offloading_ctx_manager`, `prepare_deepspeed` | `trl.models` | 1.12.0, 1.16.0 |
| `suppress_seqcls_warning` | `trl.trainer.reward_trainer` | 1.12.0, 1.16.0 |
| `PPOTrainer`, `PPOConfig` | `trl.experimental.ppo` | 1.10-1.12 (removed in 1.13, TRL PR 7020) |
| `truncate_response`, `get_reward` | `trl.experimental.ppo.ppo_trainer`, `trl.experimental.utils` | 1.12.0 |

One private method is called outside this module, by `benchmarks/rloo_reward.py` alone (it times TRL's own reward
step): `RLOOTrainer._calculate_rewards(inputs, prompts, completions, completion_ids_list)`, checked on 1.16.0.
"""

from __future__ import annotations

import os

from trl.models import get_act_offloading_ctx_manager, prepare_deepspeed
from trl.trainer.base_config import _BaseConfig as BaseConfig
from trl.trainer.base_trainer import _BaseTrainer as BaseTrainer
from trl.trainer.reward_trainer import suppress_seqcls_warning
from trl.trainer.utils import disable_dropout_in_model, pad, selective_log_softmax

from hs2trl.runtime.errors import Hs2Error

__all__ = [
    "BaseConfig", "BaseTrainer", "disable_dropout_in_model", "get_act_offloading_ctx_manager", "pad",
    "prepare_deepspeed", "selective_log_softmax", "suppress_seqcls_warning", "has_ppo_trainer", "ppo_module",
    "require_ppo", "trl_version",
]

PPO_INSTALL = "pip install 'hs2trl[ppo]'"


def trl_version() -> str:
    import trl

    return trl.__version__


def has_ppo_trainer() -> bool:
    """Whether the installed TRL still ships `trl.experimental.ppo` (1.10-1.12)."""
    from importlib.util import find_spec

    try:
        return find_spec("trl.experimental.ppo") is not None
    except ModuleNotFoundError:
        return False


def require_ppo() -> None:
    """Stop, in one line naming the way out, when the installed TRL has no PPOTrainer."""
    if not has_ppo_trainer():
        raise Hs2Error(
            f"hs2 ppo needs TRL's PPOTrainer, which TRL {trl_version()} no longer ships (removed in 1.13): run "
            f"`{PPO_INSTALL}` (TRL 1.12) in an environment of its own, or use `hs2 rloo` (REINFORCE on current TRL)"
        )


def ppo_module():
    """`trl.experimental.ppo` (PPOTrainer, PPOConfig), without its experimental-API warning."""
    import importlib

    require_ppo()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    return importlib.import_module("trl.experimental.ppo")


def ppo_reward_functions():
    """(truncate_response, get_reward): how TRL 1.12's PPOTrainer cuts responses and reads the reward (tests compare
    hs2's PPO reward against them)."""
    ppo_module()
    from trl.experimental.ppo.ppo_trainer import truncate_response
    from trl.experimental.utils import get_reward

    return truncate_response, get_reward
