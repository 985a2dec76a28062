"""The example tasks' data loader: lm-eval's `custom_dataset` hook, reading the JSONL files
named in a task's `dataset_kwargs.data_files` from this folder, wherever the command runs."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def load_json(data_files: dict[str, str], **unused):
    """{split: file} -> a `datasets.DatasetDict`, relative names read from this folder (the
    same as `dataset_path: json` with absolute `data_files`)."""
    import datasets

    del unused  # lm-eval passes the task's metadata too
    files = {split: str(HERE / name) for split, name in data_files.items()}
    return datasets.load_dataset("json", data_files=files)
