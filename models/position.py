"""Position information: learned tables (in blocks.Embedding), sinusoids, T5 relative bias, RoPE."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models import axes
from models.layers import param


def sinusoidal_table(length: int, dim: int) -> np.ndarray:
    """Vaswani et al. 2017: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...)."""
    pos = np.arange(length, dtype=np.float64)[:, None]  # (L, 1)
    inv = np.exp(-math.log(10000.0) * np.arange(0, dim, 2, dtype=np.float64) / dim)  # (D/2,)
    table = np.zeros((length, dim), dtype=np.float32)
    table[:, 0::2] = np.sin(pos * inv)
    table[:, 1::2] = np.cos(pos * inv)[:, : dim // 2]
    return table


def relative_position_bucket(
    relative_position: jax.Array, bidirectional: bool, num_buckets: int, max_distance: int
) -> jax.Array:
    """T5's bucketing of (key - query) offsets: exact for small offsets, log-spaced up to
    `max_distance`, one bucket beyond. Bidirectional uses half the buckets for each sign."""
    bucket = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (relative_position > 0).astype(relative_position.dtype) * num_buckets
        distance = jnp.abs(relative_position)
    else:
        distance = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    scaled = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact) / math.log(
        max_distance / max_exact
    )
    large = max_exact + (scaled * (num_buckets - max_exact)).astype(relative_position.dtype)
    large = jnp.minimum(large, num_buckets - 1)
    return bucket + jnp.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
    """T5 relative attention bias, computed once per stack and shared by all its layers."""

    num_buckets: int
    max_distance: int
    num_heads: int
    bidirectional: bool
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, q_positions: jax.Array, k_positions: jax.Array) -> jax.Array:
        """(B, T) query and (B, S) key positions -> bias (B, N, T, S) in float32."""
        table = param(
            self,
            "embedding",
            nn.initializers.normal(0.02),
            (self.num_buckets, self.num_heads),
            (None, axes.HEADS),
            self.param_dtype,
        )
        rel = k_positions[:, None, :] - q_positions[:, :, None]  # (B, T, S)
        buckets = relative_position_bucket(
            rel, self.bidirectional, self.num_buckets, self.max_distance
        )
        bias = jnp.take(table, buckets, axis=0).astype(jnp.float32)  # (B, T, S, N)
        return jnp.transpose(bias, (0, 3, 1, 2))  # (B, N, T, S)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding (half-split convention of the Llama/NeoX checkpoints).

    x: (B, T, N, H); positions: (B, T).
    """
    half = x.shape[-1] // 2
    inv_freq = 1.0 / (theta ** (jnp.arange(0, half, dtype=jnp.float32) * 2.0 / x.shape[-1]))
    angles = positions.astype(jnp.float32)[:, :, None] * inv_freq  # (B, T, H/2)
    cos = jnp.cos(angles)[:, :, None, :]  # (B, T, 1, H/2)
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)
