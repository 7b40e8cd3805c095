"""A reward model to score with, in this process or behind `hs2 serve-rm`: the one interface of every RM consumer.

`open_scorer(model=...)` loads the RM here (`rm.loading`); `open_scorer(url=...)` asks one or more servers
(`rm.client`). Both render with the RM's chat template, cut over-long conversations from the left and read the
end-of-turn token in packed batches (`rm.scoring`), so their numbers agree to float noise. Both give:

- `attributes`: the output names, in head order; `name`: the model (or the URLs), for logs and caches;
- `scores(conversations)`: `[N, k]` float32 predictions, in input order; `truncated` counts the conversations cut;
- `weights(spec, default)` and `normalization(name)`: the fold and the stored mean/std, read from the model's
  hs2trl_reward.json (a server sends its model's).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hs2trl.runtime.errors import Hs2Error


class Scorer:
    """What local and remote scorers share: weights and normalisation from the model's reward info."""

    name: str
    attributes: list[str]
    max_length: int | None = None
    truncated: int = 0

    @property
    def reward_info(self) -> dict:
        raise NotImplementedError

    def scores(self, conversations: Sequence[Sequence[dict]], progress: bool = False,
               desc: str = "Scoring") -> torch.Tensor:
        raise NotImplementedError

    def weights(self, spec: str | None, default: str | None) -> tuple[tuple[float, ...] | None, str]:
        """(weights, their name) for `--weights spec` (None for a 1-output RM, scored as it is)."""
        from hs2trl.rm.rewards import resolve_scoring_weights

        return resolve_scoring_weights(self.name, self.attributes, spec, default, info=self.reward_info)

    def normalization(self, weights_name: str) -> tuple[float, float] | None:
        from hs2trl.rm.rewards import stored_normalization

        return stored_normalization(self.name, weights_name, info=self.reward_info)

    def load(self) -> None:
        """Load the weights now (local scorers), e.g. before a progress bar starts."""

    def prepare(self, accelerator) -> None:
        """Place the model beside a trainer's (local scorers only)."""

    def close(self) -> None:
        """Free the model or the connections."""


class LocalScorer(Scorer):
    """A reward model in this process; its outputs are read from its config at once, its weights load at the first
    `scores` (or `prepare`) call, so that a run with nothing left to score never loads them."""

    def __init__(self, name: str, path: str, load_options: dict, batch_size: int = 16, max_length: int | None = None):
        from hs2trl.rm.loading import reward_model_attributes

        self.name, self.path, self.load_options = name, path, load_options
        self.attributes = reward_model_attributes(path)
        self.batch_size, self.max_length, self.truncated = batch_size, max_length, 0
        self._loaded = None

    @classmethod
    def of(cls, model, tokenizer, batch_size: int = 16, max_length: int | None = None,
           name: str = "model") -> LocalScorer:
        """A scorer over a model already in memory (benchmarks, a trainer's own RM)."""
        from hs2trl.rm.loading import LoadedRM
        from hs2trl.rm.modeling import reward_attributes

        scorer = cls.__new__(cls)
        scorer.name = scorer.path = name
        scorer.load_options, scorer.batch_size, scorer.max_length, scorer.truncated = {}, batch_size, max_length, 0
        scorer._loaded = LoadedRM(model, tokenizer, reward_attributes(model.config))
        scorer.attributes = list(scorer._loaded.attributes)
        return scorer

    def load(self):
        """The `rm.loading.LoadedRM` (model, tokenizer, attributes), loaded on first use."""
        if self._loaded is None:
            from hs2trl.rm.loading import load_reward_model

            self._loaded = load_reward_model(self.path, **self.load_options)
        return self._loaded

    @property
    def loaded(self):
        return self.load()

    @property
    def reward_info(self) -> dict:
        from hs2trl.rm.rewards import read_reward_info

        return read_reward_info(self.path)

    def encode(self, conversations: Sequence[Sequence[dict]]) -> list[list[int]]:
        """Token ids ending on the end-of-turn token, cut from the left to `max_length` (counted)."""
        from hs2trl.data.chat import encode_conversation
        from hs2trl.rm.scoring import truncate_left

        sequences = [encode_conversation(self.loaded.tokenizer, c) for c in conversations]
        self.truncated += truncate_left(sequences, self.max_length)
        return sequences

    def scores(self, conversations, progress=False, desc="Scoring") -> torch.Tensor:
        from hs2trl.rm.scoring import score_token_ids

        sequences = self.encode(conversations)
        return score_token_ids(self.loaded.model, self.loaded.tokenizer.pad_token_id, sequences, self.batch_size,
                               progress, desc)

    def prepare(self, accelerator) -> None:
        """Sharded by DeepSpeed ZeRO-3 as TRL shards its own reward models, else on this process's device."""
        from hs2trl.trl_internals import prepare_deepspeed

        model = self.loaded.model
        plugin = getattr(accelerator.state, "deepspeed_plugin", None)
        if plugin is not None and plugin.zero_stage == 3:
            model = prepare_deepspeed(model, accelerator).module  # ZeRO-3 hooks live on the module
            self._loaded = self._loaded._replace(model=model)
        else:
            model.to(accelerator.device)

    def close(self) -> None:
        import gc

        self._loaded = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class RemoteScorer(Scorer):
    """A reward model served by `hs2 serve-rm` (one or more URLs)."""

    def __init__(self, client, max_length: int | None = None):
        self.client, self.max_length, self.truncated = client, max_length, 0
        info = client.info()
        self.name, self.attributes = client.name, list(info["attributes"])
        self.model_name = info.get("model", "")

    @property
    def reward_info(self) -> dict:
        return self.client.info().get("reward_info") or {}

    def scores(self, conversations, progress=False, desc="Scoring") -> torch.Tensor:
        scored = self.client.score(conversations, max_length=self.max_length, progress=progress, desc=desc)
        self.truncated += scored.truncated
        return torch.tensor(scored.scores, dtype=torch.float32).reshape(len(conversations), len(self.attributes))

    def close(self) -> None:
        self.client.close()


