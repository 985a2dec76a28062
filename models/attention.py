"""Scaled dot-product attention with selectable kernels, and the multi-head attention module.

Kernels (ModelConfig.attention_kernel):
  xla     the reference: einsums and a float32 softmax; runs everywhere, supports everything.
  jax     `jax.nn.dot_product_attention` with XLA's own implementation.
  cudnn   `jax.nn.dot_product_attention(implementation="cudnn")`: cuDNN flash attention on NVIDIA
          GPUs (bf16/fp16 inputs).
  splash  Pallas splash attention on TPU (causal mask, packed segments and key padding as segment
          ids, no additive bias). Tested on CPU in Pallas interpret mode, turned on for tests and
          debugging only by `with interpret_kernels():` (tests/test_splash.py).
  blocked causal self-attention in blocks of queries, each attending only to the keys up to its
          own last position (the key blocks above the diagonal are skipped, not masked): about
          half the FLOPs and memory traffic of a full causal mask, in plain XLA. Any other mask or
          bias is still applied inside each block; non-causal calls use the reference.
  auto    cudnn on GPU, splash on TPU, blocked on CPU for causal self-attention (unless the
          sequence is split by context parallelism), xla otherwise.
A kernel that the hardware or the call cannot use falls back to the reference with one warning.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models import axes, masks
from models.config import ModelConfig
from models.layers import DenseGeneral, dtypes
from models.position import apply_rope

log = logging.getLogger(__name__)
_NEG_INF = -1e30  # large finite value: fully masked rows stay finite
_WARNED: set[str] = set()
_INTERPRET = [False]  # set only by `interpret_kernels`


@contextlib.contextmanager
def interpret_kernels():
    """Runs the Pallas kernels (splash) in interpret mode, on any backend: for tests and debugging.

    Inside the block, `attention_kernel="splash"` runs on a CPU (or GPU) through Pallas' interpreter
    instead of falling back to xla: same kernel code and masks, slowly. Read at trace time, so wrap
    the tracing (`jit`, first call) of the function, not a later call of a compiled one.
    """
    previous, _INTERPRET[0] = _INTERPRET[0], True
    try:
        yield
    finally:
        _INTERPRET[0] = previous


def context_shards() -> int:
    """How many devices the logical rules and mesh in force split the sequence (`length`) axis
    over: context parallelism when more than 1. Read at trace time."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return 1
    spec = nn.logical_to_mesh_axes((axes.LENGTH,))[0]
    names = (spec,) if isinstance(spec, str) else tuple(spec or ())
    return math.prod(mesh.shape.get(name, 1) for name in names)


def length_is_split() -> bool:
    """Whether the sequence axis is split over devices (`context_shards` > 1). Attention then
    gathers the keys and values over that axis while the queries stay split (MaxText's
    all-gather strategy), so every kernel that takes a mask works unchanged."""
    return context_shards() > 1


def _gathered_over_context(*keys_and_values):
    """Keys and values (B, S, K, H) gathered over a sequence split by context parallelism (the
    queries stay split); unchanged when the sequence is not split."""
    if not length_is_split():
        return keys_and_values
    spec = (axes.BATCH, None, axes.HEADS, axes.KV)
    return tuple(nn.with_logical_constraint(x, spec) for x in keys_and_values)


@functools.cache
def _load_balanced_causal_mask_class():
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    class LoadBalancedCausalMask(sm._ComputableMask):
        """Splash's causal mask for rows in dual-chunk order over `shards` devices: query slot q
        may see key slot s when source(s) <= source(q) (masks.dual_chunk_source). Splash
        computes it in the kernel from the queries' sources and the key slots, and skips the
        blocks it leaves empty, as MaxText's LoadBalancedCausalMask does for its order."""

        def __init__(self, shape: tuple[int, int], shards: int):
            self.shards, length = shards, shape[1]

            def visible(q_sources, kv_slots):
                return q_sources >= masks.dual_chunk_source(kv_slots, shards, length)

            super().__init__(shape=shape, mask_function=visible)
            self.q_sequence = np.asarray(
                masks.dual_chunk_source(np.arange(shape[0]), shards, length), np.int32
            )

        def __eq__(self, other: object):
            if not isinstance(other, type(self)):
                return NotImplemented
            return self.shape == other.shape and self.shards == other.shards

        def __hash__(self):
            return hash((type(self), self.shape, self.shards))

    return LoadBalancedCausalMask


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(message)


