"""RewardBench 2 (allenai, arXiv 2506.01937; `allenai/reward-bench-2`, split `test`), scored as its leaderboard does.

Each row is a prompt with a list of `chosen` and a list of `rejected` responses; every response is scored on its own.

- Factuality, Precise IF, Math, Safety, Focus: best-of-n (1 chosen against 3 rejected in the data). A prompt scores 1/k
  when the chosen response is among the k responses sharing the top score (1 when it alone is on top), else 0; a NaN
  score anywhere gives 0. As `reroll_and_score_dataset` in allenai/reward-bench `rewardbench/utils.py`
  (commit a0096928): `1 / #(scores == max) if scores[0] == max else 0`.
- Ties: one score for the whole subset, `ties_score` below (that file's `process_single_model`).
- The leaderboard score is the mean of the six subset scores (the dataset card). Subsets outside the six are scored
  best-of-n, counted and reported, and left out of the mean.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from hs2trl.data.records import Record
from hs2trl.data.sources import read_records
from hs2trl.rm import rewardbench
from hs2trl.runtime.errors import Hs2Error

HUB_ID = "allenai/reward-bench-2"
HUB_SPLIT = "test"
CHART = "subsets.png"
BEST_OF_N = ("Factuality", "Precise IF", "Math", "Safety", "Focus")
TIES = "Ties"
SUBSETS = (*BEST_OF_N, TIES)
# Ties ids pair a reference prompt (one correct answer) with its tied twin (several): "ref:12" and "tied:12".
TIES_ID = re.compile(r"^(ref|tied):(.+)$")


def _key(name: str) -> str:
    return re.sub(r"[\s_-]+", " ", name.strip().lower())


CANONICAL = {_key(s): s for s in SUBSETS}


def canonical_subset(name: str) -> str | None:
    """The RewardBench 2 subset a name means ('precise_if' -> 'Precise IF'), or None for another name."""
    return CANONICAL.get(_key(name))


# ---------------------------------------------------------------------------------------------------------------
# Data


def load_prompts(source: str | None = None) -> list[dict]:
    """RewardBench 2 rows -> `{id, subset, known, messages, chosen: [str], rejected: [str]}` in input order.

    `source`: a local .jsonl/.json/.parquet file or a Hub id (default allenai/reward-bench-2, split `test`). Rows need
    `prompt` (a string, or chat messages ending on a user turn), `chosen` and `rejected` (lists of strings) and
    `subset`; `id` is optional except in Ties ('ref:N' / 'tied:N'). Other columns are ignored."""
    records = read_records(source or HUB_ID, HUB_SPLIT)
    if not records:
        raise Hs2Error(f"{source or HUB_ID}: no rows")
    return [prompt_from_record(r) for r in records]


def _text(record: Record, field: str) -> str:
    return record.text(field, missing="missing column (RewardBench 2 rows need prompt, chosen, rejected, subset)")


def _responses(record: Record, field: str) -> list[str]:
    if field not in record.data:
        raise Hs2Error(f"{record.where(field)}: missing column (RewardBench 2 rows need prompt, chosen, rejected, "
                       "subset)")
    value = record.data[field]
    if not isinstance(value, list):
        raise Hs2Error(f"{record.where(field)}: expected a list of responses (RewardBench 2 format), "
                       f"got {type(value).__name__}")
    for i, text in enumerate(value, start=1):
        if not isinstance(text, str) or not text.strip():
            got = "empty text" if isinstance(text, str) else f"expected a string, got {type(text).__name__}"
            raise Hs2Error(f"{record.where(field)}: response {i}: {got}")
    return value


def prompt_from_record(record: Record) -> dict:
    messages = rewardbench.prompt_messages(record, _text)
    name = _text(record, "subset")
    subset = canonical_subset(name)
    chosen, rejected = _responses(record, "chosen"), _responses(record, "rejected")
    if subset == TIES:
        if not chosen:
            raise Hs2Error(f"{record.where('chosen')}: a Ties row needs at least 1 chosen response, got 0")
    elif len(chosen) != 1:
        raise Hs2Error(f"{record.where('chosen')}: expected exactly 1 chosen response, got {len(chosen)}")
    if not rejected:
        raise Hs2Error(f"{record.where('rejected')}: expected at least 1 rejected response, got 0")
    num_correct = record.data.get("num_correct")
    if num_correct is not None and num_correct != len(chosen):  # the reference splits the responses by it
        raise Hs2Error(f"{record.where('num_correct')}: {num_correct!r}, but the row has {len(chosen)} chosen "
                       "responses")
    row_id = record.data.get("id", record.row)
    if subset == TIES and not (isinstance(row_id, str) and TIES_ID.match(row_id.strip())):
        raise Hs2Error(f"{record.where('id')}: a Ties row needs an id 'ref:N' or 'tied:N' (a reference prompt and "
                       f"its tied twin), got {row_id!r}")
    return {"id": row_id, "subset": subset or name, "known": subset is not None, "messages": messages,
            "chosen": chosen, "rejected": rejected}


# ---------------------------------------------------------------------------------------------------------------
# Scores


def best_of_n(chosen: float, rejected: Sequence[float]) -> float:
    """1/k when the chosen response is among the k responses sharing the top score, else 0 (NaN anywhere: 0)."""
    scores = [chosen, *rejected]
    if any(math.isnan(s) for s in scores):
        return 0.0
    top = max(scores)
    return 1.0 / scores.count(top) if chosen == top else 0.0


def _prompt_stats(correct: Sequence[float], incorrect: Sequence[float]) -> tuple[bool, float | None, float]:
    """(accurate: every correct answer outscores every incorrect one, spread among the correct answers (None with
    one), gap = worst correct - best incorrect). NaN scores make the gap (and spread) NaN: comparisons then fail."""
    if any(math.isnan(s) for s in (*correct, *incorrect)):
        return False, (math.nan if len(correct) > 1 else None), math.nan
    gap = min(correct) - max(incorrect)
    return gap > 0, (max(correct) - min(correct) if len(correct) > 1 else None), gap


def _tanh_ratio(num: float, den: float) -> float:
    """tanh(num / den - 1) as numpy computes it in the reference: x/0 is +-inf (tanh +-1), 0/0 and NaN give 0."""
    if math.isnan(num) or math.isnan(den):
        return 0.0
    if den == 0:
        return 0.0 if num == 0 else math.copysign(1.0, num)
    return math.tanh(num / den - 1)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def ties_score(rows: Sequence[dict]) -> dict:
    """The Ties subset's score from per-example rows `{id: 'ref:N' | 'tied:N', scores_chosen, scores_rejected}`.

    As `process_single_model` in allenai/reward-bench `rewardbench/utils.py` (commit a0096928), read there and written
    here anew. Per prompt group (rows sharing an id are one group, as there): correct = the chosen scores, incorrect =
    the rejected ones; accurate = min(correct) > max(incorrect); gap = min(correct) - max(incorrect); spread =
    max(correct) - min(correct) (2+ correct answers). Over the N that have both a 'ref' and a 'tied' group:

        score = 0.30 * tied_accuracy + 0.30 * ref_accuracy            (mean of `accurate` over each kind's groups)
              + 0.20 * mean(gap_tied > spread_tied)                    (correctness_preferred)
              + 0.20 * mean(min(gap_ref, gap_tied) > spread_tied)      (correctness_preferred_hard)
              + 0.01 * mean(tanh(min(gap_ref, gap_tied) / spread_tied - 1))   (margin term)

    In the margin term x/0 is +-inf (tanh +-1) and 0/0 is NaN, counted 0, as numpy gives it there.
    A kind with no groups has accuracy 0, as there. Where that version has no answer (it gives NaN or fails), this
    keeps to its earlier one (`scripts/utils.py`, commit 19827cea): no ref/tied pairs make the margin terms 0, and a
    'tied' group with one correct answer (no spread) is left out of them; each is said in `notes`."""
    groups: dict[tuple[str, str], tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for row in rows:
        kind, prompt = TIES_ID.match(str(row["id"]).strip()).groups()
        prompt = str(int(prompt)) if prompt.strip().isdigit() else prompt.strip()  # the reference reads int(N)
        groups[kind, prompt][0].extend(row["scores_chosen"])
        groups[kind, prompt][1].extend(row["scores_rejected"])
    stats = {key: _prompt_stats(*value) for key, value in groups.items()}
    ref = {p: s for (kind, p), s in stats.items() if kind == "ref"}
    tied = {p: s for (kind, p), s in stats.items() if kind == "tied"}
    pairs = sorted(set(ref) & set(tied))
    with_spread = [p for p in pairs if tied[p][1] is not None]
    preferred = [tied[p][2] > tied[p][1] for p in with_spread]
    preferred_hard = [min(ref[p][2], tied[p][2]) > tied[p][1] for p in with_spread]
    margins = [_tanh_ratio(min(ref[p][2], tied[p][2]), tied[p][1]) for p in with_spread]
    parts = {
        "tied_accuracy": _mean([s[0] for s in tied.values()]),
        "ref_accuracy": _mean([s[0] for s in ref.values()]),
        "correctness_preferred": _mean(preferred),
        "correctness_preferred_hard": _mean(preferred_hard),
        "margin_score": _mean(margins),
    }
    score = (0.30 * parts["tied_accuracy"] + 0.30 * parts["ref_accuracy"] + 0.20 * parts["correctness_preferred"]
             + 0.20 * parts["correctness_preferred_hard"] + 0.01 * parts["margin_score"])
    notes = []
    if not ref or not tied:
        notes.append(f"Ties: no '{'ref' if not ref else 'tied'}' prompts: that accuracy counts 0")
    if not pairs:
        notes.append("Ties: no prompt has both a 'ref' and a 'tied' row: the margin terms count 0")
    if len(with_spread) < len(pairs):
        notes.append(f"Ties: {len(pairs) - len(with_spread)} 'tied' prompts have a single correct answer (no spread) "
                     "and are left out of the margin terms")
    return {"score": score, **parts, "ref_prompts": len(ref), "tied_prompts": len(tied), "paired_prompts": len(pairs),
            "notes": notes}


def subset_scores(per_example: Sequence[dict]) -> dict:
    """Leaderboard scores from per-example rows `{id, subset, scores_chosen, scores_rejected}`.

    Returns `subsets` (score per subset present), `subset_counts`, `overall` (the mean of the six subsets present;
    None if none), `ties` (the Ties terms, or None), `unknown_subsets` (name -> rows) and `notes`."""
    by_subset: dict[str, list[dict]] = defaultdict(list)
    for row in per_example:
        by_subset[row["subset"]].append(row)
    subsets: dict[str, float] = {}
    ties = None
    for name in [*SUBSETS, *sorted(set(by_subset) - set(SUBSETS))]:
        if name not in by_subset:
            continue
        if name == TIES:
            ties = ties_score(by_subset[name])
            subsets[name] = ties["score"]
        else:
            subsets[name] = _mean([best_of_n(r["scores_chosen"][0], r["scores_rejected"]) for r in by_subset[name]])
    known = [subsets[s] for s in SUBSETS if s in subsets]
    unknown = {s: len(by_subset[s]) for s in subsets if s not in SUBSETS}
    notes = list(ties["notes"]) if ties else []
    missing = [s for s in SUBSETS if s not in subsets]
    if missing and known:
        notes.append(f"overall is the mean of {len(known)} of {len(SUBSETS)} subsets "
                     f"(no data for: {', '.join(missing)})")
    elif not known:
        notes.append("no row belongs to a RewardBench 2 subset: overall is null")
    if unknown:
        notes.append(f"{sum(unknown.values())} rows in subsets outside RewardBench 2's six, scored best-of-n and left "
                     "out of the mean: " + ", ".join(f"{s} ({n})" for s, n in unknown.items()))
    return {
        "subsets": subsets,
        "subset_counts": {s: len(by_subset[s]) for s in subsets},
        "overall": _mean(known) if known else None,
        "ties": {k: v for k, v in ties.items() if k != "notes"} if ties else None,
        "unknown_subsets": unknown,
        "notes": notes,
    }


# ---------------------------------------------------------------------------------------------------------------
# Running a model


def evaluate(model_path: str, source: str | None = None, weights: str | None = None, output_dir: str | None = None,
             batch_size: int = 8, max_length: int | None = None, max_rows: int | None = None, dtype: str = "float32",
             device: str | None = None, device_map: str | None = None, per_subset: int | None = None,
             progress: bool = True) -> dict:
    """Score every response of RewardBench 2 with a reward model (the RewardBench scoring run: `rm.loading`, packed
    length-sorted batches); write results.json, per_example.jsonl and subsets.png to `output_dir` (when given)."""
    all_prompts = load_prompts(source)
    prompts = rewardbench.select_rows(all_prompts, per_subset, max_rows)
    conversations = [[*p["messages"], {"role": "assistant", "content": text}]
                     for p in prompts for text in (*p["chosen"], *p["rejected"])]
    run = rewardbench.score_conversations_with(model_path, conversations, weights, batch_size, max_length, dtype,
                                               device, device_map, progress)
    per_example, at = [], 0
    for p in prompts:
        n_chosen, n = len(p["chosen"]), len(p["chosen"]) + len(p["rejected"])
        scores = run.rewards[at : at + n]
        row = {"id": p["id"], "subset": p["subset"], "scores_chosen": scores[:n_chosen],
               "scores_rejected": scores[n_chosen:]}
        if p["subset"] == TIES:  # scored over the subset; per prompt, whether every correct answer is on top
            row["accurate"] = _prompt_stats(scores[:n_chosen], scores[n_chosen:])[0]
        else:
            row["score"] = best_of_n(scores[0], scores[1:])
        if run.weights is not None:  # the raw attribute predictions: other weightings can be scored from this file
            row["chosen_attributes"] = [run.attributes_of(i) for i in range(at, at + n_chosen)]
            row["rejected_attributes"] = [run.attributes_of(i) for i in range(at + n_chosen, at + n)]
        per_example.append(row)
        at += n
    results = subset_scores(per_example)
    top_ties = sum(1 for r in per_example if 0 < r.get("score", 0) < 1)
    results.update(run.fields(model_path, max_length))
    results.update({"benchmark": "rewardbench2", "dataset": source or f"{HUB_ID}[{HUB_SPLIT}]",
                    "rows": len(per_example), "dataset_rows": len(all_prompts), "conversations": len(conversations),
                    "top_ties": top_ties})
    notes = (rewardbench.partial_note(len(prompts), len(all_prompts), per_subset, max_rows),
             f"{top_ties} prompts had the chosen response tied at the top (scored 1/k)" if top_ties else None,
             run.truncation_note(max_length))
    results["notes"] += [n for n in notes if n]
    if output_dir:
        rewardbench.write_outputs(output_dir, results, per_example, plot=plot_subsets, chart=CHART)
    return results


def plot_subsets(results: dict, path: str | Path) -> None:
    """A bar chart of the six subsets and overall (in %; chance for best-of-4 = 25%)."""
    values = [results["subsets"].get(s) for s in SUBSETS] + [results["overall"]]
    rewardbench.plot_bars(path, [*SUBSETS, "Overall"], values, chance=0.25, chance_label="chance (best-of-4)",
                          ylabel="score (%)",
                          title=f"RewardBench 2: {Path(str(results.get('model', ''))).name} "
                                f"({results.get('weights_name')})")


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"RewardBench 2: {results.get('model')} (weights: {results.get('weights_name')})")
    table.add_column("subset")
    table.add_column("n", justify="right")
    table.add_column("score", justify="right")

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f}"

    for s in SUBSETS:
        if s in results["subsets"]:
            table.add_row(s, str(results["subset_counts"][s]), pct(results["subsets"][s]))
        else:
            table.add_row(s, "0", "n/a")
    for s in results["unknown_subsets"]:
        table.add_row(f"{s} (not in the mean)", str(results["subset_counts"][s]), pct(results["subsets"][s]))
    table.add_row("[bold]Overall[/bold]", str(results["rows"]), f"[bold]{pct(results['overall'])}[/bold]")
    console = Console()
    console.print(table)
    for note in results["notes"]:
        console.print(f"note: {note}")
