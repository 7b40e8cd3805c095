"""RewardBench (allenai/reward-bench, split `filtered`) scored as its leaderboard scores it.

- A pair is right only when the chosen response scores strictly higher than the rejected one (a tie is wrong).
- Per-subset accuracy; each section is the mean of its subsets' accuracies weighted by their example counts
  (`rewardbench.utils.calculate_scores_per_section` with `rewardbench.constants.EXAMPLE_COUNTS`). Counts come from the
  data, except math-prm, which is up-weighted to the total of the code (hep-*) subsets present, so that math and code
  weigh the same in Reasoning: 984 (= 6 x 164) on the full split, the leaderboard's constant.
- Overall = the mean of the four sections (Chat, Chat Hard, Safety, Reasoning). A section with none of its subsets in
  the data is null, and overall is then the mean of the sections present (a note in the results says so).
- Subsets outside every section are reported per subset only.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hs2trl.data.records import Record, json_safe
from hs2trl.data.sources import read_records
from hs2trl.runtime.errors import Hs2Error

HUB_ID = "allenai/reward-bench"
HUB_SPLIT = "filtered"
CHART = "sections.png"  # the bar chart's file name in the output folder
# A k-head RM is scalarised with the paper's RewardBench weights for its Llama 3 70B RM unless --weights says
# otherwise.
DEFAULT_WEIGHTS = "rewardbench-llama3-70b"

SECTIONS: dict[str, tuple[str, ...]] = {
    "Chat": ("alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"),
    "Chat Hard": ("mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
                  "llmbar-adver-GPTOut", "llmbar-adver-manual"),
    "Safety": ("refusals-dangerous", "refusals-offensive", "xstest-should-refuse", "xstest-should-respond",
               "donotanswer"),
    "Reasoning": ("math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"),
}
MATH_SUBSET = "math-prm"
CODE_PREFIX = "hep-"
# The official subset sizes of the `filtered` split (for reference and the shared-data test).
OFFICIAL_COUNTS = {
    "alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95, "mt-bench-easy": 28, "mt-bench-med": 40,
    "mt-bench-hard": 37, "llmbar-natural": 100, "llmbar-adver-neighbor": 134, "llmbar-adver-GPTInst": 92,
    "llmbar-adver-GPTOut": 47, "llmbar-adver-manual": 46, "refusals-dangerous": 100, "refusals-offensive": 100,
    "xstest-should-refuse": 154, "xstest-should-respond": 250, "donotanswer": 136, "math-prm": 447,
    "hep-cpp": 164, "hep-go": 164, "hep-java": 164, "hep-js": 164, "hep-python": 164, "hep-rust": 164,
}


def section_of(subset: str) -> str | None:
    for section, subsets in SECTIONS.items():
        if subset in subsets:
            return section
    return None


# ---------------------------------------------------------------------------------------------------------------
# Data


def load_pairs(source: str | None = None) -> list[dict]:
    """RewardBench-format rows -> `{id, subset, chosen: messages, rejected: messages}` in input order.

    `source`: a local .jsonl/.json/.parquet file or a Hub id (default allenai/reward-bench, split `filtered`). Rows
    need `prompt` (a string, or chat messages ending on a user turn), `chosen`, `rejected` (strings) and `subset`;
    `id` is optional (the row number is used). Every row is kept, duplicates included."""
    records = read_records(source or HUB_ID, HUB_SPLIT)
    if not records:
        raise Hs2Error(f"{source or HUB_ID}: no rows")
    return [pair_from_record(r) for r in records]


def _text(record: Record, field: str) -> str:
    return record.text(field, missing="missing column (RewardBench rows need prompt, chosen, rejected, subset)")


def prompt_messages(record: Record, text=_text) -> list[dict]:
    """The row's `prompt` as chat messages: a string becomes one user turn; messages must end on a user turn."""
    from hs2trl.data.helpsteer2 import validate_messages

    prompt = record.data.get("prompt")
    if isinstance(prompt, list):
        messages = validate_messages(prompt, record, "prompt")
        if messages[-1]["role"] != "user":
            raise Hs2Error(f"{record.where('prompt')}: the prompt must end with a user turn")
        return messages
    return [{"role": "user", "content": text(record, "prompt")}]


