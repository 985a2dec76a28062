"""Losses as plain functions over logits. Everything returns sums so that microbatches and hosts
can be combined exactly; callers divide by the summed weights."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


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
    scatter into the float32 softmax gradient, which must then exist in memory: on an H100
    (gpt2-medium 16 x 1024, bf16) a float32 (B, T, V) buffer of 3.3 GB, written (1.75 ms) and
    read again to round and pad it for the head's products (1.6 ms) in a 98 ms step
    (docs/benchmarks/gpu-notes.md; the hand-written form is not timed on a GPU yet).

    Float32 logits keep plain autodiff. There the two products of the backward pass on a CPU
    read the gradient in two layouts, and XLA computed it for each from a kept softmax, which
    held one more (B, T, V) buffer at once than the scatter's single gradient (gpt2, 4 x 128:
    448 against 350 MiB of temporaries)."""
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
