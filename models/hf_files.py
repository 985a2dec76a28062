"""Reading the files of a Hugging Face model directory, each through its own library, checked.

    state = read_state_dict("path/to/bert")    # tensors by raw name, numpy
    hf_config = read_hf_config("path/to/bert")  # config.json as a dict

Weights come from model.safetensors (the `safetensors` package, which checks the header length,
the header's JSON, the dtypes, the offsets and that every shape fits its bytes), a sharded index
(model.safetensors.index.json, every listed shard and tensor checked to be there) or
pytorch_model.bin (`torch.load(weights_only=True)`: a pickle that would run code is refused, not
executed). Every damaged or malformed file ends in one `CheckpointError` line that names the file
and the problem; `models.hf` re-exports `read_state_dict` and `read_hf_config`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from models.hf_tables import CheckpointError
from models.jsonfile import read_json

_FIX = "download or convert the checkpoint again"


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def read_safetensors(file: str) -> dict[str, np.ndarray]:
    """A .safetensors file -> numpy arrays (bfloat16 as ml_dtypes' bfloat16).

    Raises:
      CheckpointError: the file is missing, truncated or not a valid safetensors file.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(file, framework="numpy") as f:
            return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise CheckpointError(
            f"{file} is not a valid safetensors file ({_first_line(e)}); {_FIX}"
        ) from None


def read_torch(file: str) -> dict[str, np.ndarray]:
    """A PyTorch state dict (pytorch_model.bin) -> numpy arrays, through the weights-only
    unpickler (bfloat16 is widened to float32, which numpy can hold).

    Raises:
      CheckpointError: torch is missing, or the file is damaged, not a state dict, or a pickle
        that would run code (refused, never executed).
    """
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(
            f"{file} is a PyTorch checkpoint and torch is not installed; "
            "install torch or convert the weights to safetensors"
        ) from e
    import pickle

    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{file} was refused by torch's weights-only loader ({_first_line(e)}); it holds "
            f"more than tensors (code would run to load it); {_FIX}"
        ) from None
    except Exception as e:  # noqa: BLE001 - torch reports a damaged archive in many types
        raise CheckpointError(
            f"{file} is not a valid PyTorch checkpoint ({_first_line(e)}); {_FIX}"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(
            f"{file} holds a {type(state).__name__}, not a state dict of named tensors; {_FIX}"
        )
    return {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in state.items()}


def _read_sharded(path: str, index_file: str, reader) -> dict[str, np.ndarray]:
    """Every shard that `index_file` lists, each checked to hold the tensors listed for it."""
    weight_map = read_json(index_file, error=CheckpointError, fix=_FIX).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_file} has no weight_map of tensor names to shards; {_FIX}")
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard or os.path.basename(shard) != shard:
            raise CheckpointError(
                f"{index_file} maps {name} to {shard!r}, not a file name in {path}; {_FIX}"
            )
    state = {}
    for shard in sorted(set(weight_map.values())):
        file = os.path.join(path, shard)
        if not os.path.isfile(file):
            raise CheckpointError(f"{file} (listed in {index_file}) not found; {_FIX}")
        state.update(reader(file))
    missing = sorted(name for name in weight_map if name not in state)
    if missing:
        raise CheckpointError(
            f"{index_file} lists {missing[0]} in {weight_map[missing[0]]}, which lacks it; {_FIX}"
        )
    return state


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """All tensors of an HF directory by raw name: model.safetensors, a sharded safetensors
    index, pytorch_model.bin or a sharded .bin index (first found in that order).

    Raises:
      CheckpointError: no weights, or a weights file or index that is damaged or malformed.
    """
    for single, index, reader in (
        ("model.safetensors", "model.safetensors.index.json", read_safetensors),
        ("pytorch_model.bin", "pytorch_model.bin.index.json", read_torch),
    ):
        if os.path.isfile(os.path.join(path, single)):
            return reader(os.path.join(path, single))
        index_file = os.path.join(path, index)
        if os.path.isfile(index_file):
            return _read_sharded(path, index_file, reader)
    raise CheckpointError(
        f"no weights in {path}: expected model.safetensors, "
        "model.safetensors.index.json or pytorch_model.bin"
    )


def read_hf_config(path: str) -> dict[str, Any]:
    """The parsed config.json of an HF directory (a JSON object).

    Raises:
      CheckpointError: no such directory, or config.json missing, damaged or not an object.
    """
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such directory")
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise CheckpointError(f"{file} not found (not a Hugging Face model directory)")
    return read_json(file, error=CheckpointError, fix=_FIX)