def pair_from_record(record: Record) -> dict:
    messages = prompt_messages(record)
    subset = _text(record, "subset")
    return {
        "id": record.data.get("id", record.row),
        "subset": subset,
        "chosen": [*messages, {"role": "assistant", "content": _text(record, "chosen")}],
        "rejected": [*messages, {"role": "assistant", "content": _text(record, "rejected")}],
    }


# ---------------------------------------------------------------------------------------------------------------
# Scores


def is_correct(score_chosen: float, score_rejected: float) -> bool:
    """Strictly higher wins; ties and NaN are wrong."""
    return bool(score_chosen > score_rejected)


def subset_weights(counts: dict[str, int]) -> dict[str, float]:
    """Example-count weights per subset; math-prm counts as much as all code subsets present together."""
    weights = {s: float(n) for s, n in counts.items()}
    code = sum(n for s, n in counts.items() if s.startswith(CODE_PREFIX))
    if MATH_SUBSET in weights and code:
        weights[MATH_SUBSET] = float(code)
    return weights


def section_scores(per_example: Sequence[dict]) -> dict:
    """Leaderboard scores from per-example rows `{subset, correct}` (or `{subset, score_chosen, score_rejected}`).

    Returns `subsets` (accuracy), `subset_counts`, `subset_weights` (as used in sections), `sections` (name -> score or
    None), `overall` (mean of the sections present, None if none), `unsectioned_subsets` and `notes`."""
    correct: Counter = Counter()
    counts: Counter = Counter()
    for row in per_example:
        ok = row["correct"] if "correct" in row else is_correct(row["score_chosen"], row["score_rejected"])
        counts[row["subset"]] += 1
        correct[row["subset"]] += bool(ok)
    subsets = {s: correct[s] / counts[s] for s in sorted(counts)}
    weights = subset_weights(dict(counts))
    sections: dict[str, float | None] = {}
    for section, members in SECTIONS.items():
        present = [s for s in members if s in subsets]
        total = sum(weights[s] for s in present)
        sections[section] = sum(subsets[s] * weights[s] for s in present) / total if present else None
    present_sections = [v for v in sections.values() if v is not None]
    overall = sum(present_sections) / len(present_sections) if present_sections else None
    notes = []
    missing = [name for name, v in sections.items() if v is None]
    if missing and present_sections:
        notes.append(f"overall is the mean of {len(present_sections)} of {len(SECTIONS)} sections "
                     f"(no data for: {', '.join(missing)})")
    elif not present_sections:
        notes.append("no subset of the data belongs to a RewardBench section: overall is null")
    unsectioned = sorted(s for s in subsets if section_of(s) is None)
    if unsectioned:
        notes.append(f"subsets outside the four sections (reported per subset only): {', '.join(unsectioned)}")
    if MATH_SUBSET in counts and weights[MATH_SUBSET] != counts[MATH_SUBSET]:
        notes.append(f"{MATH_SUBSET} weighted as {weights[MATH_SUBSET]:g} examples (= the code subsets together), "
                     f"not its {counts[MATH_SUBSET]}, as the leaderboard does")
    return {
        "subsets": subsets,
        "subset_counts": dict(sorted(counts.items())),
        "subset_weights": dict(sorted(weights.items())),
        "sections": sections,
        "overall": overall,
        "unsectioned_subsets": unsectioned,
        "notes": notes,
    }


# ---------------------------------------------------------------------------------------------------------------
# Running a model


def first_per_subset(pairs: list[dict], n: int) -> list[dict]:
    """The first `n` pairs of every subset, in input order (a quick, still sectioned, look)."""
    seen: Counter = Counter()
    kept = []
    for pair in pairs:
        seen[pair["subset"]] += 1
        if seen[pair["subset"]] <= n:
            kept.append(pair)
    return kept


