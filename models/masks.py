"""Boolean attention masks of shape (B, 1, T, S): True where a query may attend to a key.

Masks compose by logical and. Causality is decided by slot index (the position of a token in its
row, or in the KV cache while decoding); packed rows add segment ids so that examples sharing a row
never see each other. `positions` only feed position encodings, never masking.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def key_mask(valid: jax.Array) -> jax.Array:
    """(B, S) key validity (1 = real token) -> (B, 1, 1, S)."""
    return valid.astype(bool)[:, None, None, :]


def causal_mask(q_slots: jax.Array, k_slots: jax.Array) -> jax.Array:
    """(B, T) query and (B, S) key slot indices -> (B, 1, T, S), key slot <= query slot."""
    return k_slots[:, None, None, :] <= q_slots[:, None, :, None]


def segment_mask(q_segments: jax.Array, k_segments: jax.Array) -> jax.Array:
    """(B, T) and (B, S) segment ids -> (B, 1, T, S), True within the same segment."""
    return q_segments[:, None, :, None] == k_segments[:, None, None, :]


def combine(*masks: jax.Array | None) -> jax.Array | None:
    """Logical and of the masks that are not None (None if all are)."""
    out = None
    for m in masks:
        if m is not None:
            out = m if out is None else jnp.logical_and(out, m)
    return out


def arange_slots(batch: int, length: int, start: jax.Array | int = 0) -> jax.Array:
    return jnp.broadcast_to(start + jnp.arange(length, dtype=jnp.int32), (batch, length))


def dual_chunk_source(slots, shards: int, length: int):
    """The source position of each slot of a row of `length` tokens in dual-chunk order over
    `shards` devices (load-balanced context parallelism, train/context.py): slot chunk j = 2i + k
    (device i, k in {0, 1}) of 2 x shards holds source chunk i (k = 0) or 2 x shards - 1 - i
    (k = 1). Integer arithmetic only, so that it runs on NumPy arrays and inside a kernel alike."""
    chunk = length // (2 * shards)
    j, offset = slots // chunk, slots % chunk
    i, k = j // 2, j % 2
    return (i + k * (2 * shards - 1 - 2 * i)) * chunk + offset
