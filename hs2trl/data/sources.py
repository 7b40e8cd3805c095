"""What a dataset name means: `demo:helpsteer2` or `demo:helpsteer2-preference` (written by hs2trl, see
`data.demo`), a local file, a Hugging Face Hub dataset id, or `ID:DIR`, one data directory of a Hub dataset
(`nvidia/HelpSteer2:preference` is HelpSteer2-Preference, which the dataset card loads as
`load_dataset("nvidia/HelpSteer2", data_dir="preference")`).

Rows that carry a `split` column are the rows of the split asked for, wherever they come from: HelpSteer2-Preference
keeps its train and validation rows in one file, told apart by that column ('val' and 'validation' are one split)."""

from __future__ import annotations

from typing import Any

from hs2trl.data.records import Record, is_local, read_file, read_hub
from hs2trl.runtime.errors import Hs2Error, first_line

SPLIT_COLUMN = "split"
_SAME_SPLIT = {"val": "validation"}


def read_records(source: str, split: str = "train") -> list[Record]:
    """The rows of `split` in `source`: a `demo:` name, a local file (by suffix), a Hub dataset id, or a Hub data
    directory `ID:DIR`."""
    if source.startswith("demo:"):
        from hs2trl.data.demo import demo_source_file

        rows = [Record(f"{source}[{split}]", r.row, r.data) for r in read_file(demo_source_file(source, split))]
        return rows_of_split(rows, split)  # the preference file holds both splits
    if is_local(source):
        return rows_of_split(read_file(source), split)
    path, kwargs = hub_load_args(source, split)
    if "data_dir" not in kwargs:
        return rows_of_split(read_hub(source, split), split)
    return rows_of_split(_read_hub_dir(source, path, kwargs, split), split)


def hub_load_args(source: str, split: str) -> tuple[str, dict[str, Any]]:
    """`datasets.load_dataset` arguments for a Hub name: `ID` -> (ID, {split}); `ID:DIR` -> (ID, {data_dir: DIR}),
    every split of the directory (HelpSteer2-Preference's one file is the Hub's 'train' split, whatever its rows say;
    `hub_split` picks one)."""
    dataset_id, sep, data_dir = source.partition(":")  # Hub ids never hold ':'
    if not sep:
        return source, {"split": split}
    if not dataset_id or not data_dir:
        raise Hs2Error(f"{source}: expected a Hub dataset id with a data directory, as nvidia/HelpSteer2:preference")
    return dataset_id, {"data_dir": data_dir}


def hub_split(dataset_dict, split: str, source: str) -> str:
    """Which of a loaded data directory's splits holds `split`: the split of that name, else its only split when the
    rows carry a `split` column to filter on."""
    if split in dataset_dict:
        return split
    names = list(dataset_dict)
    if len(names) == 1 and SPLIT_COLUMN in dataset_dict[names[0]].column_names:
        return names[0]
    raise Hs2Error(f"{source}: no split '{split}' (it has: {', '.join(names)}; its rows have no '{SPLIT_COLUMN}' "
                   "column to choose by)")


def _read_hub_dir(source: str, path: str, kwargs: dict[str, Any], split: str) -> list[Record]:
    import datasets

    try:
        dataset_dict = datasets.load_dataset(path, **kwargs)
    except Exception as err:  # offline, unknown id or directory: all user-facing
        raise Hs2Error(f"{source}: cannot load from the Hugging Face Hub ({first_line(err)})") from None
    name = hub_split(dataset_dict, split, source)
    return [Record(f"{source}[{name}]", i, row) for i, row in enumerate(dataset_dict[name], start=1)]


def same_split(value: Any, split: str) -> bool:
    return isinstance(value, str) and _SAME_SPLIT.get(value, value) == _SAME_SPLIT.get(split, split)


def rows_of_split(records: list[Record], split: str) -> list[Record]:
    """`records` as they are, or, when they carry a `split` column, the rows whose `split` is `split` (their row
    numbers kept, so errors still name the row of the file)."""
    if not records or SPLIT_COLUMN not in records[0].data:
        return records
    kept = []
    for r in records:
        if SPLIT_COLUMN not in r.data:
            raise Hs2Error(f"{r.where(SPLIT_COLUMN)}: missing column (the first row has one: every row needs it)")
        if same_split(r.data[SPLIT_COLUMN], split):
            kept.append(r)
    if not kept:
        found = sorted({str(r.data[SPLIT_COLUMN]) for r in records})
        raise Hs2Error(f"{records[0].source}: no rows of split '{split}' in column '{SPLIT_COLUMN}' "
                       f"(found: {', '.join(found)}); choose one with --split")
    return kept
