"""Dataset statistics in the shape of the HelpSteer2 paper's Table 2, for any HelpSteer-format data.

Per variable: mean and sample standard deviation (ddof=1), and the Pearson r with helpfulness. Variables: the five
attributes, the number of turns (user turns in the prompt: 1 for a single-turn prompt), the prompt's length in
characters (the prompt string as stored, HelpSteer2's `<extra_id_1>` markers included; for a message-list prompt,
the sum of its contents) and the response's length in characters. A missing (null) score leaves that row out of the
statistics that involve it (pairwise), and the counts are reported.

Preference data (HelpSteer2-/HelpSteer3-Preference, chosen/rejected rows) gets its own statistics instead: the
histogram of the signed preference strengths (-3..3) and the rows, pairs and ties it makes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hs2trl.data.helpsteer2 import attribute_scores, conversation
from hs2trl.data.preference import MAX_STRENGTH, preference_format, preference_pairs
from hs2trl.data.records import Record
from hs2trl.rm.attributes import ATTRIBUTES
from hs2trl.runtime.errors import Hs2Error

FEATURES = ("turns", "prompt_chars", "response_chars")
TARGET = "helpfulness"


def row_features(record: Record) -> dict[str, float]:
    messages = conversation(record)  # validates the row
    prompt_messages = messages[:-1]
    prompt = record.data.get("prompt")
    prompt_chars = len(prompt) if isinstance(prompt, str) else sum(len(m["content"]) for m in prompt_messages)
    return {
        "turns": float(sum(1 for m in prompt_messages if m["role"] == "user")),
        "prompt_chars": float(prompt_chars),
        "response_chars": float(len(messages[-1]["content"])),
    }


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    from scipy.stats import pearsonr

    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None  # undefined for a constant variable
    return float(pearsonr(x, y).statistic)


def dataset_stats(records: Sequence[Record], attributes: Sequence[str] = ATTRIBUTES) -> dict:
    """Table 2 for `records`: `mean`, `std`, `count`, `pearson_with_helpfulness` (name -> value, None when undefined)
    and the full `correlation` matrix (`names`, `matrix`) for the heat-map."""
    if not records:
        raise Hs2Error("dataset is empty")
    if TARGET not in attributes:
        raise Hs2Error(f"statistics need the '{TARGET}' attribute (got {', '.join(attributes)})")
    names = [*attributes, *FEATURES]
    table = np.full((len(records), len(names)), np.nan)
    for i, record in enumerate(records):
        scores = attribute_scores(record, attributes)
        feats = row_features(record)
        table[i] = [math.nan if s is None else s for s in scores] + [feats[f] for f in FEATURES]
    columns = {name: table[:, j] for j, name in enumerate(names)}
    count = {n: int((~np.isnan(c)).sum()) for n, c in columns.items()}
    mean = {n: float(np.nanmean(c)) if count[n] else None for n, c in columns.items()}
    std = {n: float(np.nanstd(c, ddof=1)) if count[n] > 1 else None for n, c in columns.items()}
    matrix = [[_pearson(columns[a], columns[b]) for b in names] for a in names]  # diagonal: 1, or None if constant
    target = names.index(TARGET)
    return {
        "rows": len(records),
        "count": count,
        "mean": mean,
        "std": std,
        "pearson_with_helpfulness": {n: matrix[target][j] for j, n in enumerate(names)},
        "correlation": {"names": names, "matrix": matrix},
    }


def plot_heatmap(stats: dict, path: str | Path, title: str | None = None) -> str:
    """The Pearson correlation matrix as an annotated heat-map PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = stats["correlation"]["names"]
    matrix = np.array([[np.nan if v is None else v for v in row] for row in stats["correlation"]["matrix"]])
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), labels=names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), labels=names)
    for i in range(len(names)):
        for j in range(len(names)):
            v = matrix[i, j]
            ax.text(j, i, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if not np.isnan(v) and abs(v) > 0.6 else "black")
    fig.colorbar(image, ax=ax, label="Pearson r")
    ax.set_title(title or f"Pearson correlations ({stats['rows']} rows)", fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def print_stats(stats: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(v, digits=3):
        return "n/a" if v is None else f"{v:.{digits}f}"

    table = Table(title=title)
    table.add_column("variable")
    table.add_column("mean (std)", justify="right")
    table.add_column(f"Pearson r with {TARGET}", justify="right")
    for name in stats["correlation"]["names"]:
        digits = 1 if name.endswith("_chars") else 2
        table.add_row(name, f"{fmt(stats['mean'][name], digits)} ({fmt(stats['std'][name], digits)})",
                      fmt(stats["pearson_with_helpfulness"][name]))
    Console().print(table)
    missing = {n: stats["rows"] - c for n, c in stats["count"].items() if c < stats["rows"]}
    if missing:
        Console().print("rows without a score (left out pairwise): "
                        + ", ".join(f"{n} {m}" for n, m in missing.items()))


def preference_stats(records: Sequence[Record]) -> dict:
    """Preference rows: `format`, `rows`, `pairs`, `ties_dropped`, the signed `strengths` histogram (every strength
    from -3 to 3 listed, 0 rows included) and the pairs' `mean_strength` (None without pairs)."""
    pairs, counts = preference_pairs(records)
    strengths = dict.fromkeys(range(-MAX_STRENGTH, MAX_STRENGTH + 1), 0) | counts.strengths
    return {
        "format": preference_format(records),
        "rows": counts.rows,
        "pairs": counts.pairs,
        "ties_dropped": counts.ties_dropped,
        "strengths": dict(sorted(strengths.items())),
        "mean_strength": float(np.mean([p.strength for p in pairs])) if pairs else None,
    }


def print_preference_stats(stats: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    signed = stats["format"] != "chosen-rejected"
    table = Table(title=title)
    table.add_column("strength", justify="right")
    table.add_column("meaning" if signed else "margin (rounded up)")
    table.add_column("rows", justify="right")
    table.add_column("share", justify="right")
    for strength, n in stats["strengths"].items():
        if not signed:
            meaning = ""
        elif strength == 0:
            meaning = "about the same (dropped)"
        else:  # the dataset cards' words
            degree = {1: "slightly better", 2: "better", 3: "much better"}.get(abs(strength), "better")
            meaning = f"response {1 if strength < 0 else 2} {degree}"
        table.add_row(f"{strength:+d}" if strength else "0", meaning, str(n), f"{n / stats['rows']:.1%}")
    Console().print(table)
    mean = "n/a" if stats["mean_strength"] is None else f"{stats['mean_strength']:.2f}"
    Console().print(f"{stats['rows']} rows ({stats['format']}): {stats['pairs']} pairs, {stats['ties_dropped']} ties "
                    f"dropped; mean |strength| of the pairs {mean}")