def select_rows(rows: list[dict], per_subset: int | None, max_rows: int | None) -> list[dict]:
    """`--per-subset` then `--max-rows`, in input order."""
    if per_subset is not None:
        rows = first_per_subset(rows, per_subset)
    return rows if max_rows is None else rows[:max_rows]


@dataclass
class ScoringRun:
    """A reward model's scalar rewards for a list of conversations (input order), and how they were obtained."""

    rewards: list[float]
    raw: Any  # [N, k] head outputs (a torch tensor), kept for the per-example attribute columns
    weights: tuple[float, ...] | None  # None: a 1-output RM, scored directly
    weights_name: str
    attributes: list[str]
    truncated: int
    seconds: float
    device: str

    def attributes_of(self, i: int) -> list[float]:
        return [round(float(x), 6) for x in self.raw[i]]

    def truncation_note(self, max_length: int | None) -> str | None:
        if not self.truncated:
            return None
        return (f"{self.truncated} of {len(self.rewards)} conversations were longer than max_length={max_length} "
                "tokens and were truncated from the left")

    def fields(self, model_path: str, max_length: int | None) -> dict:
        """What results.json says about the run, whatever the benchmark."""
        return {
            "model": str(model_path),
            "weights_name": self.weights_name,
            "weights": dict(zip(self.attributes, self.weights)) if self.weights is not None else None,
            "attributes": self.attributes,
            "truncated_rows": self.truncated,
            "max_length": max_length,
            "scoring_seconds": round(self.seconds, 2),
            "device": self.device,
        }


def score_conversations_with(model_path: str, conversations: Sequence[list[dict]], weights: str | None = None,
                             batch_size: int = 8, max_length: int | None = None, dtype: str = "float32",
                             device: str | None = None, device_map: str | None = None,
                             progress: bool = True) -> ScoringRun:
    """Load the RM once (`rm.scorer`, as every consumer), render each conversation with its chat template, and score
    them in length-sorted packed batches (`rm.scoring`). A k-head RM is scalarised with `weights` (default preset:
    rewardbench-llama3-70b, the paper's RewardBench weights); a 1-output RM is scored directly."""
    import torch

    from hs2trl.rm.rewards import scalar_rewards
    from hs2trl.rm.scorer import open_scorer

    if device_map is None:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    scorer = open_scorer(model_path, dtype=dtype, device=device, device_map=device_map, batch_size=batch_size,
                         max_length=max_length)
    w, wname = scorer.weights(weights, DEFAULT_WEIGHTS)
    scorer.load()
    started = time.perf_counter()
    raw = scorer.scores(conversations, progress=progress)
    rewards = [float(r) for r in scalar_rewards(raw, w)]
    attributes, truncated = scorer.attributes, scorer.truncated
    return ScoringRun(rewards, raw, w, wname, list(attributes), truncated, time.perf_counter() - started,
                      f"device_map={device_map}" if device_map else str(device))


def partial_note(n_scored: int, n_input: int, per_subset: int | None, max_rows: int | None) -> str | None:
    """The note a run on part of the data carries (`--per-subset`, `--max-rows`)."""
    if n_scored == n_input:
        return None
    how = ", ".join(f for f, v in (("--per-subset", per_subset), ("--max-rows", max_rows)) if v is not None)
    return f"only {n_scored} of {n_input} rows were scored ({how}): not a leaderboard figure"


