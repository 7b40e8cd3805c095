"""ExPO, model extrapolation (Zheng et al., "Weak-to-Strong Extrapolation Expedites Alignment", arXiv 2404.16792):
from a weaker model A and a stronger model B trained from it, `θ_O = θ_B + α·(θ_B - θ_A)` for every floating-point
tensor. HelpSteer2-Preference (arXiv 2410.01257) applies it to its reward models: A the helpfulness-only regression RM,
B the scaled Bradley-Terry RM trained from it, α picked by pairwise accuracy on held-out preference pairs.

The weights are read tensor by tensor with `safetensors.safe_open` (memory-mapped), one of B's shards at a time, in
the shard layout of B's index file: a 70B model never needs two full models in memory, only the output shard being
built (B's dtype) and float32 copies of one tensor. Non-float tensors (integer buffers) are B's, unchanged.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from hs2trl.runtime.errors import Hs2Error

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
RESULT_FILE = "expo.json"
RUNNING_FILE = ".hs2-expo-running"  # in the output while a run writes it: an interrupted run's leftovers are ours
REWARD_INFO_FILE = "hs2trl_reward.json"  # rm.rewards.REWARD_INFO_FILE, without importing torch at parse time
CANDIDATE_PREFIX = "alpha-"
# Files of B that do not describe O: its weights (rewritten), its card and recipe (O gets its own card), its training
# state and evaluation results (measured on B).
NOT_COPIED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")
NOT_COPIED_NAMES = {INDEX_FILE, "README.md", "hs2trl_recipe.yaml", "trainer_state.json", RESULT_FILE}
HUB_IGNORE = ["*.bin", "*.pt", "*.pth", "*.h5", "*.msgpack", "*.gguf", "*.onnx", "original/*", "onnx/*"]


# ----------------------------------------------------------------------------------------------- options


def parse_alphas(value: str, flag: str) -> list[float]:
    """`0.5` or `0.1,0.3,0.5` -> floats; anything else is one line naming the option and the value."""
    alphas = []
    for part in value.split(","):
        try:
            alpha = float(part)
        except ValueError:
            raise Hs2Error(f"expo: {flag}: '{part.strip()}' is not a number") from None
        if not math.isfinite(alpha):
            raise Hs2Error(f"expo: {flag}: '{part.strip()}' is not a finite number")
        alphas.append(alpha)
    if len(set(alphas)) != len(alphas):
        raise Hs2Error(f"expo: {flag}: '{value}' names an alpha twice")
    return alphas


def alpha_name(alpha: float) -> str:
    return f"{alpha:g}"


# ----------------------------------------------------------------------------------------------- model folders


@dataclass
class Weights:
    """A model folder's safetensors weights: its shard files in index order, and which file holds each tensor."""

    folder: Path
    files: list[str]
    index: dict | None  # the index file's content, None for a single model.safetensors
    tensors: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)  # name -> (file, shape)


def model_folder(name: str, flag: str) -> Path:
    """A local folder for `name` (a folder, a `pkg:` model, or a Hub id downloaded with `snapshot_download`)."""
    from hs2trl.runtime.pretrained import resolve_model

    try:
        path = resolve_model(name)
    except Hs2Error as err:
        raise Hs2Error(f"expo: {flag} {str(err).removeprefix('model ')}") from None
    if os.path.exists(path):
        return Path(path)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(path, ignore_patterns=HUB_IGNORE))
    except Exception as err:  # offline, no such repo, gated: one line, the Hub's reason
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise Hs2Error(f"expo: {flag} '{name}': no such local folder, and cannot download it from the Hub "
                       f"({reason})") from None


