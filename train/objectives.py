"""Per-objective plumbing: which batch fields feed the model, and what the loss is taken against.

Every objective is a token- or sequence-level cross entropy; they differ only in the model's
inputs and in where the targets and weights come from:

  causal_lm             next-token targets, padding weighted 0 (packed rows via segment_ids)
  masked_lm             original ids at the masked 15%, weight 1 there and 0 elsewhere
  seq2seq               teacher forcing: decoder_input_ids are the targets shifted right
                        (span corruption, denoising, translation, summarization)
  classification        one label per sequence
  token_classification  one label per token (first sub-token of each word), others weighted 0
"""

from __future__ import annotations

import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.errors import UserError, one_of
from train.losses import cross_entropy_sums

OBJECTIVES = ("causal_lm", "masked_lm", "seq2seq", "classification", "token_classification")

_INPUTS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "positions",
    "segment_ids",
    "decoder_input_ids",
    "decoder_attention_mask",
    "decoder_positions",
    "decoder_segment_ids",
)


class ObjectiveError(UserError):
    pass


def check_objective(objective: str, model_config) -> None:
    """Refuses pairs that cannot train (e.g. masked LM on a model without an MLM head)."""
    need_head = {
        "causal_lm": "lm",
        "seq2seq": "lm",
        "masked_lm": "mlm",
        "classification": "classification",
        "token_classification": "token_classification",
    }
    one_of("objective", objective, OBJECTIVES, ObjectiveError)
    if model_config.head != need_head[objective]:
        raise ObjectiveError(
            f"objective={objective!r} needs model.head={need_head[objective]!r} "
            f"(model {model_config.name!r} has head={model_config.head!r})"
        )
    if objective == "seq2seq" and model_config.family != "encoder_decoder":
        raise ObjectiveError("objective='seq2seq' needs an encoder-decoder model")
    if objective == "causal_lm" and model_config.family != "decoder":
        raise ObjectiveError("objective='causal_lm' needs a decoder-only model")


def model_inputs(model: nn.Module, batch: dict) -> dict:
    """The batch fields that `model.__call__` accepts."""
    accepted = inspect.signature(type(model).__call__).parameters
    return {k: batch[k] for k in _INPUTS if k in batch and k in accepted}


def targets_and_weights(objective: str, batch: dict):
    """(targets, weights). Labels below 0 (-100: padding rows, non-first sub-tokens) get weight
    0 and a harmless index."""
    if objective == "classification":
        labels = batch["labels"]
        weights = batch.get("weights", (labels >= 0).astype(jnp.float32))
        return jnp.maximum(labels, 0), weights
    targets = batch["targets"] if "targets" in batch else batch["labels"]
    return jnp.maximum(targets, 0), batch["weights"]


def loss_sums(
    model: nn.Module,
    params,
    batch: dict,
    objective: str,
    *,
    rng=None,
    deterministic: bool = True,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
) -> dict[str, jax.Array]:
    """Runs the model on `batch` and returns the cross-entropy sums (see losses.py)."""
    rngs = None if deterministic else {"dropout": rng}
    out = model.apply(
        {"params": params}, **model_inputs(model, batch), deterministic=deterministic, rngs=rngs
    )
    targets, weights = targets_and_weights(objective, batch)
    return cross_entropy_sums(
        out.logits, targets, weights, label_smoothing=label_smoothing, z_loss=z_loss
    )
