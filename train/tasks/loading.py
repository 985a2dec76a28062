"""`load`: a training workdir, a converted directory or a Hugging Face directory, as a
`LoadedModel` on the default device."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_collections

import models
from data.tokenizers import Tokenizer, find_tokenizer, load_tokenizer
from models import hub, paths
from train import lora
from train.checkpoint import (
    WORKDIR,
    Checkpointer,
    CheckpointError,
    directory_kind,
    workdir_params,
)
from train.tasks.inference import LoadedModel


def _hf_label_names(directory: Path) -> list[str] | None:
    config = json.loads((directory / "config.json").read_text())
    id2label = config.get("id2label") or {}
    names = [id2label[k] for k in sorted(id2label, key=int)] if id2label else None
    return names if names and not all(n == f"LABEL_{i}" for i, n in enumerate(names)) else None


def _directory_tokenizer(directory: Path) -> Tokenizer:
    folder = find_tokenizer(str(directory))
    if folder is None:
        raise CheckpointError(
            f"{directory} has no tokenizer (tokenizer.json, vocab.txt or spiece.model, or a "
            "tokenizer/ folder); copy the tokenizer files of the checkpoint there"
        )
    return load_tokenizer(folder)


def load(
    directory: str | Path, step: int | str | None = None, dtype: str | None = None
) -> LoadedModel:
    """Loads a training workdir (the latest step, `step`, or 'best'), a `python -m models
    convert` directory or a Hugging Face directory, for inference on the default device.

    `dtype` is the compute dtype to run at; None keeps the checkpoint's own (a mixed-precision
    run's bfloat16, so that `train.evaluate` reproduces the loop's eval). "float32" computes as
    the exported Hugging Face or PEFT model does, on the same float32 parameters.

    Raises:
      CheckpointError: the directory holds none of these, or the step does not exist.
    """
    source = directory  # a Hub id stays the model's name
    directory = paths.resolve(hub.resolve(directory, "--workdir"))
    run_config = labels = tags = None
    if directory_kind(directory) == WORKDIR:
        saved = json.loads((directory / "config.json").read_text())
        run = saved.get("run", {})
        ckpt = Checkpointer(
            directory / "checkpoints", best_metric=run.get("best_metric") or None, async_save=False
        )
        try:
            chosen = _pick_step(ckpt, step, directory)
            saved = ckpt.saved_config(chosen) or saved
        finally:
            ckpt.close()
        resolved, params = lora.with_base(  # LoRA: the adapters folded into init_from's base
            saved["resolved_model"], workdir_params(directory, chosen), saved["run"]
        )
        model_config = models.ModelConfig.from_dict(resolved)
        run_config = ml_collections.ConfigDict(saved["run"])
        labels, tags = saved.get("label_names"), saved.get("tag_names")
        where = f"{directory} (step {chosen})"
    else:
        from train.init_from import load_pretrained

        if step is not None:
            raise CheckpointError(f"{directory} is not a training workdir; it has no steps")
        model_config, params = load_pretrained(source)
        if (directory / "config.json").exists():
            names = _hf_label_names(directory)
            labels = names if model_config.head == "classification" else None
            tags = names if model_config.head == "token_classification" else None
        where = str(source) if hub.hub_id(source) else str(directory)
    if dtype is not None:
        model_config = model_config.replace(dtype=dtype)
    return LoadedModel(
        model_config=model_config,
        model=models.build(model_config),
        params=jax.device_put(params),
        tokenizer=_directory_tokenizer(directory),
        run_config=run_config,
        label_names=labels,
        tag_names=tags,
        source=where,
    )


def _pick_step(ckpt: Checkpointer, step, directory: Path) -> int:
    steps = ckpt.all_steps()
    if not steps:
        raise CheckpointError(f"{directory / 'checkpoints'} holds no complete checkpoint")
    if step is None or step == "latest":
        return max(steps)
    if step == "best":
        best = ckpt.best_step()
        if best is None:
            raise CheckpointError(
                f"{directory}: no checkpoint has the best_metric {ckpt.best_metric!r}; "
                "use --step latest or a step number"
            )
        return best
    if int(step) not in steps:
        raise CheckpointError(
            f"{directory}: no checkpoint at step {step}; have {', '.join(map(str, steps))}"
        )
    return int(step)