def read_weights(folder: Path, flag: str) -> Weights:
    """The tensor layout of a model folder (safetensors headers only: no weights read)."""
    from safetensors import safe_open

    where = f"expo: {flag} '{folder}'"
    if not folder.is_dir():
        raise Hs2Error(f"{where}: a file, not a model folder")
    if not (folder / "config.json").is_file():
        raise Hs2Error(f"{where}: not a model folder (no config.json)")
    index = None
    if (folder / INDEX_FILE).is_file():
        try:
            index = json.loads((folder / INDEX_FILE).read_text())
            files = list(dict.fromkeys(index["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise Hs2Error(f"{where}: {INDEX_FILE} is not a safetensors index (no weight_map)") from None
    elif (folder / SINGLE_FILE).is_file():
        files = [SINGLE_FILE]
    elif any(folder.glob("*.bin")):
        raise Hs2Error(f"{where}: its weights are not safetensors (expo reads .safetensors; re-save the model with "
                       "save_pretrained)")
    else:
        raise Hs2Error(f"{where}: not a model folder (no {SINGLE_FILE} or {INDEX_FILE})")
    weights = Weights(folder, files, index)
    for file in files:
        if not (folder / file).is_file():
            raise Hs2Error(f"{where}: {INDEX_FILE} names {file}, which is not there")
        try:
            with safe_open(str(folder / file), "pt") as f:
                for name in f.keys():
                    weights.tensors[name] = (file, tuple(f.get_slice(name).get_shape()))
        except Exception as err:  # safetensors' own error for a torn or foreign file
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise Hs2Error(f"{where}: {file} is not a readable safetensors file ({reason})") from None
    return weights


def check_same_tensors(base: Weights, model: Weights) -> None:
    """One line naming the first tensor (in B's order) that A lacks or holds in another shape, else the first tensor
    only A has."""
    for name, (file, shape) in model.tensors.items():
        if name not in base.tensors:
            raise Hs2Error(f"expo: the models differ: tensor '{name}' is in --model ({model.folder}/{file}) but not "
                           f"in --base ({base.folder})")
        base_shape = base.tensors[name][1]
        if base_shape != shape:
            raise Hs2Error(f"expo: the models differ: tensor '{name}' has shape {list(base_shape)} in --base "
                           f"({base.folder}) and {list(shape)} in --model ({model.folder})")
    for name, (file, _) in base.tensors.items():
        if name not in model.tensors:
            raise Hs2Error(f"expo: the models differ: tensor '{name}' is in --base ({base.folder}/{file}) but not "
                           f"in --model ({model.folder})")


# ----------------------------------------------------------------------------------------------- extrapolation


@dataclass
class Extrapolated:
    extrapolated: int  # floating-point tensors: θ_B + α·(θ_B - θ_A)
    copied: int  # other tensors (integer buffers): B's, unchanged
    shards: int


def extrapolate(base: Weights, model: Weights, alpha: float, output: str | os.PathLike,
                progress: bool = True) -> Extrapolated:
    """Write `output` = B + alpha·(B - A): B's shards with the same names and tensors (computed in float32, written in
    B's dtype), B's index, and B's other files (config, tokenizer; see `copy_model_files`)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    counts = Extrapolated(0, 0, len(model.files))
    with ExitStack() as stack, tqdm(total=len(model.tensors), desc=f"ExPO alpha={alpha_name(alpha)}",
                                     unit="tensor", disable=not progress) as bar:
        base_files = {}  # A's shards, opened when first needed (memory-mapped: only the tensors read are paged in)

        def base_tensor(name: str):
            file = base.tensors[name][0]
            if file not in base_files:
                base_files[file] = stack.enter_context(safe_open(str(base.folder / file), "pt"))
            return base_files[file].get_tensor(name)

        for file in model.files:
            shard = {}  # the one output shard held in memory
            with safe_open(str(model.folder / file), "pt") as f:
                metadata = f.metadata()
                for name in f.keys():
                    b = f.get_tensor(name)
                    if b.is_floating_point():
                        t = b.to(torch.float32, copy=True)
                        t.sub_(base_tensor(name).to(torch.float32)).mul_(alpha).add_(b)  # α·(B - A) + B
                        shard[name] = t.to(b.dtype)
                        counts.extrapolated += 1
                    else:
                        shard[name] = b
                        counts.copied += 1
                    bar.update()
            save_file(shard, str(out / file), metadata=metadata)
            del shard
    if model.index is not None:
        (out / INDEX_FILE).write_text(json.dumps(model.index, indent=2) + "\n")
    copy_model_files(model.folder, out)
    return counts


def copy_model_files(source: Path, target: Path) -> list[str]:
    """B's top-level files that describe O too (config, generation config, tokenizer, chat template); its reward info
    without the normalisation measured on B. Returns the names copied."""
    copied = []
    for path in sorted(source.iterdir()):
        name = path.name
        if (not path.is_file() or name.startswith(".") or name.endswith(NOT_COPIED_SUFFIXES)
                or name in NOT_COPIED_NAMES or name.endswith("results.json")):
            continue
        if name == REWARD_INFO_FILE:
            try:
                info = json.loads(path.read_text())
            except ValueError:
                raise Hs2Error(f"{path}: malformed JSON") from None
            info.pop("normalization", None)  # B's reward statistics: O's differ (`hs2 rm-normalize` measures them)
            if info:
                (target / name).write_text(json.dumps(info, indent=2) + "\n")
                copied.append(name)
            continue
        shutil.copyfile(path, target / name)
        copied.append(name)
    return copied


def move_model(source: Path, target: Path) -> None:
    """A candidate folder's files up into `target` (the same filesystem: renames, no copy)."""
    for path in source.iterdir():
        path.replace(target / path.name)
    source.rmdir()


def clear_output(output: Path) -> None:
    """What an earlier expo run left in `output`: its weights, index and candidate folders (--overwrite, or a run
    that was interrupted)."""
    if not output.is_dir():
        return
    for path in output.iterdir():
        if path.is_dir() and path.name.startswith(CANDIDATE_PREFIX):
            shutil.rmtree(path)
        elif path.is_file() and (path.name.endswith(".safetensors") or path.name in (INDEX_FILE, RESULT_FILE)):
            path.unlink()


def output_problem(output: Path) -> str | None:
    """Why `output` cannot be written without --overwrite (None when it can)."""
    if not output.exists():
        return None
    if not output.is_dir():
        return "a file, not a folder"
    if (output / RUNNING_FILE).exists():
        return None  # an interrupted expo run: it starts again
    if any(output.glob("*.safetensors")) or (output / INDEX_FILE).exists() or (output / RESULT_FILE).exists():
        return "already holds a model"
    if any(p.is_dir() and p.name.startswith(CANDIDATE_PREFIX) for p in output.iterdir()):
        return f"holds the {CANDIDATE_PREFIX}* folders of an unfinished expo run"
    return None


# ----------------------------------------------------------------------------------------------- choosing alpha


@dataclass
class Scoring:
    """How each candidate is scored: the pairs and the reward-model settings."""

    pairs: Sequence  # hs2trl.data.preference.PreferencePair
    dataset: str = ""  # where the pairs came from (for the table and expo.json)
    pair_stats: dict = field(default_factory=dict)
    weights: str | None = None  # --weights for a k-output RM; a 1-output RM is scored directly
    batch_size: int = 8
    dtype: str = "float32"
    device: str | None = None
    device_map: str | None = None
    progress: bool = True


def pairwise_accuracy(model_dir: str, scoring: Scoring) -> dict:
    """The share of pairs whose chosen response gets the higher reward (a tie counts wrong), with the mean margin."""
    import torch

    from hs2trl.rm.loading import load_reward_model
    from hs2trl.rm.rewards import resolve_scoring_weights, scalar_rewards
    from hs2trl.rm.scoring import score_conversations

    device = scoring.device
    if scoring.device_map is None:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, attributes = load_reward_model(model_dir, dtype=scoring.dtype, device=device,
                                                     device_map=scoring.device_map)
    w, weights_name = resolve_scoring_weights(model_dir, attributes, scoring.weights, default=None)
    pairs = scoring.pairs
    conversations = ([[*p.prompt, {"role": "assistant", "content": p.chosen}] for p in pairs]
                     + [[*p.prompt, {"role": "assistant", "content": p.rejected}] for p in pairs])
    rewards = scalar_rewards(score_conversations(model, tokenizer, conversations, scoring.batch_size,
                                                 progress=scoring.progress), w)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    n = len(pairs)
    margins = rewards[:n] - rewards[n:]
    correct = int((margins > 0).sum())
    return {"accuracy": correct / n, "correct": correct, "pairs": n, "ties": int((margins == 0).sum()),
            "mean_margin": float(margins.mean()), "weights_name": weights_name}


def check_scoring(model_name: str, weights: str | None) -> None:
    """Before any weights are written: B is a reward model that gives one reward with these `weights`."""
    from hs2trl.rm.loading import reward_model_attributes
    from hs2trl.rm.rewards import resolve_scoring_weights

    resolve_scoring_weights(model_name, reward_model_attributes(model_name), weights, default=None)


def better(row: dict, best: dict) -> bool:
    """Higher accuracy wins; a tie goes to the alpha nearer 0 (the smaller extrapolation)."""
    return (row["accuracy"], -abs(row["alpha"])) > (best["accuracy"], -abs(best["alpha"]))


def select_alpha(base: Weights, model: Weights, alphas: Sequence[float], output: Path, scoring: Scoring,
                 keep_best: bool = True, progress: bool = True) -> tuple[list[dict], Extrapolated]:
    """Score B itself (alpha 0) and each candidate; leave the best one's model in `output` (with `keep_best`; else
    the one alpha asked for). Candidates are written to `output/alpha-<a>/`; each loser is deleted as soon as it has
    lost, so at most two candidates are on disk at once. Returns the table (one row per alpha, B first) and the
    counts of the model kept."""
    from hs2trl.runtime.say import say

    table = [{"alpha": 0.0, **pairwise_accuracy(str(model.folder), scoring)}]
    say(f"alpha 0 (--model itself): accuracy {table[0]['accuracy']:.4f}")
    best, best_dir, counts = table[0], None, None
    for alpha in [a for a in alphas if a != 0]:  # alpha 0 is B itself, scored above
        candidate = output / f"{CANDIDATE_PREFIX}{alpha_name(alpha)}"
        made = extrapolate(base, model, alpha, candidate, progress=progress)
        row = {"alpha": alpha, **pairwise_accuracy(str(candidate), scoring)}
        table.append(row)
        say(f"alpha {alpha_name(alpha)}: accuracy {row['accuracy']:.4f}")
        if not keep_best or better(row, best):
            if best_dir is not None:
                shutil.rmtree(best_dir)
            best, best_dir, counts = row, candidate, made
        else:
            shutil.rmtree(candidate)
    if best_dir is None:  # B itself scored best: O is B (alpha 0 writes B's tensors exactly)
        counts = extrapolate(base, model, 0.0, output, progress=progress)
    else:
        move_model(best_dir, output)
    for row in table:
        row["kept"] = row is best
    return table, counts


def read_pairs(dataset: str, split: str, max_rows: int | None = None) -> tuple[list, dict]:
    """The preference pairs of --eval-dataset (ties dropped and counted), and what was read."""
    from dataclasses import asdict

    from hs2trl.data.preference import preference_pairs
    from hs2trl.data.sources import read_records

    records = read_records(dataset, split)  # rows with a `split` column: those of `split` only
    rows = len(records)
    if max_rows is not None:
        records = records[:max_rows]
    pairs, stats = preference_pairs(records)
    if not pairs:
        raise Hs2Error(f"expo: --eval-dataset {dataset}: no preference pairs in {len(records)} rows "
                       f"({stats.ties_dropped} ties dropped)")
    by_split = bool(records) and "split" in records[0].data
    return pairs, {**asdict(stats), "dataset_rows": rows, "split": split if by_split else None}


# ----------------------------------------------------------------------------------------------- the command


def run_expo(base: str, model: str, alphas: Sequence[float], output: str, scoring: Scoring | None = None,
             select: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    """Write `output` = B + α·(B - A). With `scoring`, B and each α are scored on its pairs first (`select_alpha`):
    with `select` the best one is kept, else the one α given. Writes `output/expo.json` and returns its content."""
    from hs2trl.runtime.say import say

    out = Path(output)
    a = read_weights(model_folder(base, "--base"), "--base")
    b = read_weights(model_folder(model, "--model"), "--model")
    if out.resolve() in (a.folder.resolve(), b.folder.resolve()):
        raise Hs2Error(f"expo: --output {output} is one of the input models: choose another folder")
    check_same_tensors(a, b)
    problem = output_problem(out)
    if problem and not (overwrite and out.is_dir()):
        raise Hs2Error(f"expo: --output {output}: {problem}; choose another folder or pass --overwrite")
    if scoring is not None:
        check_scoring(str(b.folder), scoring.weights)
    say(f"ExPO: {len(b.tensors)} tensors in {len(b.files)} shard(s); output = --model + alpha·(--model - --base)")
    if (out / RUNNING_FILE).exists():
        say(f"{output}: an earlier expo run stopped before it finished; starting again")
    if overwrite or (out / RUNNING_FILE).exists():
        clear_output(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / RUNNING_FILE).touch()
    if scoring is None:
        (alpha,) = alphas
        counts, table = extrapolate(a, b, alpha, out, progress=progress), []
    else:
        table, counts = select_alpha(a, b, alphas, out, scoring, keep_best=select, progress=progress)
        alpha = next(row["alpha"] for row in table if row["kept"])
    result = {
        "method": "ExPO (arXiv 2404.16792): output = model + alpha * (model - base), per floating-point tensor",
        "base": base,
        "model": model,
        "alpha": alpha,
        "selected": bool(scoring is not None and select),
        "tensors": {"extrapolated": counts.extrapolated, "copied": counts.copied, "shards": counts.shards},
        "table": table,
    }
    if scoring is not None:
        result.update(eval_dataset=scoring.dataset, pair_stats=scoring.pair_stats,
                      weights_name=table[0]["weights_name"])
    write_result(out, result)
    (out / RUNNING_FILE).unlink()
    return result


# ----------------------------------------------------------------------------------------------- reporting


def public_name(name: str) -> str:
    """A local path by its folder name (the card may be pushed), a Hub id as is."""
    return Path(name.rstrip("/")).name if os.path.exists(name) else name


def write_result(output: Path, result: dict) -> None:
    (output / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"ExPO: {result['model']} + alpha·({result['model']} - {result['base']}) on "
                        f"{result['eval_dataset']} ({result['table'][0]['pairs']} pairs)")
    for column in ("alpha", "accuracy", "correct", "ties", "mean margin", ""):
        table.add_column(column, justify="left" if not column else "right")
    for row in result["table"]:
        table.add_row(alpha_name(row["alpha"]) + (" (--model)" if row["alpha"] == 0 else ""),
                      f"{100 * row['accuracy']:.1f}", str(row["correct"]), str(row["ties"]),
                      f"{row['mean_margin']:.4f}", "kept" if row["kept"] else "")
    Console().print(table)


def card_section(result: dict) -> str:
    """The model card's account of how the model was made (appended to the hs2trl card)."""
    lines = [
        "## How it was made: ExPO",
        "",
        f"Model extrapolation (ExPO, arXiv 2404.16792): every floating-point tensor is "
        f"`θ = θ_B + α·(θ_B - θ_A)` with B = `{public_name(result['model'])}`, A = `{public_name(result['base'])}` "
        f"and α = {alpha_name(result['alpha'])}, computed in float32 and stored in B's dtype "
        f"({result['tensors']['extrapolated']} tensors; {result['tensors']['copied']} non-float tensors are B's).",
        "",
    ]
    if result.get("table"):
        how = "chosen" if result["selected"] else "scored"
        lines += [f"α was {how} by pairwise accuracy (the share of pairs whose chosen response scores higher) on "
                  f"`{public_name(result['eval_dataset'])}` "
                  f"({result['table'][0]['pairs']} pairs):", "", "| α | accuracy | mean margin |", "|---|---|---|"]
        lines += [f"| {alpha_name(r['alpha'])}{' (kept)' if r['kept'] else ''} | {100 * r['accuracy']:.1f} | "
                  f"{r['mean_margin']:.4f} |" for r in result["table"]]
        lines.append("")
    return "\n".join(lines) + "\n"
