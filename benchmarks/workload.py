"""What every benchmark runs on: HelpSteer2 rows (real or generated), tokenised once, and the base models."""

from __future__ import annotations

import copy
import math
import random
from pathlib import Path

from benchmarks.steerlm2 import steerlm2_rows

REPO = Path(__file__).resolve().parents[1]
SHARED_SAMPLE = REPO.parent / "shared" / "data" / "helpsteer2_sample100.jsonl"
SHARED_TRAIN = REPO.parent / "shared" / "data" / "helpsteer2_train1000.jsonl"  # more prompts, for SteerLM 2.0 groups
ATTRIBUTES = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]


def synthetic_rows(n_rows: int, seed: int = 0) -> list[dict]:
    """HelpSteer2-format rows whose token lengths follow the real sample's: prompts log-normal (median ~20 tokens,
    heavy tail, about 30% multi-turn), responses log-normal (median ~290 tokens); two responses per prompt."""
    rng = random.Random(seed)
    words = ("the model data answer question because system value should would first into water people time "
             "example result process different between important number however during another function "
             "information following provide support several without general python example return").split()

    def text(tokens: float) -> str:
        return " ".join(rng.choice(words) for _ in range(max(1, int(tokens / 1.15))))

    rows = []
    for _ in range((n_rows + 1) // 2):
        prompt = text(min(2000, math.exp(rng.gauss(math.log(20), 1.6))))
        if rng.random() < 0.3:
            prompt += f"\n<extra_id_1>Assistant\n{text(min(800, math.exp(rng.gauss(math.log(120), 0.8))))}"
            prompt += f"\n<extra_id_1>User\n{text(min(300, math.exp(rng.gauss(math.log(20), 1.0))))}"
        for _ in range(2):
            response = text(min(2000, math.exp(rng.gauss(math.log(290), 0.55))))
            rows.append({"prompt": prompt, "response": response, **{a: rng.randint(0, 4) for a in ATTRIBUTES}})
    return rows[:n_rows]


def load_rows(path: str | None, n_rows: int, default: Path = SHARED_SAMPLE) -> tuple[list[dict], str]:
    from hs2trl.data.sources import read_records

    source = Path(path) if path else default
    if source.is_file():
        return [r.data for r in read_records(str(source))][:n_rows], str(source)
    if path:
        raise SystemExit(f"bench: {path}: no such file")
    return synthetic_rows(n_rows), "synthetic (benchmarks/workload.py:synthetic_rows, HelpSteer2 length distribution)"


def prepare(settings: dict) -> tuple[dict, dict]:
    """Tokenise once; load the base models once (`load_models`)."""
    from hs2trl.data.chat import encode_conversation
    from hs2trl.data.helpsteer2 import regression_examples
    from hs2trl.data.records import Record
    from hs2trl.runtime.models import load_tokenizer
    from hs2trl.runtime.pretrained import resolve_model

    n_train = settings["batch_size"] * settings["steps"]
    n_rows = max(n_train, settings["annotate_rows"])
    rows, source = load_rows(settings["data"], n_rows)
    if len(rows) < n_train:
        raise SystemExit(f"bench: {source} has {len(rows)} rows; training needs {n_train}")
    examples = regression_examples([Record(source, i, r) for i, r in enumerate(rows, 1)], ATTRIBUTES)

    model_path = resolve_model(settings["model"])
    tokenizer = load_tokenizer(model_path)
    ids = [encode_conversation(tokenizer, e["messages"]) for e in examples]
    limit = settings["max_length"]
    train_ids = [x[-limit:] if limit else x for x in ids[:n_train]]  # keep_end truncation, the same for all
    truncated = sum(1 for x in ids[:n_train] if limit and len(x) > limit)
    data = {
        "singles": [{"input_ids": x, "labels": e["labels"]} for x, e in zip(train_ids, examples, strict=False)],
        # consecutive rows share a prompt: the same sequences as chosen/rejected pairs for stock TRL
        "pairs": [{"chosen_ids": train_ids[i], "rejected_ids": train_ids[i + 1]} for i in range(0, n_train, 2)],
        "conversations": [e["messages"] for e in examples[: settings["annotate_rows"]]],
        "source": source,
        "train_lengths": [len(x) for x in train_ids],
        "annotate_lengths": [len(x) for x in ids[: settings["annotate_rows"]]],
        "all_lengths": [len(x) for x in ids],
        "truncated": truncated,
    }
    models = set(settings.get("models", ("regression", "bt", "scorer", "causal")))
    if not settings["annotate_rows"]:
        models.discard("scorer")
    if settings.get("rloo_repeats") and settings["annotate_rows"]:
        models |= {"regression", "scorer"}
    if settings.get("steerlm2_steps"):
        default = SHARED_TRAIN if SHARED_TRAIN.is_file() else SHARED_SAMPLE
        s_rows, s_source = load_rows(settings.get("steerlm2_data"), 400, default)
        data["steerlm2"], data["steerlm2_facts"] = steerlm2_rows(
            s_rows, tokenizer, settings["steerlm2_responses"], settings["steerlm2_batch"], settings["steerlm2_steps"],
            settings["steerlm2_max_length"])
        data["steerlm2_facts"]["source"] = s_source
    else:
        models.discard("causal")
    base = {"tokenizer": tokenizer, "path": model_path, **load_models(model_path, tokenizer, settings, models)}
    return base, data


def load_models(model_path: str, tokenizer, settings: dict, kinds) -> dict:
    """The base models, each from the same initial weights (seed 0), on the device: `regression` (k=5 head), `bt`
    (stock TRL's 1-output head), `scorer` (`regression` in the scoring dtype), `causal` (the SteerLM 2.0 policy).
    With `settings["model_config"]` (a transformers config): random weights of that architecture instead of the
    checkpoint's (speed does not depend on the weights)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from hs2trl.rm.modeling import init_reward_model, reward_config_kwargs

    device, config = settings["device"], settings.get("model_config")
    place = settings.get("base_device", device)  # where the base copies wait (the trainer moves its own copy)
    load = dict(dtype=torch.float32)  # master weights fp32; bf16 runs use autocast (mixed precision), as TRL does

    def build(auto, **overrides):
        torch.manual_seed(0)
        if config is None:
            return auto.from_pretrained(model_path, **overrides, **load).to(place)
        shared = {k: v for k, v in config.to_dict().items() if k not in ("num_labels", "id2label", "label2id")}
        cfg = type(config).from_dict({**shared, **overrides, "pad_token_id": tokenizer.pad_token_id})
        with torch.device(device):  # random init on the device (fast), then where the copies wait
            return auto.from_config(cfg, **load).to(place)

    out = {}
    if "regression" in kinds or "scorer" in kinds:
        if config is None:
            torch.manual_seed(0)
            out["regression"] = init_reward_model(model_path, tokenizer, ATTRIBUTES, **load).to(place)
        else:
            out["regression"] = build(AutoModelForSequenceClassification, **reward_config_kwargs(ATTRIBUTES))
    if "bt" in kinds:
        out["bt"] = build(AutoModelForSequenceClassification, num_labels=1)
        out["bt"].config.pad_token_id = tokenizer.pad_token_id
    if "scorer" in kinds:
        dtype = torch.bfloat16 if settings["bf16"] and device == "cuda" else torch.float32
        out["scorer"] = copy.deepcopy(out["regression"]).to(device=device, dtype=dtype).eval()
    if "causal" in kinds:
        out["causal"] = build(AutoModelForCausalLM)
    return out
