"""The Table-4-style report: `results.json`, `table.md`, a bar chart, and the table printed in the terminal.

Cells follow the paper's Table 4: MT Bench to two decimals, mean response length in characters to one, TruthfulQA
MC2 to four, AlpacaEval 2.0 LC as `LC (SE)`, Arena Hard as `score (-low, +high)` (the 95% interval as offsets).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from hs2trl.data.records import json_safe

# (benchmark, field) -> column title; only the columns of benchmarks that were run are shown.
COLUMNS = [
    ("mt-bench", "score", "MT Bench"),
    ("mt-bench", "mean_response_chars", "Mean Response Length (chars)"),
    ("truthfulqa-mc2", "score", "TruthfulQA MC2"),
    ("alpacaeval", "score", "AlpacaEval 2.0 LC (SE)"),
    ("arena-hard", "score", "Arena Hard (95% CI)"),
    ("reward", "score", "Reward (SE)"),
    ("reward", "win_rate", "Win rate vs reference (95% CI)"),
    ("reward", "mean_response_chars", "Reward answers' length (chars)"),
]


def _num(value, digits: int) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def cell(benchmark: str, field: str, entry: dict | None) -> str:
    """The text of one table cell ('-' when the figure is missing, with the reason in results.json)."""
    if not entry:
        return "-"
    if field == "win_rate":
        win = entry.get("vs_reference")
        if not win:
            return "-"
        ci = win["interval"]
        return f"{_num(win['win_rate'], 2)} ({_num(ci['low'], 2)}, {_num(ci['high'], 2)})"
    value = entry.get(field)
    if field == "mean_response_chars":
        return _num(value, 1)
    if value is None:
        return "-"
    interval = entry.get("interval") or {}
    if benchmark == "mt-bench":
        return _num(value, 2)
    if benchmark == "truthfulqa-mc2":
        return _num(value, 4)
    if benchmark == "arena-hard":
        if interval.get("kind") == "ci95":
            return f"{_num(value, 1)} ({_num(interval['low'] - value, 1)}, {_num(interval['high'] - value, 1)})"
        return _num(value, 1)
    text = _num(value, 2) + (f" ({_num(interval.get('value'), 2)})" if interval.get("kind") == "se" else "")
    if benchmark == "alpacaeval" and entry.get("metric") == "win_rate":
        text += " WR*"
    return text


def table_rows(results: dict) -> tuple[list[str], list[list[str]], list[str]]:
    """(header, rows, footnotes) of the table over every model and the benchmarks that were run."""
    ran = {b for m in results["models"].values() for b in m["benchmarks"]}
    columns = [c for c in COLUMNS if c[0] in ran and (c[1] != "win_rate" or _any_reference(results))]
    header = ["Model", *[c[2] for c in columns]]
    rows = []
    for name, model in results["models"].items():
        rows.append([name, *[cell(b, f, model["benchmarks"].get(b)) for b, f, _ in columns]])
    notes = []
    if any(m["benchmarks"].get("alpacaeval", {}).get("metric") == "win_rate" for m in results["models"].values()):
        notes.append("WR*: plain AlpacaEval 2.0 win rate (SE); the length-controlled one was out of reach "
                     "(see results.json)")
    weights = {m["benchmarks"]["reward"].get("weights") for m in results["models"].values()
               if "reward" in m["benchmarks"]}
    if weights:
        notes.append(f"Reward: mean {', '.join(sorted(w for w in weights if w))} reward of the RM over the prompts")
    skipped = {b: e["skipped"] for m in results["models"].values() for b, e in m["benchmarks"].items()
               if e.get("skipped")}
    notes += [f"{bench}: {why}" for bench, why in skipped.items()]
    return header, rows, notes


def _any_reference(results: dict) -> bool:
    return any(m["benchmarks"].get("reward", {}).get("vs_reference") for m in results["models"].values())


def markdown(results: dict) -> str:
    header, rows, notes = table_rows(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


def write(output_dir: str | Path, results: dict) -> dict[str, str]:
    """results.json, table.md and figures.png in output_dir; returns their paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"results": out / "results.json", "table": out / "table.md", "chart": out / "figures.png"}
    paths["results"].write_text(json.dumps(json_safe(results), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["table"].write_text(markdown(results), encoding="utf-8")
    plot(results, paths["chart"])
    return {k: str(v) for k, v in paths.items()}


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    header, rows, notes = table_rows(results)
    table = Table(title="Aligned-model evaluation (HelpSteer2 paper, Table 4)")
    for i, title in enumerate(header):
        table.add_column(title, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    console = Console()
    console.print(table)
    for note in notes:
        console.print(f"  {note}", markup=False, highlight=False)


def plot(results: dict, path: str | Path) -> None:
    """One panel per figure, one bar per model, error bars from the SE or the 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for bench, field, title in COLUMNS:
        bars = []  # (model, value, (low, high) error) for the models that have this figure
        for name, model in results["models"].items():
            entry = model["benchmarks"].get(bench) or {}
            if field == "win_rate":
                entry = entry.get("vs_reference") or {}
            value = entry.get("win_rate" if field == "win_rate" else field)
            if value is not None:
                interval = entry.get("interval") if field != "mean_response_chars" else None
                bars.append((name, value, _error_bar(value, interval)))
        if bars:
            panels.append((title, bars))
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4.0, 3.2 * len(panels)), 3.6), squeeze=False)
    for ax, (title, bars) in zip(axes[0], panels):
        names = [b[0] for b in bars]
        ax.bar(range(len(bars)), [b[1] for b in bars], yerr=[[b[2][0] for b in bars], [b[2][1] for b in bars]],
               capsize=3, color="#4c72b0")
        ax.set_xticks(range(len(bars)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _error_bar(value, interval) -> tuple[float, float]:
    if value is None or not interval:
        return 0.0, 0.0
    if interval.get("kind") == "se" and interval.get("value") is not None:
        return interval["value"], interval["value"]
    if interval.get("kind") == "ci95":
        return max(0.0, value - interval["low"]), max(0.0, interval["high"] - value)
    return 0.0, 0.0


