"""Starting a run from pretrained weights (`config.init_from`): ours or Hugging Face's.

`init_from` names a Triptych checkpoint directory (`python -m models convert --to`), a training
workdir (its latest checkpoint) or a Hugging Face model directory, local or on a bucket
(`gs://`, through models/paths.py), or a Hugging Face Hub id (`org/name[@revision]`, through
models/hub.py and the standard Hugging Face cache). The run's model is the
checkpoint's architecture with the run's `model` fields applied on top (typically a new `head`
and `num_labels`); parameters present in both with the same shape are copied, and the rest (a new
task head) keep their fresh initialisation.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import numpy as np

from models import hub, paths
from models.config import ModelConfig
from train import lora
from train.checkpoint import HUGGING_FACE, CheckpointError, directory_kind, load_params

log = logging.getLogger(__name__)


def load_pretrained(path: str | Path) -> tuple[ModelConfig, dict]:
    """(config, params as numpy) from any of the three kinds of directory, or a Hub id."""
    hid = hub.hub_id(path)
    path = paths.resolve(hub.resolve(path, "init_from"))
    if not path.is_dir():
        raise CheckpointError(f"init_from={str(path)!r}: no such directory")
    if directory_kind(path) == HUGGING_FACE:
        from models import hf

        named = {"name": hid.name} if hid else {}  # not the snapshot's commit hash
        with paths.local_copy(path, files_only=True) as local:  # safetensors reads local files
            return hf.load_pretrained(local, **named)
    config, params = load_params(path)
    return ModelConfig.from_dict(config), params


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
