"""Losses as plain functions over logits. Everything returns sums so that microbatches and hosts
can be combined exactly; callers divide by the summed weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
    logits = logits.astype(jnp.float32)
    weights = (
        jnp.ones(targets.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
    )
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), -1)[..., 0]
    nll = log_z - target_logit
    loss = nll
    if label_smoothing:
        smooth = log_z - jnp.mean(logits, axis=-1)  # cross entropy against the uniform
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
