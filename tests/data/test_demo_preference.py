"""`demo:helpsteer2-preference`: the demo HelpSteer2 pairs in HelpSteer2-Preference's format, with strengths DERIVED
from the pair's helpfulness difference (clip(helpfulness_2 - helpfulness_1, -3, 3); negative: response 1 better), not
annotated. Checked against the demo HelpSteer2 rows themselves, through the real readers and the real CLI."""

from __future__ import annotations

import json

import pytest

from hs2trl.data.demo import DEMO_PREFERENCE_DATASET, SPLIT_SIZES
from hs2trl.data.preference import HELPSTEER2, preference_format, preference_pairs
from hs2trl.data.sources import read_records
from hs2trl.runtime.errors import Hs2Error
from tests.helpers.fixtures import run_hs2


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """Each test writes the demo files anew (a stale cached file would hide a change in how they are made)."""
    monkeypatch.setenv("HS2TRL_CACHE", str(tmp_path / "cache"))


def _expected(split: str) -> list[tuple[dict, dict, int]]:
    """(response 1 row, response 2 row, strength) from the demo HelpSteer2 rows: consecutive rows share a prompt."""
    rows = [r.data for r in read_records("demo:helpsteer2", split)]
    return [(a, b, max(-3, min(3, b["helpfulness"] - a["helpfulness"]))) for a, b in zip(rows[::2], rows[1::2])]


@pytest.mark.parametrize("split", list(SPLIT_SIZES))
def test_strength_is_the_clipped_helpfulness_difference(split):
    records = read_records(DEMO_PREFERENCE_DATASET, split)
    expected = _expected(split)
    assert preference_format(records) == HELPSTEER2 and len(records) == len(expected) == SPLIT_SIZES[split]
    for record, (first, second, strength) in zip(records, expected, strict=True):
        row = record.data
        assert first["prompt"] == second["prompt"] == row["prompt"]
        assert (row["response_1"], row["response_2"]) == (first["response"], second["response"])
        assert row["preference_strength"] == strength, record.where("preference_strength")
        assert (row["helpfulness_1"], row["helpfulness_2"]) == (first["helpfulness"], second["helpfulness"])
        assert "derived, not annotated" in row["preference_statement"]
    differences = [b["helpfulness"] - a["helpfulness"] for a, b, _ in expected]
    assert any(abs(d) > 3 for d in differences), "no pair needs clipping: the clip is untested"


def test_the_sign_convention_makes_the_more_helpful_response_chosen():
    pairs, _ = preference_pairs(read_records(DEMO_PREFERENCE_DATASET, "train"))
    non_ties = [(a, b, s) for a, b, s in _expected("train") if s != 0]
    assert len(pairs) == len(non_ties)
    for pair, (first, second, strength) in zip(pairs, non_ties, strict=True):
        better, worse = (second, first) if strength > 0 else (first, second)
        assert better["helpfulness"] > worse["helpfulness"]
        assert (pair.chosen, pair.rejected, pair.strength) == (better["response"], worse["response"], abs(strength))
    assert {p.strength for p in pairs} <= {1, 2, 3} and 3 in {p.strength for p in pairs}


@pytest.mark.parametrize("split", list(SPLIT_SIZES))
def test_ties_are_dropped_and_counted(split):
    ties = sum(a["helpfulness"] == b["helpfulness"] for a, b, _ in _expected(split))
    pairs, stats = preference_pairs(read_records(DEMO_PREFERENCE_DATASET, split))
    assert ties > 0, "the demo has no tie: counting them is untested"
    assert stats.ties_dropped == stats.strengths[0] == ties
    assert stats.pairs == len(pairs) == stats.rows - ties


def test_one_file_with_a_split_column_as_the_real_data():
    """Both splits in one file, told apart by `split` ('train' and 'val', as HelpSteer2-Preference writes them), with
    disjoint prompts; the rows keep their line numbers in that file."""
    train, validation = (read_records(DEMO_PREFERENCE_DATASET, s) for s in ("train", "validation"))
    assert {r.data["split"] for r in train} == {"train"} and {r.data["split"] for r in validation} == {"val"}
    assert not {r.data["prompt"] for r in train} & {r.data["prompt"] for r in validation}
    first_row = len(train) + 1
    assert validation[0].where("prompt") == f"{DEMO_PREFERENCE_DATASET}[validation]: row {first_row}: field 'prompt'"


@pytest.mark.parametrize("source, split, expect", [
    (DEMO_PREFERENCE_DATASET, "test", "no split 'test'"),
    ("demo:helpsteer9", "train", "demo:helpsteer2-preference"),  # the message lists the known names
])
def test_unknown_demo_split_or_name_is_one_line(source, split, expect):
    with pytest.raises(Hs2Error, match=expect) as err:
        read_records(source, split)
    assert "\n" not in str(err.value)


def test_data_stats_counts_the_ties():
    """The real CLI: `hs2 data stats --json` on the demo pairs counts the ties the helpfulness differences give."""
    ties = sum(s == 0 for _, _, s in _expected("validation"))
    proc = run_hs2("data", "stats", "--dataset", DEMO_PREFERENCE_DATASET, "--split", "validation", "--json")
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert stats["format"] == HELPSTEER2 and stats["rows"] == SPLIT_SIZES["validation"]
    assert stats["ties_dropped"] == stats["strengths"]["0"] == ties and stats["pairs"] == stats["rows"] - ties
