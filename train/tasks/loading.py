"""`load`: any model reference (train/reference.py) as a `LoadedModel` on the default device."""

from __future__ import annotations

from pathlib import Path

import jax
import ml_collections

import models
from data.tokenizers import Tokenizer, load_tokenizer
from models.jsonfile import read_json
from train.checkpoint import CheckpointError
from train.reference import WORKDIR, Reference, resolve
from train.tasks.inference import LoadedModel


def _hf_label_names(directory: Path) -> list[str] | None:
    config = read_json(directory / "config.json", error=CheckpointError)
    id2label = config.get("id2label") or {}
    names = [id2label[k] for k in sorted(id2label, key=int)] if id2label else None
    return names if names and not all(n == f"LABEL_{i}" for i, n in enumerate(names)) else None


def tokenizer_of(ref: Reference) -> Tokenizer:
    """The checkpoint's own tokenizer; CheckpointError where it has none."""
    folder = ref.tokenizer
    if folder is None:
        raise CheckpointError(
            f"{ref.path} has no tokenizer (tokenizer.json, vocab.txt or spiece.model, or a "
            "tokenizer/ folder); copy the tokenizer files of the checkpoint there"
        )
    return load_tokenizer(folder)


def load(
    directory: str | Path, step: int | str | None = None, dtype: str | None = None
) -> LoadedModel:
    """Loads a training workdir (the latest step, `step`, or 'best'), a `python -m models
    convert` directory, a PEFT adapter or a Hugging Face directory (train/reference.py), for
    inference on the default device.

    `dtype` is the compute dtype to run at; None keeps the checkpoint's own (a mixed-precision
    run's bfloat16, so that `train.evaluate` reproduces the loop's eval). "float32" computes as
    the exported Hugging Face or PEFT model does, on the same float32 parameters.

    Raises:
      CheckpointError: the directory holds none of these, or the step does not exist.
    """
    ref = resolve(directory, "--workdir", step=step)
    run_config = labels = tags = None
    model_config, params = ref.load()
    if ref.kind == WORKDIR:
        run_config = ml_collections.ConfigDict(ref.saved["run"])
        labels, tags = ref.saved.get("label_names"), ref.saved.get("tag_names")
    elif (ref.path / "config.json").exists():
        names = _hf_label_names(ref.path)
        labels = names if model_config.head == "classification" else None
        tags = names if model_config.head == "token_classification" else None
    if dtype is not None:
        model_config = model_config.replace(dtype=dtype)
    return LoadedModel(
        model_config=model_config,
        model=models.build(model_config),
        params=jax.device_put(params),
        tokenizer=tokenizer_of(ref),
        run_config=run_config,
        label_names=labels,
        tag_names=tags,
        source=ref.where,
    )