def _backend() -> str:
    return jax.default_backend()


def reference_attention(
    q, k, v, *, mask=None, bias=None, scale=1.0, dropout_rate=0.0, dropout_rng=None
):
    """Plain XLA attention.

    Args:
      q: (B, T, N, H) queries; k, v: (B, S, K, H) keys and values, K dividing N (grouped-query).
      mask: bool (B|1, 1, T|1, S), the same for every head; True = may attend.
      bias: float (B|1, N, T, S), added to the logits (T5 relative bias).
      scale: multiplier of q.k.
      dropout_rate, dropout_rng: attention-probability dropout (training only).
    Returns:
      (B, T, N, H) in q's dtype.
    """
    b, t, n, h = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(b, t, kv_heads, n // kv_heads, h)  # (B, T, K, G, H)
    logits = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=jnp.float32)
    logits = logits * scale  # (B, K, G, T, S)
    if bias is not None:  # (B|1, N, T, S) -> (B|1, K, G, T, S)
        logits = logits + bias.reshape(bias.shape[0], kv_heads, -1, *bias.shape[2:]).astype(
            jnp.float32
        )
    if mask is not None:  # (B|1, 1, T, S) -> (B|1, 1, 1, T, S)
        logits = jnp.where(mask[:, :, None], logits, _NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1)
    if dropout_rate > 0.0 and dropout_rng is not None:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
    out = jnp.einsum(
        "bkgts,bskh->btkgh", probs.astype(v.dtype), v, preferred_element_type=jnp.float32
    )
    return out.reshape(b, t, n, h).astype(q.dtype)


def _block_size(length: int) -> int | None:
    """Query-block size for `blocked_causal_attention`: 64 up to 512 tokens, then length / 8;
    None when the length does not split into at least two equal blocks."""
    block = 64 if length <= 512 else length // 8
    if length % block or length < 2 * block:
        return None
    return block


def blocked_causal_attention(q, k, v, *, mask=None, bias=None, scale=1.0, block=64):
    """Causal self-attention, one query block at a time.

    Query block i (rows [i*block, (i+1)*block)) can only see keys before its last row, so it
    attends to keys [0, (i+1)*block) and never computes the logits above the diagonal. `mask` and
    `bias` (shapes as in `reference_attention`) are sliced to each block and applied as usual, so
    padding and packed-segment masks keep working; the causal mask itself is always applied, so the
    result equals `reference_attention` with the causal mask (and `mask`, if given). Heads are
    moved ahead of the sequence once, so that each block's two matmuls are plain batched GEMMs.

    Args:
      q: (B, T, N, H); k, v: (B, T, K, H) with K dividing N.
      block: query rows per block, dividing T.
    Returns:
      (B, T, N, H) in q's dtype.
    """
    b, t, n, h = q.shape
    kv_heads = k.shape[2]
    groups = n // kv_heads
    q = (q * jnp.asarray(scale, q.dtype)).reshape(b, t, kv_heads, groups, h)
    q = jnp.transpose(q, (0, 2, 3, 1, 4))  # (B, K, G, T, H)
    k = jnp.transpose(k, (0, 2, 1, 3))  # (B, K, S, H)
    v = jnp.transpose(v, (0, 2, 1, 3))  # (B, K, S, H)
    if bias is not None:  # (B|1, N, T, S) -> (B|1, K, G, T, S)
        bias = bias.reshape(bias.shape[0], kv_heads, groups, t, t).astype(jnp.float32)
    outs = []
    for start in range(0, t, block):
        rows, end = slice(start, start + block), start + block  # keys [0, end) are visible
        logits = jnp.einsum(  # (B, K, G, block, end)
            "bkgth,bksh->bkgts", q[:, :, :, rows], k[:, :, :end], preferred_element_type=jnp.float32
        )
        if bias is not None:
            logits = logits + bias[:, :, :, rows, :end]
        visible = jnp.arange(start, end)[:, None] >= jnp.arange(end)[None, :]  # (block, end)
        if mask is not None:  # (B|1, 1, T|1, S) -> (B|1, 1, 1, block|1, end)
            block_mask = mask if mask.shape[2] == 1 else mask[:, :, rows]
            visible = visible & block_mask[:, :, None, :, :end]
        logits = jnp.where(visible, logits, _NEG_INF)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        outs.append(
            jnp.einsum(
                "bkgts,bksh->bkgth", probs, v[:, :, :end], preferred_element_type=jnp.float32
            )
        )
    out = jnp.concatenate(outs, axis=3)  # (B, K, G, T, H)
    return jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(b, t, n, h).astype(q.dtype)


