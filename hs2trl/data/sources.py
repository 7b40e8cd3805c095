"""What a dataset name means: `demo:helpsteer2` (written by hs2trl), a local file, or a Hugging Face Hub dataset id."""

from __future__ import annotations

from hs2trl.data.records import Record, is_local, read_file, read_hub
from hs2trl.runtime.errors import Hs2Error


def read_records(source: str, split: str = "train") -> list[Record]:
    """All rows of `source`: `demo:helpsteer2`, a local file (by suffix), or a Hub dataset id (with `split`)."""
    if source.startswith("demo:"):
        from hs2trl.data.demo import DEMO_DATASET, demo_dataset_file

        if source != DEMO_DATASET:
            raise Hs2Error(f"{source}: unknown demo dataset (known: {DEMO_DATASET})")
        return [Record(f"{source}[{split}]", r.row, r.data) for r in read_file(str(demo_dataset_file(split)))]
    if is_local(source):
        return read_file(source)
    return read_hub(source, split)
