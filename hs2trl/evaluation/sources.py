"""Where each benchmark's files come from: a local folder (`--data-dir`), else their public source, downloaded once.

hs2trl ships no benchmark text. A `--data-dir` holds the files in this layout (docs/evaluate.md):

    mt_bench/question.jsonl, judge_prompts.jsonl, reference_answer_gpt-4.jsonl,
             reference_answer_gpt-4-0125-preview.jsonl
    arena_hard_v0.1/question.jsonl, model_answer_gpt-4-0314.jsonl, judge_config.yaml
    alpaca_eval/alpaca_eval_gpt4_baseline.jsonl
    truthfulqa/truthful_qa_mc_validation.jsonl

Without it (or for a file it lacks), each file is fetched from the repository or Hub dataset its benchmark publishes,
pinned to a commit where the project's own `main` has moved on, and cached under the hs2trl cache folder. With
`HF_HUB_OFFLINE=1` nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from hs2trl.data.records import write_jsonl
from hs2trl.runtime.cache import cache_dir
from hs2trl.runtime.errors import Hs2Error, first_line

_FASTCHAT = "https://raw.githubusercontent.com/lm-sys/FastChat/{ref}/fastchat/llm_judge/data/"
_ARENA_HARD = "https://raw.githubusercontent.com/lmarena/arena-hard-auto/{ref}/"


@dataclass(frozen=True)
class BenchmarkFile:
    """One file: its path under --data-dir, and its public source (a URL, or a file of a Hub dataset)."""

    layout: str
    url: str | None = None
    hub_dataset: tuple[str, str] | None = None  # (repo id, file name)

    @property
    def public_source(self) -> str:
        if self.url:
            return self.url
        if self.hub_dataset:
            return f"hf://datasets/{self.hub_dataset[0]}/{self.hub_dataset[1]}"
        return "(none: pass --data-dir)"


FILES: dict[str, BenchmarkFile] = {
    # FastChat's MT Bench data (Apache-2.0); the GPT-4-0125-Preview references are FastChat pull request 3158.
    "mt-bench/questions": BenchmarkFile(
        "mt_bench/question.jsonl", _FASTCHAT.format(ref="main") + "mt_bench/question.jsonl"),
    "mt-bench/judge-prompts": BenchmarkFile(
        "mt_bench/judge_prompts.jsonl", _FASTCHAT.format(ref="main") + "judge_prompts.jsonl"),
    "mt-bench/reference/gpt-4": BenchmarkFile(
        "mt_bench/reference_answer_gpt-4.jsonl",
        _FASTCHAT.format(ref="main") + "mt_bench/reference_answer/gpt-4.jsonl"),
    "mt-bench/reference/gpt-4-0125-preview": BenchmarkFile(
        "mt_bench/reference_answer_gpt-4-0125-preview.jsonl",
        _FASTCHAT.format(ref="962316eba4e9db86bc8002243290e4074dabf48e")
        + "mt_bench/reference_answer/gpt-4-0125-preview.jsonl"),
    # arena-hard-auto v0.1 (Apache-2.0), at the commits of that release's files.
    "arena-hard/questions": BenchmarkFile(
        "arena_hard_v0.1/question.jsonl",
        _ARENA_HARD.format(ref="6c82720015d5da7b8795b809b91f63ef74abbf6a") + "data/arena-hard-v0.1/question.jsonl"),
    "arena-hard/baseline": BenchmarkFile(
        "arena_hard_v0.1/model_answer_gpt-4-0314.jsonl",
        _ARENA_HARD.format(ref="e0a8ea1df42c1df76451a6cd04b14e31ff992b87")
        + "data/arena-hard-v0.1/model_answer/gpt-4-0314.jsonl"),
    "arena-hard/judge-config": BenchmarkFile(
        "arena_hard_v0.1/judge_config.yaml",
        _ARENA_HARD.format(ref="7f1b7f5dd6ce53e1f8530220ceb452b7019a8056") + "config/judge_config.yaml"),
    # AlpacaEval 2.0's 805 instructions with the GPT-4 Turbo reference outputs (data CC BY-NC 4.0).
    "alpacaeval/reference": BenchmarkFile(
        "alpaca_eval/alpaca_eval_gpt4_baseline.jsonl",
        hub_dataset=("tatsu-lab/alpaca_eval", "alpaca_eval_gpt4_baseline.json")),
    # TruthfulQA: lm-evaluation-harness reads the Hub dataset itself when no local file is given.
    "truthfulqa/mc": BenchmarkFile("truthfulqa/truthful_qa_mc_validation.jsonl"),
}


def local_file(key: str, data_dir: str | None) -> Path | None:
    """The file in --data-dir, when there is one."""
    if data_dir:
        path = Path(data_dir) / FILES[key].layout
        if path.is_file():
            return path
    return None


def fetch(key: str, data_dir: str | None = None) -> tuple[str, str]:
    """(local path, where it came from) of one benchmark file: --data-dir, the cache, or a download into the cache."""
    spec = FILES[key]
    path = local_file(key, data_dir)
    if path is not None:
        return str(path), str(path)
    target = cache_dir() / "eval" / spec.layout
    if target.is_file():
        return str(target), spec.public_source
    missing = f"{data_dir}/{spec.layout} does not exist" if data_dir else "no --data-dir"
    if spec.url is None and spec.hub_dataset is None:
        raise Hs2Error(f"{spec.layout}: {missing}, and this file has no download source")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
    try:
        if spec.url:
            _download(spec.url, tmp)
        else:
            _download_hub(*spec.hub_dataset, tmp)
        tmp.replace(target)
    except Exception as err:  # offline, 404, no Hub: one line, with the way out
        tmp.unlink(missing_ok=True)
        raise Hs2Error(f"{spec.layout}: {missing}, and it could not be fetched from {spec.public_source} "
                       f"({first_line(err)}); pass --data-dir with a local copy") from None
    return str(target), spec.public_source


def _download(url: str, target: Path) -> None:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise ConnectionError("HF_HUB_OFFLINE is set: hs2 downloads nothing")
    with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as out:
        shutil.copyfileobj(response, out)


def _download_hub(repo_id: str, filename: str, target: Path) -> None:
    """A file of a Hub dataset; a JSON list is stored as JSON lines (the --data-dir layout)."""
    import json

    from huggingface_hub import hf_hub_download

    downloaded = hf_hub_download(repo_id=repo_id, filename=filename, repo_type="dataset")
    if filename.endswith(".json") and target.name.endswith(".jsonl"):
        rows = json.loads(Path(downloaded).read_text(encoding="utf-8"))
        write_jsonl(target, rows)
    else:
        shutil.copyfile(downloaded, target)