def _jax_attention(q, k, v, *, mask, bias, scale, causal, implementation):
    return jax.nn.dot_product_attention(
        q, k, v, bias=bias, mask=mask, scale=scale, is_causal=causal, implementation=implementation
    )


def _splash_segments(mask, segment_ids, batch: int, length: int):
    """Splash's SegmentIds for this call's mask and packed segments, or None when there are none.

    Splash takes no mask tensor, only segment ids: key padding becomes a segment of its own that
    no query is in. A key is padding when no query may see it; for the masks that splash accepts
    (key padding, and the segment mask of `segment_ids`) that is exactly the padding mask.
    """
    if mask is None and segment_ids is None:
        return None
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    if segment_ids is None:
        segment_ids = jnp.zeros((batch, length), jnp.int32)
    q_seg = jnp.broadcast_to(segment_ids, (batch, length)).astype(jnp.int32)  # (B, T)
    kv_seg = q_seg
    if mask is not None:
        visible = jnp.broadcast_to(mask, (batch, 1, mask.shape[2], length))  # (B, 1, T|1, S)
        kv_valid = jnp.any(visible, axis=2)[:, 0]  # (B, S)
        kv_seg = jnp.where(kv_valid, q_seg, jnp.iinfo(jnp.int32).min)
    return sk.SegmentIds(q=q_seg, kv=kv_seg)


def _splash_attention(q, k, v, *, mask, segment_ids, causal, scale, load_balanced=0):
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as sk,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as sm,
    )

    b, t, n, h = q.shape
    groups = n // k.shape[2]
    k = jnp.repeat(k, groups, axis=2)
    v = jnp.repeat(v, groups, axis=2)
    shape = (t, k.shape[1])
    if load_balanced:  # `mask` holds the reordered rows' causal part; splash builds it itself
        base = _load_balanced_causal_mask_class()(shape, load_balanced)
    else:
        base = sm.CausalMask(shape=shape) if causal else sm.FullMask(shape)
    kernel = sk.make_splash_mha(
        mask=sm.MultiHeadMask([base] * n), head_shards=1, q_seq_shards=1, interpret=_INTERPRET[0]
    )
    to_bnth = lambda x: jnp.transpose(x, (0, 2, 1, 3))  # noqa: E731  (B, N, T, H)
    seg = _splash_segments(mask, segment_ids, b, t)
    call = lambda q_, k_, v_, s_: kernel(q_, k_, v_, segment_ids=s_)
    out = jax.vmap(call)(to_bnth(q * scale), to_bnth(k), to_bnth(v), seg)
    return jnp.transpose(out, (0, 2, 1, 3)).astype(q.dtype)


def _resolve_kernel(
    kernel: str, q, k, *, mask, bias, causal: bool, dropout: bool, segments, balanced=False
) -> str:
    """The kernel that runs this call: `kernel` ("auto" resolved) if it can, else "xla"."""
    auto = kernel == "auto"
    if auto:
        kernel = {"gpu": "cudnn", "tpu": "splash"}.get(_backend(), "blocked")
    if kernel != "xla" and dropout:
        if not auto:
            _warn_once(
                f"{kernel}-dropout",
                f"attention kernel {kernel!r} has no attention "
                "dropout; using the xla reference (set attention_dropout_rate=0 to avoid)",
            )
        return "xla"
    reason = _unsupported(
        kernel, q, k, mask=mask, bias=bias, causal=causal, segments=segments, balanced=balanced
    )
    if reason is None:
        return kernel
    if not auto:  # a kernel asked for by name says why it is not used; "auto" falls back quietly
        _warn_once(f"{kernel}-{reason}", f"attention kernel {kernel!r} {reason}; using xla")
    return "xla"


