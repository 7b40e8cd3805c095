"""`hs2 data stats`: Table 2 (mean, std, Pearson r with helpfulness) on hand-made rows with known answers, the CLI's
JSON and heat-map, and the real HelpSteer2 sample when ../shared/data is present."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hs2trl.data.records import Record
from hs2trl.runtime.errors import Hs2Error
from tests.helpers.fixtures import SHARED_DATA, run_hs2, write_jsonl


def hand_made_rows() -> list[dict]:
    helpfulness = [0, 1, 2, 3, 4, 4, 2, 1]
    coherence = [1, 1, 2, 4, 3, 4, 2, 0]
    rows = []
    for i, h in enumerate(helpfulness):
        prompt = "Q" * (10 + i)
        if i % 4 == 0:  # two user turns
            prompt = "Hi\n<extra_id_1>Assistant\nHello\n<extra_id_1>User\n" + prompt
        rows.append({"prompt": prompt, "response": "R" * (5 * h + 3), "helpfulness": h, "correctness": h,
                     "coherence": coherence[i], "complexity": 2, "verbosity": 4 - h})
    return rows


def test_table2_on_hand_made_rows():
    from hs2trl.rm.stats import dataset_stats

    rows = hand_made_rows()
    stats = dataset_stats([Record("x", i, r) for i, r in enumerate(rows, start=1)])
    r = stats["pearson_with_helpfulness"]
    h = np.array([row["helpfulness"] for row in rows], dtype=float)
    assert r["helpfulness"] == pytest.approx(1.0)
    assert r["correctness"] == pytest.approx(1.0)      # identical to helpfulness
    assert r["verbosity"] == pytest.approx(-1.0)       # 4 - helpfulness
    assert r["response_chars"] == pytest.approx(1.0)   # 5 h + 3 characters
    assert r["complexity"] is None                     # constant: undefined, not 0 or NaN
    assert r["coherence"] == pytest.approx(np.corrcoef(h, [1, 1, 2, 4, 3, 4, 2, 0])[0, 1])
    turns = [2, 1, 1, 1, 2, 1, 1, 1]
    assert r["turns"] == pytest.approx(np.corrcoef(h, turns)[0, 1])
    assert stats["mean"]["turns"] == pytest.approx(np.mean(turns))
    assert stats["mean"]["helpfulness"] == pytest.approx(h.mean())
    assert stats["std"]["helpfulness"] == pytest.approx(h.std(ddof=1))
    assert stats["mean"]["prompt_chars"] == pytest.approx(np.mean([len(row["prompt"]) for row in rows]))
    assert stats["correlation"]["names"][:5] == ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]


def test_missing_scores_are_left_out_pairwise_and_counted():
    from hs2trl.rm.stats import dataset_stats

    rows = hand_made_rows()
    rows[0]["coherence"] = None
    stats = dataset_stats([Record("x", i, r) for i, r in enumerate(rows, start=1)])
    assert stats["count"]["coherence"] == 7 and stats["count"]["helpfulness"] == 8
    h = [row["helpfulness"] for row in rows[1:]]
    assert stats["pearson_with_helpfulness"]["coherence"] == pytest.approx(
        np.corrcoef(h, [row["coherence"] for row in rows[1:]])[0, 1])
    rows[2]["helpfulness"] = 7
    with pytest.raises(Hs2Error, match=r"x: row 3: field 'helpfulness': score 7 is outside 0-4"):
        dataset_stats([Record("x", i, r) for i, r in enumerate(rows, start=1)])


@pytest.mark.slow
def test_data_stats_cli_json_and_heatmap(tmp_path):
    data = write_jsonl(tmp_path / "hs.jsonl", hand_made_rows())
    plot = tmp_path / "plots" / "heat.png"
    proc = run_hs2("data", "stats", "--dataset", data, "--json", "--plot", str(plot))
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = json.loads(proc.stdout)  # stdout is only the JSON object
    assert stats["pearson_with_helpfulness"]["correctness"] == pytest.approx(1.0)
    assert set(stats["mean"]) >= {"helpfulness", "correctness", "coherence", "complexity", "verbosity"}
    assert set(stats["std"]) >= set(stats["mean"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = run_hs2("data", "stats", "--dataset", data, "--no-plot")
    assert table.returncode == 0 and "Pearson r with helpfulness" in table.stdout and "response_chars" in table.stdout


@pytest.mark.shared_data
def test_helpsteer2_sample_correctness_tracks_helpfulness():
    from hs2trl.data.sources import read_records
    from hs2trl.rm.stats import dataset_stats

    path = SHARED_DATA / "helpsteer2_sample100.jsonl"
    if not path.is_file():
        pytest.skip("../shared/data is absent")
    stats = dataset_stats(read_records(str(path)))
    r = stats["pearson_with_helpfulness"]
    assert stats["rows"] == 100
    assert r["correctness"] > 0.85  # paper, full train split: 0.943
    assert 0.2 < r["coherence"] < 0.8  # paper: 0.498
    assert abs(r["verbosity"]) < 0.4  # paper: 0.060
