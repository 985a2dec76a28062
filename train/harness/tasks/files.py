"""The example tasks' data loaders: lm-eval's `custom_dataset` hook, reading the JSONL files
named in a task's `dataset_kwargs.data_files` from this folder, wherever the command runs, and
GLUE SST-2's TSV files from $SST2_DIR for `triptych_sst2`."""

from __future__ import annotations

import os
from pathlib import Path

from data.builders.files import read_records
from models.errors import UserError

HERE = Path(__file__).resolve().parent
# ../shared/data/sst2 beside the checkout, as configs/finetune_cls.py:local reads it
SST2_DEFAULT = HERE.parents[3] / "shared" / "data" / "sst2"


def load_json(data_files: dict[str, str], **unused):
    """{split: file} -> a `datasets.DatasetDict`, relative names read from this folder (the
    same as `dataset_path: json` with absolute `data_files`)."""
    import datasets

    del unused  # lm-eval passes the task's metadata too
    files = {split: str(HERE / name) for split, name in data_files.items()}
    return datasets.load_dataset("json", data_files=files)


def _sst2_rows(path: Path) -> dict[str, list]:
    """`sentence<TAB>label` rows under a header (the reader `finetune_cls.py:local` uses) ->
    {"sentence": [...], "label": [...]}."""
    rows = {"sentence": [], "label": []}
    for number, record in read_records(str(path), ("sentence", "label"), table_format="tsv"):
        if record["label"] not in ("0", "1"):
            raise UserError(f"{path}:{number}: label {record['label']!r} is not 0 or 1")
        rows["sentence"].append(record["sentence"].strip())
        rows["label"].append(int(record["label"]))
    return rows


def load_sst2(data_files: dict[str, str], **unused):
    """{split: file name} -> a `datasets.DatasetDict` of GLUE SST-2 (sentence, label) read
    from $SST2_DIR (default: ../shared/data/sst2 beside the checkout)."""
    import datasets

    del unused
    root = Path(os.environ.get("SST2_DIR") or SST2_DEFAULT)
    missing = [name for name in data_files.values() if not (root / name).is_file()]
    if missing:
        raise UserError(
            f"triptych_sst2: {', '.join(missing)} not found in {root}; set SST2_DIR to a folder "
            "with GLUE SST-2's train.tsv and dev.tsv"
        )
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(_sst2_rows(root / name))
            for split, name in data_files.items()
        }
    )
