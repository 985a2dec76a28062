"""Starting a run from pretrained weights (`config.init_from`): ours or Hugging Face's.

`init_from` names a Triptych checkpoint directory (`python -m models convert --to`), a training
workdir (its latest checkpoint) or a Hugging Face model directory, local or on a bucket
(`gs://`), or a Hugging Face Hub id (`org/name[@revision]`); one module, train/reference.py,
reads them all. The run's model is the checkpoint's architecture with the run's `model` fields
applied on top (typically a new `head` and `num_labels`); parameters present in both with the
same shape are copied, and the rest (a new task head) keep their fresh initialisation.
"""

from __future__ import annotations

import logging
import math

import jax
import numpy as np

import models
from models.config import ModelConfig
from train import lora, reference
from train.checkpoint import CheckpointError

log = logging.getLogger(__name__)


def load_pretrained(name: str) -> tuple[ModelConfig, dict]:
    """(config, params as numpy) of the model `init_from` names (train/reference.py)."""
    kinds = (reference.WORKDIR, reference.CONVERTED, reference.HUGGING_FACE)
    return reference.resolve(name, "init_from", kinds=kinds).load()


def merge_params(fresh, pretrained, source: str):
    """`fresh` with every parameter that `pretrained` has (same path) copied in, placed with the
    fresh array's sharding. Raises on a shape mismatch; logs what stayed fresh."""
    loaded = lora.flat(pretrained)
    copied, kept = [], []

    def pick(path, leaf):
        name = "/".join(str(k.key) for k in path)
        if name not in loaded:
            kept.append(name)
            return leaf
        value = np.asarray(loaded[name])
        if value.shape != leaf.shape:
            raise CheckpointError(
                f"init_from {source}: parameter {name} has shape {value.shape} but the model "
                f"needs {leaf.shape}; the checkpoint is another architecture"
            )
        copied.append(name)
        return jax.make_array_from_callback(
            leaf.shape, leaf.sharding, lambda idx: value[idx].astype(leaf.dtype)
        )

    merged = jax.tree_util.tree_map_with_path(pick, fresh)
    if not copied:
        raise CheckpointError(f"init_from {source}: no parameter of the checkpoint fits the model")
    log.info(
        "initialised %d of %d tensors from %s; fresh: %s",
        len(copied),
        len(copied) + len(kept),
        source,
        ", ".join(kept) or "none",
    )
    return merged


def resolve_model_config(section, tokenizer, pretrained=None) -> models.ModelConfig:
    """The named architecture (or the pretrained checkpoint's) with the section's fields set;
    a trained tokenizer sets the vocabulary size unless the section or checkpoint does."""
    fields = {k: v for k, v in section.items() if k != "name" and v is not None}
    if pretrained is not None:
        return pretrained.replace(**fields)
    if "vocab_size" not in fields:
        fields["vocab_size"] = int(math.ceil(tokenizer.vocab_size / 64) * 64)
    return models.get_config(section.name, **fields)