def evaluate(model_path: str, source: str | None = None, weights: str | None = None, output_dir: str | None = None,
             batch_size: int = 8, max_length: int | None = None, max_rows: int | None = None, dtype: str = "float32",
             device: str | None = None, device_map: str | None = None, per_subset: int | None = None,
             progress: bool = True) -> dict:
    """Score every pair of RewardBench with a reward model; write results.json, per_example.jsonl and sections.png to
    `output_dir` (when given). A k-head RM is scalarised with `weights` (default preset: rewardbench-llama3-70b, the
    paper's RewardBench weights); a 1-output RM is scored directly."""
    all_pairs = load_pairs(source)
    pairs = select_rows(all_pairs, per_subset, max_rows)
    run = score_conversations_with(model_path, [p[side] for p in pairs for side in ("chosen", "rejected")], weights,
                                   batch_size, max_length, dtype, device, device_map, progress)
    per_example = []
    for i, pair in enumerate(pairs):
        chosen, rejected = run.rewards[2 * i], run.rewards[2 * i + 1]
        row = {"id": pair["id"], "subset": pair["subset"], "score_chosen": chosen, "score_rejected": rejected,
               "correct": is_correct(chosen, rejected)}
        if run.weights is not None:  # keep the attribute predictions: other weightings can be scored from this file
            row["chosen_attributes"] = run.attributes_of(2 * i)
            row["rejected_attributes"] = run.attributes_of(2 * i + 1)
        per_example.append(row)
    results = section_scores(per_example)
    ties = sum(1 for r in per_example if r["score_chosen"] == r["score_rejected"])
    results.update(run.fields(model_path, max_length))
    results.update({"dataset": source or f"{HUB_ID}[{HUB_SPLIT}]", "rows": len(per_example),
                    "dataset_rows": len(all_pairs), "ties": ties})
    notes = (partial_note(len(pairs), len(all_pairs), per_subset, max_rows),
             f"{ties} pairs tied (counted wrong)" if ties else None, run.truncation_note(max_length))
    results["notes"] = [*results["notes"], *(n for n in notes if n)]
    if output_dir:
        write_outputs(output_dir, results, per_example)
    return results


def write_outputs(output_dir: str, results: dict, per_example: Sequence[dict], plot=None, chart: str = CHART) -> None:
    """results.json, per_example.jsonl and the bar chart (`plot(results, path)`; default: RewardBench's sections)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(json_safe(results), indent=2) + "\n")
    with open(out / "per_example.jsonl", "w", encoding="utf-8") as f:
        for row in per_example:
            f.write(json.dumps(json_safe(row), ensure_ascii=False) + "\n")
    (plot or plot_sections)(results, out / chart)


def plot_bars(path: str | Path, names: Sequence[str], values: Sequence[float | None], title: str, chance: float,
              chance_label: str = "chance", ylabel: str = "accuracy (%)") -> None:
    """A bar chart in % (the last bar, the overall figure, in another colour) with a dashed chance line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    heights = [100 * v if v is not None else 0 for v in values]
    bars = ax.bar(list(names), heights, color=["#4c72b0"] * (len(names) - 1) + ["#dd8452"])
    for bar, v in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 1, "n/a" if v is None else f"{100 * v:.1f}",
                ha="center", va="bottom", fontsize=9)
    ax.axhline(100 * chance, color="grey", linestyle="--", linewidth=1, label=chance_label)
    ax.set_ylim(0, 105)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sections(results: dict, path: str | Path) -> None:
    """A bar chart of the four sections and overall (accuracy in %, chance = 50%)."""
    values = [results["sections"].get(n) for n in SECTIONS] + [results["overall"]]
    plot_bars(path, [*SECTIONS, "Overall"], values, chance=0.5,
              title=f"RewardBench: {Path(str(results.get('model', ''))).name} ({results.get('weights_name')})")


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"RewardBench: {results.get('model')} (weights: {results.get('weights_name')})")
    table.add_column("section / subset")
    table.add_column("n", justify="right")
    table.add_column("accuracy", justify="right")

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f}"

    for section, members in SECTIONS.items():
        table.add_row(f"[bold]{section}[/bold]", "", f"[bold]{pct(results['sections'][section])}[/bold]")
        for s in members:
            if s in results["subsets"]:
                weight = results["subset_weights"][s]
                n = results["subset_counts"][s]
                table.add_row(f"  {s}", f"{n}" + (f" (x{weight:g})" if weight != n else ""),
                              pct(results["subsets"][s]))
    for s in results["unsectioned_subsets"]:
        table.add_row(f"  {s} (no section)", str(results["subset_counts"][s]), pct(results["subsets"][s]))
    table.add_row("[bold]Overall[/bold]", str(results["rows"]), f"[bold]{pct(results['overall'])}[/bold]")
    console = Console()
    console.print(table)
    for note in results["notes"]:
        console.print(f"note: {note}")
