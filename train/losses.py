"""The loss of every objective: the model run on a batch, a cross entropy against the targets its
record names (`data.objectives`). Everything returns sums so that microbatches and hosts can be
combined exactly; callers divide by the summed weights.

Every objective is a token- or sequence-level cross entropy; they differ only in the model's
inputs and in where the targets and weights come from:

  clm (causal_lm)      next-token targets, padding weighted 0 (packed rows via segment_ids)
  mlm (masked_lm)      original ids at the masked 15%, weight 1 there and 0 elsewhere
  span, denoise, seq2seq
                       teacher forcing: decoder_input_ids are the targets shifted right
  classify             one label per sequence (padding rows -100, weight 0)
  tag                  one label per token (first sub-token of each word), others weighted 0
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from data import objectives
from models.errors import UserError
from models.layers import FP8


class ObjectiveError(UserError):
    pass


def check_objective(objective: str, model_config) -> None:
    """Refuses pairs that cannot train (e.g. masked LM on a model without an MLM head)."""
    objectives.get(objective).check_model(model_config, ObjectiveError)


def model_inputs(model: nn.Module, batch: dict) -> dict:
    """The batch fields that the model takes (its class's `INPUTS`)."""
    return {k: batch[k] for k in type(model).INPUTS if k in batch}


def targets_and_weights(objective: str, batch: dict):
    """(targets, weights) of the objective's record. Targets below 0 (-100: padding rows,
    non-first sub-tokens) get a harmless index, and weight 0 where the batch has no weights."""
    record = objectives.get(objective)
    targets = batch[record.targets]
    weights = batch.get(record.weights)
    if weights is None:
        weights = (targets >= 0).astype(jnp.float32)
    return jnp.maximum(targets, 0), weights


def variables(params, fp8=None) -> dict:
    """The model's variables: `params`, and the fp8 scales where the state has them (the fp8
    matmuls run only where they are given: models/layers.py DenseGeneral)."""
    return {"params": params} if fp8 is None else {"params": params, FP8: fp8}


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
    fp8=None,
) -> dict[str, jax.Array]:
    """Runs the model on `batch` and returns the cross-entropy sums of `objective` (a
    `data.objectives` name or loss name); `fp8`: the train state's fp8 scales, if any."""
    rngs = None if deterministic else {"dropout": rng}
    out = model.apply(
        variables(params, fp8),
        **model_inputs(model, batch),
        deterministic=deterministic,
        rngs=rngs,
    )
    targets, weights = targets_and_weights(objective, batch)
    return cross_entropy_sums(
        out.logits, targets, weights, label_smoothing=label_smoothing, z_loss=z_loss
    )


def cross_entropy_sums(
    logits, targets, weights=None, *, label_smoothing: float = 0.0, z_loss: float = 0.0
) -> dict[str, jax.Array]:
    """Token-level softmax cross entropy.

    Args:
      logits: (..., V) any float dtype (computed in float32).
      targets: (...) integer class ids.
      weights: (...) loss weights (0 for padding); default all ones.
      label_smoothing: eps; the target distribution is (1 - eps) one-hot + eps uniform.
      z_loss: coefficient of log(Z)^2 (PaLM), which keeps the softmax normaliser near 1.
    Returns:
      dict of sums: loss (including z-loss), nll (plain cross entropy), z_loss, correct, weight.
    """
    weights = (
        jnp.ones(targets.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
    )
    targets = targets.astype(jnp.int32)
    log_z, target_logit, mean_logit = logit_stats(logits, targets, bool(label_smoothing))
    nll = log_z - target_logit
    loss = nll
    if label_smoothing:
        smooth = log_z - mean_logit  # cross entropy against the uniform
        loss = (1.0 - label_smoothing) * nll + label_smoothing * smooth
    zl = z_loss * jnp.square(log_z)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return {
        "loss": jnp.sum((loss + zl) * weights),
        "nll": jnp.sum(nll * weights),
        "z_loss": jnp.sum(zl * weights),
        "correct": jnp.sum(correct * weights),
        "weight": jnp.sum(weights),
    }


def logit_stats(logits, targets, with_mean: bool = False):
    """Per position, in float32: log Z = logsumexp(logits), the target's logit, and (with_mean)
    the mean logit, else None: everything a cross entropy needs from the (..., V) logits.

    For 16-bit logits the gradient is written by hand, as T5X's cross entropy is, so that the
    backward pass is one elementwise pass over the logits, d logits = softmax * d log Z +
    one_hot(target) * d target_logit + d mean / V, written in the logits' dtype, with the
    softmax recomputed from the kept 16-bit logits. Plain autodiff adds the target's part by a
    scatter into the float32 softmax gradient, which must then exist in memory as one more
    float32 (B, T, V) buffer that is written and read again (its cost on a GPU is in
    docs/benchmarks/gpu-notes.md).

    Float32 logits keep plain autodiff: there XLA fuses the scatter's single gradient, and the
    hand-written form would keep a softmax per backward product instead (more temporaries on a
    CPU; also in docs/benchmarks/gpu-notes.md)."""
    if logits.dtype == jnp.float32:
        return _logit_stats(logits, targets, with_mean)
    return _logit_stats_16bit(logits, targets, with_mean)


def _logit_stats(logits, targets, with_mean):
    x = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(x, axis=-1)
    target_logit = jnp.take_along_axis(x, targets[..., None], -1)[..., 0]
    mean = jnp.mean(x, axis=-1) if with_mean else None
    return log_z, target_logit, mean


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _logit_stats_16bit(logits, targets, with_mean):
    return _logit_stats(logits, targets, with_mean)


def _logit_stats_16bit_fwd(logits, targets, with_mean):
    stats = _logit_stats(logits, targets, with_mean)
    return stats, (logits, targets, stats[0])


def _logit_stats_16bit_bwd(with_mean, residuals, cotangents):
    logits, targets, log_z = residuals
    d_log_z, d_target, d_mean = cotangents
    grad = jnp.exp(logits.astype(jnp.float32) - log_z[..., None]) * d_log_z[..., None]
    ids = lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    grad = grad + jnp.where(ids == targets[..., None], d_target[..., None], 0.0)
    if with_mean:
        grad = grad + (d_mean / logits.shape[-1])[..., None]
    return grad.astype(logits.dtype), None


_logit_stats_16bit.defvjp(_logit_stats_16bit_fwd, _logit_stats_16bit_bwd)