def _unsupported(
    kernel: str, q, k, *, mask, bias, causal: bool, segments: bool, balanced: bool = False
) -> str | None:
    """Why `kernel` cannot run this call on this backend, or None when it can."""
    if kernel == "cudnn":
        if _backend() != "gpu":
            return f"needs an NVIDIA GPU (backend is {_backend()})"
        if q.dtype not in (jnp.bfloat16, jnp.float16):
            return f"needs bfloat16/float16 inputs (got {q.dtype})"
        if length_is_split():  # jax's cuDNN partitioning: "Sharding on sequence dim is not allowed"
            return "cannot take a sequence split by mesh.context"
    elif kernel == "splash":
        if _backend() != "tpu" and not _INTERPRET[0]:
            return f"needs a TPU (backend is {_backend()})"
        if bias is not None:
            return "does not take an additive bias (T5 relative positions)"
        if q.shape[1] != k.shape[1] or q.shape[1] % 128:
            return "needs self-attention over a multiple of 128 tokens"
        if mask is not None and mask.shape[2] != 1 and not (segments or balanced):
            return "takes only key padding and packed segments (segment_ids) as a mask"
    elif kernel == "blocked":
        if not causal:
            return "is for causal self-attention"
        if q.shape[1] != k.shape[1] or _block_size(q.shape[1]) is None:
            return "needs self-attention over at least two equal blocks of queries"
        if length_is_split():
            return "slices queries by slot and cannot take a sequence split by mesh.context"
    return None


def _cudnn_attention(q, k, v, *, mask, bias, scale, causal):
    """cuDNN flash attention, with the mask and bias in the forms that its path handles."""
    if mask is not None:  # cuDNN takes a mask as a bias over every query row
        mask = jnp.broadcast_to(mask, (mask.shape[0], 1, q.shape[1], k.shape[1]))
    if bias is not None:
        # In q's dtype: with a float32 bias and bf16 q/k/v, jax 0.11.2's cuDNN path returns a
        # wrong bias gradient (relative error ~1 on an H200, 2026-11-26); with a bf16 bias it
        # matches the reference to 0.5%. T5 learns its relative-position bias through this
        # gradient.
        bias = bias.astype(q.dtype)
    return _jax_attention(
        q, k, v, mask=mask, bias=bias, scale=scale, causal=causal, implementation="cudnn"
    )


def dot_product_attention(
    q,
    k,
    v,
    *,
    kernel: str = "auto",
    mask=None,
    bias=None,
    scale: float = 1.0,
    causal: bool = False,
    segment_ids=None,
    dropout_rate: float = 0.0,
    dropout_rng=None,
    load_balanced: int = 0,
):
    """One entry point for every kernel; shapes as in `reference_attention`.

    `causal=True` (self-attention, T == S) lets query i see only keys up to i. `mask` holds every
    other constraint (padding, packed segments) and may hold the causal part too, or be None.
    Kernels with causality built in use the flag: cuDNN's causal mask type and the blocked kernel
    skip the tiles above the diagonal, and with no other mask cuDNN reads no mask tensor at all;
    the others get the causal mask added. `segment_ids` repeats the segment part of `mask` for
    kernels that take it structurally (splash). Splash reads the rest of `mask` as key padding, and
    refuses a mask over query rows (T > 1) unless `segment_ids` accounts for it.
    `load_balanced=c` says that the rows are in dual-chunk order over c devices
    (train/context.py) and that `mask` holds their causal part: splash then builds that causal
    mask itself (the other kernels read it from `mask`).
    """
    dropout = dropout_rate > 0.0 and dropout_rng is not None
    kernel = _resolve_kernel(
        kernel,
        q,
        k,
        mask=mask,
        bias=bias,
        causal=causal,
        dropout=dropout,
        segments=segment_ids is not None,
        balanced=bool(load_balanced),
    )
    if kernel == "cudnn":
        return _cudnn_attention(q, k, v, mask=mask, bias=bias, scale=scale, causal=causal)
    if kernel == "splash":
        return _splash_attention(
            q,
            k,
            v,
            mask=mask,
            segment_ids=segment_ids,
            causal=causal,
            scale=scale,
            load_balanced=load_balanced,
        )
    if kernel == "blocked":
        block = _block_size(q.shape[1])
        return blocked_causal_attention(q, k, v, mask=mask, bias=bias, scale=scale, block=block)
    if kernel == "jax":
        return _jax_attention(
            q, k, v, mask=mask, bias=bias, scale=scale, causal=causal, implementation=None
        )
    if causal:
        slots = masks.arange_slots(1, q.shape[1])
        mask = masks.combine(mask, masks.causal_mask(slots, slots))
    return reference_attention(
        q,
        k,
        v,
        mask=mask,
        bias=bias,
        scale=scale,
        dropout_rate=dropout_rate if dropout else 0.0,
        dropout_rng=dropout_rng,
    )


