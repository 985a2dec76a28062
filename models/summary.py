"""Shape-level facts about a model, computed with jax.eval_shape (no memory is allocated)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models.config import ModelConfig


def dummy_inputs(config: ModelConfig, batch: int = 1, length: int = 8) -> dict[str, jax.Array]:
    """Keyword arguments that `models.build(config)` accepts, for init and shape checks."""
    ids = jnp.zeros((batch, length), jnp.int32)
    if config.family == "encoder_decoder":
        return {"input_ids": ids, "decoder_input_ids": ids}
    return {"input_ids": ids}


def abstract_params(config: ModelConfig):
    """The parameter tree as ShapeDtypeStructs (boxed with logical axis names)."""
    from models import build

    model = build(config)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), **dummy_inputs(config)))["params"]


def count_params(config: ModelConfig) -> int:
    return sum(
        int(np.prod(x.shape)) for x in jax.tree.leaves(nn.meta.unbox(abstract_params(config)))
    )


def describe(config: ModelConfig) -> dict:
    """Family, sizes and parameter count of `config`, JSON-serialisable."""
    info = {
        "name": config.name,
        "family": config.family,
        "params": count_params(config),
        "vocab_size": config.vocab_size,
        "d_model": config.d_model,
        "num_heads": config.num_heads,
        "num_kv_heads": config.kv_heads,
        "head_dim": config.dim_per_head,
        "d_ff": config.d_ff,
        "max_positions": config.max_positions,
        "position": config.position,
        "norm": config.norm,
        "pre_norm": config.pre_norm,
        "activation": config.activation + (" (gated)" if config.gated_mlp else ""),
        "head": config.head,
    }
    if config.family == "encoder_decoder":
        info["encoder_layers"] = config.num_layers
        info["decoder_layers"] = config.decoder_layers
    else:
        info["layers"] = config.num_layers
    return info