def require_one_source(model: str | None, url: str | None, model_flag: str = "--reward-model",
                       url_flag: str = "--reward-url") -> None:
    if not model and not url:
        raise Hs2Error(f"no reward model given: pass {model_flag} (a folder from `hs2 train-rm`) or {url_flag} "
                       "(an `hs2 serve-rm` server)")
    if model and url:
        raise Hs2Error(f"{model_flag} and {url_flag} both given: the RM is either loaded here or served, not both")


def open_scorer(model: str | None = None, url: str | None = None, api_key_env: str | None = None, *,
                dtype: str | None = None, device: str | None = None, device_map: str | None = None,
                spread: bool = False, batch_size: int = 16, max_length: int | None = None,
                concurrency: int = 8) -> Scorer:
    """A local scorer for `model` (its weights load when first needed), or a remote one for `url` (`URL[,URL...]`,
    asked for its model now, so that an unreachable server fails here, in one line)."""
    require_one_source(model, url)
    if url:
        from hs2trl.rm.client import RewardClient

        return RemoteScorer(RewardClient.from_env(url, api_key_env, items_per_request=batch_size,
                                                  concurrency=concurrency), max_length)
    from hs2trl.runtime.pretrained import resolve_model

    options = {"dtype": dtype, "device": device, "device_map": device_map, "spread": spread}
    return LocalScorer(model, resolve_model(model), options, batch_size, max_length)


def probe_source(model: str | None, url: str | None, api_key_env: str | None = None) -> list[str] | None:
    """What a caller checks before launch: a local RM's folder (its output names; None for a Hub id), or that the
    servers answer (their model's output names)."""
    require_one_source(model, url)
    if url:
        from hs2trl.rm.client import RewardClient

        client = RewardClient.from_env(url, api_key_env)
        try:
            return list(client.info()["attributes"])
        finally:
            client.close()
    import os

    from hs2trl.rm.loading import probe_reward_model, reward_model_attributes
    from hs2trl.runtime.pretrained import resolve_model

    probe_reward_model(model)
    path = resolve_model(model)
    return reward_model_attributes(path) if os.path.isdir(path) else None
