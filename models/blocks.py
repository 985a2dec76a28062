"""The shared block library: one TransformerBlock and one TransformerStack serve every family.

A stack is: input embedding (positions, token types, norm, dropout) -> N blocks -> optional final
norm. The block knows only three switches: `causal`, `cross_attention` and pre- or post-norm
(from the config). BERT, GPT-2, T5, BART and the 2017 Transformer are all stacks of it.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from models import axes, masks, pipeline
from models.attention import Attention
from models.config import ConfigError, ModelConfig
from models.layers import FP8, MLP, Embed, dtypes, make_norm
from models.position import RelativePositionBias, sinusoidal_table

_REMAT_POLICIES = {
    "none": jax.checkpoint_policies.everything_saveable,  # (no remat; what a pipeline keeps)
    "full": None,  # save nothing, recompute everything
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "save_attention_out": jax.checkpoint_policies.save_only_these_names("attention_out"),
}


@jax.custom_vjp
def _gradient_fence(x):
    """Identity whose gradient passes through a `lax.cond`, which XLA cannot fuse across.

    Between unrolled layers the residual-stream gradient is a chain of cheap elementwise ops
    (residual adds, layer-norm backward). XLA:CPU fuses that chain into every consumer, including
    the transposes feeding the weight-gradient matmuls, so each layer recomputes the gradient of
    all the layers above it (a large share of gpt2's backward on a CPU, measured in
    docs/benchmarks/cpu-profile.md). The cond (both branches the identity, on a run-time
    predicate) makes XLA materialise the gradient once per layer. `lax.optimization_barrier`
    does not help: XLA:CPU removes it before fusion.
    """
    return x


def _gradient_fence_fwd(x):
    return x, None


def _gradient_fence_bwd(_, g):
    # A predicate known only at run time, and branches that differ in form (JAX drops a cond
    # whose branches are the same) but both return g.
    finite = jnp.isfinite(g.reshape(-1)[0])
    return (jax.lax.cond(finite, lambda g: g, lambda g: g + 0, g),)


_gradient_fence.defvjp(_gradient_fence_fwd, _gradient_fence_bwd)


def _self_mask(k_valid, q_slots, k_slots, segment_ids, padded: bool, cached_causal: bool):
    """The self-attention mask: key padding, causality over cache slots, packed segments."""
    return masks.combine(
        masks.key_mask(k_valid) if padded else None,
        # Outside decoding the attention kernels apply causality themselves (see
        # dot_product_attention's `causal`), so that a fused kernel need read no mask at all.
        masks.causal_mask(q_slots, k_slots) if cached_causal else None,
        masks.segment_mask(segment_ids, segment_ids) if segment_ids is not None else None,
    )


def _cross_mask(encoder_attention_mask, segment_ids, encoder_segment_ids):
    """The decoder-to-encoder mask: encoder padding, and packed segments on both sides."""
    return masks.combine(
        None if encoder_attention_mask is None else masks.key_mask(encoder_attention_mask),
        None
        if segment_ids is None or encoder_segment_ids is None
        else masks.segment_mask(segment_ids, encoder_segment_ids),
    )


class TransformerBlock(nn.Module):
    """Self-attention [-> cross-attention] -> MLP, each a residual sublayer with its norm.

    Call arguments are positional so that the block can be scanned and rematerialised; see
    `TransformerStack` for their meaning.
    """

    config: ModelConfig
    causal: bool = False
    cross_attention: bool = False

    @nn.compact
    def __call__(
        self,
        x,
        mask,
        bias,
        positions,
        kv_positions,
        segment_ids,
        encoded,
        cross_mask,
        cache_index,
        deterministic,
        decode,
    ):
        cfg = self.config
        x = nn.with_logical_constraint(x, axes.ACTIVATION)  # (B, T, D)
        x = checkpoint_name(x, pipeline.LAYER_INPUT)

        def residual(x, name, fn):
            norm = make_norm(cfg, name=f"{name}_norm")
            h = fn(norm(x) if cfg.pre_norm else x)
            h = nn.Dropout(cfg.dropout_rate)(h, deterministic=deterministic)
            x = x + h
            return x if cfg.pre_norm else norm(x)

        x = residual(
            x,
            "self_attention",
            lambda h: Attention(cfg, causal=self.causal, name="self_attention")(
                h,
                mask=mask,
                bias=bias,
                positions=positions,
                kv_positions=kv_positions,
                segment_ids=segment_ids,
                cache_index=cache_index,
                deterministic=deterministic,
                decode=decode,
            ),
        )
        x = checkpoint_name(x, "attention_out")
        if self.cross_attention:
            x = residual(
                x,
                "cross_attention",
                lambda h: Attention(cfg, name="cross_attention")(
                    h, encoded, mask=cross_mask, deterministic=deterministic
                ),
            )
        x = residual(x, "mlp", lambda h: MLP(cfg, name="mlp")(h, deterministic))
        return nn.with_logical_constraint(x, axes.ACTIVATION), None


def _block_class(cfg: ModelConfig, num_layers: int, num_args: int):
    """TransformerBlock, rematerialised as configured, and scanned over the layers if configured."""
    block = TransformerBlock
    if cfg.remat_policy != "none":
        block = nn.remat(
            block,
            policy=_REMAT_POLICIES[cfg.remat_policy],
            prevent_cse=not cfg.scan_layers,
            static_argnums=(10, 11),
        )
    if cfg.scan_layers:
        block = nn.scan(
            block,
            variable_axes={"params": 0, "cache": 0, FP8: 0},  # FP8: each layer's scales
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,) * num_args,
            length=num_layers,
            metadata_params={nn.PARTITION_NAME: axes.LAYERS},
        )
    return block


class Embedding(nn.Module):
    """Token vectors -> stack input: scale, add position and token-type vectors, norm, dropout."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x, positions, token_type_ids, deterministic):
        cfg = self.config
        dtype, param_dtype = dtypes(cfg)
        if cfg.scale_embeddings:
            x = x * jnp.asarray(cfg.d_model**0.5, dtype)
        if cfg.position == "learned":
            table = Embed(
                cfg.max_positions + cfg.position_offset,
                cfg.d_model,
                (None, axes.EMBED),
                dtype,
                param_dtype,
                nn.initializers.normal(cfg.init_std),
                name="position",
            )
            x = x + table(positions + cfg.position_offset)
        elif cfg.position == "sinusoidal":
            table = jnp.asarray(sinusoidal_table(cfg.max_positions, cfg.d_model))
            x = x + jnp.take(table, positions, axis=0).astype(dtype)
        if cfg.type_vocab_size:
            types = Embed(
                cfg.type_vocab_size,
                cfg.d_model,
                (None, axes.EMBED),
                dtype,
                param_dtype,
                nn.initializers.normal(cfg.init_std),
                name="token_type",
            )
            x = x + types(jnp.zeros_like(positions) if token_type_ids is None else token_type_ids)
        if cfg.embed_norm:
            x = make_norm(cfg, name="norm")(x)
        x = nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
        return nn.with_logical_constraint(x.astype(dtype), axes.ACTIVATION)


