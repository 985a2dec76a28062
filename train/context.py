"""Context parallelism: the `context` mesh axis splits every sequence across devices.

`config.mesh.context = c` shards the activations' sequence axis (the logical `length` axis,
train/partitioning.py) over c devices. Queries stay split; attention gathers the keys and
values (models/attention.py, `length_is_split`), so every kernel that takes a mask works
unchanged: MaxText's all-gather strategy, for encoders, decoders and both stacks of an
encoder-decoder (cross-attention gathers the encoder's keys and values).

A causal row split into c contiguous pieces gives the last device c times the attention work
of the first. With `config.mesh.context_load_balance` (the default) the training feed reorders
every per-token field of the causal side once, by "dual chunk swap": the row is cut into 2c
chunks and device i holds chunks i and 2c-1-i. The models then build their causal masks from
the (reordered) position ids instead of the row slots (`ModelConfig.causal_from_positions`);
RoPE, position tables and T5's relative bias already read the position ids. Loss sums do not
depend on the order of the tokens, so the step computes the same loss and gradients. Eval,
decode and predict never reorder (their model keeps slot-order causal masks), and checkpoints
hold parameters only, so nothing else sees the order.

    order = dual_chunk_order(8, 2)          # [0 1 6 7 2 3 4 5]
    balanced = balance(batch, "decoder", 2) # per-token fields permuted, positions added
    restored = unbalance(balanced, "decoder", 2)   # == batch, with the positions kept
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from data.transforms import random_spans_helper
from models import masks
from models.config import ModelConfig
from models.errors import UserError
from train import partitioning

# The per-token fields of each family's causal side; everything else (the encoder's inputs,
# per-row labels) keeps its order.
CAUSAL_FIELDS = {
    "decoder": (
        "input_ids",
        "attention_mask",
        "positions",
        "segment_ids",
        "token_type_ids",
        "targets",
        "labels",
        "weights",
    ),
    "encoder_decoder": (
        "decoder_input_ids",
        "decoder_attention_mask",
        "decoder_positions",
        "decoder_segment_ids",
        "targets",
        "labels",
        "weights",
    ),
}
_POSITIONS = {"decoder": "positions", "encoder_decoder": "decoder_positions"}
_LENGTH_OF = {"decoder": "input_ids", "encoder_decoder": "decoder_input_ids"}


class ContextError(UserError):
    """A run that context parallelism cannot split as configured."""


@functools.cache
def dual_chunk_order(length: int, context: int) -> np.ndarray:
    """The load-balanced order of a row of `length` tokens over `context` devices: the source
    index of each new slot. The row is cut into 2 x context equal chunks; device i (slots
    [i*length/c, (i+1)*length/c)) holds chunks i and 2c-1-i. Computed once per shape (the feed
    asks for every batch); read-only."""
    if length % (2 * context):
        raise ContextError(
            f"sequence length {length} is not divisible by 2 x mesh.context = {2 * context}; "
            "change seq_len (or data.target_length) or mesh.context"
        )
    order = masks.dual_chunk_source(np.arange(length), context, length)
    order.flags.writeable = False
    return order


def _permute(batch: dict, family: str, order: np.ndarray) -> dict:
    length = len(order)
    out = dict(batch)
    for key in CAUSAL_FIELDS[family]:
        value = out.get(key)
        if value is not None and np.ndim(value) >= 2 and np.shape(value)[1] == length:
            out[key] = np.asarray(value)[:, order]
    return out


def balance(batch: dict, family: str, context: int) -> dict:
    """`batch` (host arrays) with its causal side in the load-balanced order. Rows without
    position ids get 0..T-1 first, so that the reordered rows carry their original order."""
    first = np.asarray(batch[_LENGTH_OF[family]])
    rows, length = first.shape
    positions = _POSITIONS[family]
    if batch.get(positions) is None:
        ramp = np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length))
        batch = {**batch, positions: ramp}
    return _permute(batch, family, dual_chunk_order(length, context))


def unbalance(batch: dict, family: str, context: int) -> dict:
    """The inverse of `balance` (the added position ids stay)."""
    length = np.shape(batch[_LENGTH_OF[family]])[1]
    return _permute(batch, family, np.argsort(dual_chunk_order(length, context)))


def _lengths(config) -> list[tuple[str, int, str]]:
    """(what, value, the setting that changes it) of each sequence length a batch can have."""
    lengths = [("seq_len", int(config.seq_len), "seq_len")]
    target = int(config.data.get("target_length") or 0)
    if config.data.get("objective") == "span":  # T5's formula, padded up to target_length
        _, derived = random_spans_helper(
            int(config.seq_len),
            float(config.data.get("noise_density") or 0.15),
            float(config.data.get("mean_noise_span_length") or 3.0),
        )
        if derived >= target:
            lengths.append(("the span targets' length (T5's formula)", derived, "target_length"))
            target = 0
    if target:
        lengths.append(("data.target_length", target, "target_length"))
    if config.data.get("trim_padding"):
        lengths.append(("data.trim_padding", int(config.data.trim_padding), "trim_padding"))
    return lengths


def load_balanced(config, model_config: ModelConfig, context: int) -> bool:
    """Whether the run reorders its causal rows: context > 1, `mesh.context_load_balance`, and
    a model with a causal stack whose head reads every token (a decoder's classification head
    reads the last token by its slot, so it keeps the row order)."""
    if context <= 1 or not config.mesh.get("context_load_balance", True):
        return False
    if model_config.family == "encoder":
        return False
    return not (model_config.family == "decoder" and model_config.head == "classification")


def check(config, model_config: ModelConfig, context: int) -> None:
    """One ContextError line for a run that cannot be split `context` ways.

    Raises:
      ContextError: a sequence length (or trim_padding multiple) not divisible by the context
        size (2 x context with load balancing), an odd context with load balancing, or a model
        whose attention cannot take the split.
    """
    if context <= 1:
        return
    balanced = load_balanced(config, model_config, context)
    if balanced and context % 2:
        raise ContextError(
            f"mesh.context={context} is odd; load balancing pairs chunk i with chunk 2c-1-i and "
            "needs an even context: use an even mesh.context or "
            "--config.mesh.context_load_balance=False"
        )
    if model_config.attention_kernel == "blocked":
        raise ContextError(
            "attention_kernel='blocked' slices each row's queries by slot and cannot take a "
            "sequence split across devices; use attention_kernel='auto' or 'xla' with "
            "mesh.context"
        )
    multiple = 2 * context if balanced else context
    for name, value, setting in _lengths(config):
        if value % multiple:
            fix = f"make it a multiple of {multiple}"
            if setting == "target_length":
                fix = f"set --config.data.target_length={-(-value // multiple) * multiple}"
            raise ContextError(
                f"{name}={value} is not divisible by "
                f"{'2 x ' if balanced else ''}mesh.context = {multiple}; {fix} or change "
                "mesh.context"
            )


def check_hosts(mesh) -> None:
    """One ContextError line when the `context` axis spans processes: each process reads its own
    rows of the global batch, and the devices of one context group must hold the same rows."""
    if partitioning.spans_processes(mesh, "context"):
        raise ContextError(
            f"mesh.context={mesh.shape['context']} spans processes (hosts); each process reads its "
            "own rows, so a sequence's devices must share one: make mesh.context at most the "
            "devices per process, or put the other hosts on mesh.data / mesh.fsdp"
        )


def train_config(config, model_config: ModelConfig, context: int) -> ModelConfig:
    """The model config of the train step of a run with `context` devices per sequence: causal
    masks from position ids when its rows are reordered. Checks the run first (`check`)."""
    check(config, model_config, context)
    if not load_balanced(config, model_config, context):
        return model_config
    return dataclasses.replace(model_config, causal_from_positions=True)


def reordering(place, config, model_config: ModelConfig, context: int):
    """The training feed's `place` (host batch -> device batch), reordering each batch's causal
    side first when the run balances its rows; `place` itself otherwise."""
    if not load_balanced(config, model_config, context):
        return place
    family = model_config.family
    return lambda batch: place(balance(batch, family, context))