class Attention(nn.Module):
    """Multi-head (grouped-query) attention with an optional incremental KV cache.

    Self-attention when `kv` is None, cross-attention otherwise. While decoding (`decode=True`,
    self-attention only) keys and values of the new tokens are written into the 'cache'
    collection at `cache_index`; the caller's mask covers all cache slots.
    """

    config: ModelConfig
    # Causal self-attention. Outside decoding the kernel applies causality (the caller's mask may
    # leave it out); while decoding the mask over the cache slots carries it.
    causal: bool = False

    @nn.compact
    def __call__(
        self,
        x,
        kv=None,
        *,
        mask=None,
        bias=None,
        positions=None,
        kv_positions=None,
        segment_ids=None,
        cache_index=None,
        deterministic: bool = True,
        decode: bool = False,
    ):
        cfg = self.config
        dtype, param_dtype = dtypes(cfg)
        n, k_heads, h = cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
        proj = functools.partial(
            DenseGeneral,
            lora=cfg.lora,
            fp8=cfg.fp8,
            use_bias=cfg.use_bias,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=nn.initializers.normal(cfg.init_std),
        )
        source = x if kv is None else kv
        q = proj((n, h), (axes.EMBED, axes.HEADS, axes.KV), name="query")(x)  # (B, T, N, H)
        k = proj((k_heads, h), (axes.EMBED, axes.HEADS, axes.KV), name="key")(source)
        v = proj((k_heads, h), (axes.EMBED, axes.HEADS, axes.KV), name="value")(source)
        if cfg.position == "rope" and kv is None:
            q = apply_rope(q, positions, cfg.rope_theta)
            k = apply_rope(k, positions, cfg.rope_theta)  # the new keys sit at `positions`
        q = nn.with_logical_constraint(q, (axes.BATCH, axes.LENGTH, axes.HEADS, axes.KV))

        if decode and kv is None:
            k, v = self._update_cache(k, v, cache_index)
        k, v = _gathered_over_context(k, v)

        # rows reordered for load-balanced context parallelism: `mask` holds causality
        reordered = self.causal and cfg.causal_from_positions and not decode
        dropout_rng = None
        if not deterministic and cfg.attention_dropout_rate > 0.0:
            dropout_rng = self.make_rng("dropout")
        out = dot_product_attention(
            q,
            k,
            v,
            kernel=cfg.attention_kernel,
            mask=mask,
            bias=bias,
            scale=h**-0.5 if cfg.scale_attention else 1.0,
            causal=self.causal and not decode and not cfg.causal_from_positions,
            segment_ids=segment_ids,
            dropout_rate=cfg.attention_dropout_rate,
            dropout_rng=dropout_rng,
            load_balanced=context_shards() if reordered else 0,
        )  # (B, T, N, H)
        out = nn.with_logical_constraint(out, (axes.BATCH, axes.LENGTH, axes.HEADS, axes.KV))
        return proj(cfg.d_model, (axes.HEADS, axes.KV, axes.EMBED), contract=2, name="out")(out)

    def _update_cache(self, k, v, cache_index):
        """Writes the new keys/values at `cache_index`; returns the whole cache (B, S, K, H).

        The first call (inside `init` with decode=True) sizes the cache from its input length.
        """
        initialised = self.has_variable("cache", "cached_key")
        cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
        cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
        if not initialised:
            return k, v
        start = (0, cache_index, 0, 0)
        for cached, new in ((cached_k, k), (cached_v, v)):
            cached.value = jax.lax.dynamic_update_slice(
                cached.value, new.astype(cached.value.dtype), start
            )
        return cached_k.value, cached_v.value