class TransformerStack(nn.Module):
    """Embedding + `num_layers` blocks (+ final norm): the encoder or decoder of any family.

    Call args:
      x: (B, T, D) token vectors (the caller owns the token table, which may be shared).
      attention_mask: (B, T), 1 for real tokens, 0 for padding.
      positions: (B, T) position ids; default 0..T-1 (continued from the cache when decoding).
      segment_ids: (B, T) ids of packed examples; tokens attend only within their segment.
      token_type_ids: (B, T) BERT sentence A/B ids.
      encoded, encoder_attention_mask, encoder_segment_ids: the encoder side for cross-attention.
      deterministic: no dropout.
      decode: incremental decoding with a KV cache (causal stacks). `init` with decode=True and a
        full-length input sizes the cache; each later call appends its T tokens.
    """

    config: ModelConfig
    num_layers: int
    causal: bool = False
    cross_attention: bool = False

    @nn.compact
    def __call__(
        self,
        x,
        *,
        attention_mask=None,
        positions=None,
        segment_ids=None,
        token_type_ids=None,
        encoded=None,
        encoder_attention_mask=None,
        encoder_segment_ids=None,
        deterministic: bool = True,
        decode: bool = False,
    ):
        cfg = self.config
        b, t = x.shape[:2]
        if decode and not self.causal:
            raise ValueError("decode=True needs a causal stack (a decoder)")
        valid = jnp.ones((b, t), bool) if attention_mask is None else attention_mask.astype(bool)

        slots = self._slots(b, t, valid, positions, decode)
        q_slots, positions, k_slots, kv_positions, k_valid, cache_index = slots
        if decode:
            segment_ids = None  # a cache holds one example per row

        padded = attention_mask is not None or decode
        masked_causal = self.causal and (decode or cfg.causal_from_positions)
        mask = _self_mask(k_valid, q_slots, k_slots, segment_ids, padded, masked_causal)
        cross_mask = None
        if self.cross_attention:
            cross_mask = _cross_mask(encoder_attention_mask, segment_ids, encoder_segment_ids)
        bias = None
        if cfg.position == "relative":
            bias = self._relative_bias(positions, kv_positions)  # (B, N, T, S)

        x = Embedding(cfg, name="embed")(x, positions, token_type_ids, deterministic)
        # TransformerBlock's positional arguments; the last two are static (see _block_class)
        args = (mask, bias, positions, kv_positions, segment_ids, encoded, cross_mask, cache_index)
        args += (deterministic, decode)
        # Called here, not in a helper: the compiled step names the scan's rng keys by their caller.
        block = _block_class(cfg, self.num_layers, len(args))
        if cfg.pipeline_stages > 1 and not decode and not self.is_initializing():
            x = self._pipelined(x, args)
        elif cfg.scan_layers:
            x, _ = block(cfg, self.causal, self.cross_attention, name="layers")(x, *args)
        else:
            fence = jax.default_backend() == "cpu"  # elsewhere a cond would cost a device sync
            for i in range(self.num_layers):
                if fence and i:
                    x = _gradient_fence(x)
                x, _ = block(cfg, self.causal, self.cross_attention, name=f"layers_{i}")(x, *args)
        if cfg.final_norm:
            x = make_norm(cfg, name="final_norm")(x)
        return nn.with_logical_constraint(x, axes.ACTIVATION)

    # `nn.nowrap` helpers run as part of `__call__`: their ops keep its name scope (the op names
    # that profiles and the HLO metadata show), and their variables and submodules its scope.

    @nn.nowrap
    def _slots(self, b: int, t: int, valid, positions, decode: bool):
        """The slots, positions and validity of queries and keys; while decoding, from the cache.

        Returns (q_slots, positions, k_slots, kv_positions, k_valid, cache_index). Outside decoding
        the keys are the queries. While decoding they are all the cache slots, and this call's
        tokens are written at `cache_index` (None inside `init`, where the input sizes the cache).
        """
        if not decode:
            self._check_length(t)
            q_slots = masks.arange_slots(b, t)
            positions = q_slots if positions is None else positions
            if self.causal and self.config.causal_from_positions:
                q_slots = positions  # rows may be reordered: causality follows the positions
            return q_slots, positions, q_slots, positions, valid, None
        initialised = self.has_variable("cache", "index")
        index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
        slot_valid = self.variable("cache", "valid", jnp.zeros, (b, t), bool)
        slot_pos = self.variable("cache", "positions", jnp.zeros, (b, t), jnp.int32)
        start = index.value if initialised else 0
        q_slots = masks.arange_slots(b, t, start)
        positions = q_slots if positions is None else positions
        if not initialised:
            return q_slots, positions, q_slots, positions, valid, None
        self._check_length(slot_valid.value.shape[1])
        slot_valid.value = jax.lax.dynamic_update_slice(slot_valid.value, valid, (0, start))
        slot_pos.value = jax.lax.dynamic_update_slice(
            slot_pos.value, positions.astype(jnp.int32), (0, start)
        )
        index.value = start + t
        k_valid, kv_positions = slot_valid.value, slot_pos.value
        k_slots = masks.arange_slots(b, k_valid.shape[1])
        return q_slots, positions, k_slots, kv_positions, k_valid, start

    @nn.nowrap
    def _pipelined(self, x, args):
        """The scanned layers ("layers", stacked (L, ...)) run as a pipeline (models/pipeline.py).

        The weights are read where `nn.scan` keeps them, so a pipelined and an unpipelined
        model share one parameter tree; each stage runs its layers as the same scanned,
        rematerialised block."""
        cfg = self.config
        schedule = pipeline.Schedule.of(cfg)
        per_stage = schedule.layers_per_stage(self.num_layers)
        stage_block = _block_class(cfg, per_stage, len(args))(
            cfg, self.causal, self.cross_attention
        )
        *tensors, deterministic, decode = args

        def stage_fn(params, x, rows, rng):
            rngs = {} if rng is None else {"dropout": rng}
            out, _ = stage_block.apply(
                {"params": params}, x, *rows, deterministic, decode, rngs=rngs
            )
            return out

        rng = None if deterministic else self.make_rng("dropout")
        layer_params = self.variables["params"]["layers"]
        policy = _REMAT_POLICIES[cfg.remat_policy]
        return pipeline.run(stage_fn, layer_params, x, tuple(tensors), schedule, rng, policy)

    @nn.nowrap
    def _relative_bias(self, positions, kv_positions):
        """T5's relative-position bias (B, N, T, S), shared by every block of the stack."""
        cfg = self.config
        _, param_dtype = dtypes(cfg)
        return RelativePositionBias(
            cfg.relative_buckets,
            cfg.relative_max_distance,
            cfg.num_heads,
            bidirectional=not self.causal,
            param_dtype=param_dtype,
            name="relative_bias",
        )(positions, kv_positions)

    def _check_length(self, length: int) -> None:
        cfg = self.config
        if cfg.position in ("learned", "sinusoidal") and length > cfg.max_positions:
            raise ConfigError(
                f"sequence length {length} exceeds max_positions={cfg.max_positions} of "
                f"{cfg.name}'s position table; truncate the inputs or raise max_positions"
            )
