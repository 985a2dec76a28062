"""Output heads and the model output structure. Losses live in train/, not here."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from models import axes
from models.config import ModelConfig
from models.layers import DenseGeneral, Embed, activation_fn, dtypes, make_norm, param


@struct.dataclass
class ModelOutput:
    """What every model returns (Hugging Face field names). Unused fields are None."""

    last_hidden_state: jax.Array  # (B, T, D); the decoder's for encoder-decoders
    logits: jax.Array | None = None  # (B, T, V) LM/MLM/token tags, (B, C) sequence classes
    pooler_output: jax.Array | None = None  # (B, D) BERT pooler
    encoder_last_hidden_state: jax.Array | None = None  # (B, S, D) encoder-decoders


def _dense(cfg: ModelConfig, features: int, kernel_axes, name: str, use_bias: bool = True):
    """A head's dense layer; LoRA adapts it too where a target finds its path ('pooler/dense',
    'head/transform'), as PEFT's all-linear adapts BERT's pooler and MLM transform."""
    dtype, param_dtype = dtypes(cfg)
    return DenseGeneral(
        features,
        kernel_axes,
        lora=cfg.lora,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.initializers.normal(cfg.init_std),
        name=name,
    )


class Pooler(nn.Module):
    """BERT pooler: tanh(dense(hidden[:, 0]))."""

    config: ModelConfig

    @nn.compact
    def __call__(self, hidden):
        return jnp.tanh(
            _dense(self.config, self.config.d_model, (axes.EMBED, None), "dense")(hidden[:, 0])
        )


class LMHead(nn.Module):
    """Next-token logits: tied to the token table (optionally pre-scaled, T5) or its own kernel."""

    config: ModelConfig

    @nn.compact
    def __call__(self, hidden, token_embed: Embed):
        cfg = self.config
        if cfg.tie_embeddings:
            if cfg.scale_tied_logits:
                hidden = hidden * cfg.d_model**-0.5
            logits = token_embed.attend(hidden)
        else:
            logits = _dense(cfg, cfg.vocab_size, (axes.EMBED, axes.VOCAB), "out", use_bias=False)(
                hidden
            ).astype(jnp.float32)
        if cfg.lm_bias:
            _, param_dtype = dtypes(cfg)
            logits = logits + param(
                self, "bias", nn.initializers.zeros, (cfg.vocab_size,), (axes.VOCAB,), param_dtype
            )
        return nn.with_logical_constraint(logits, axes.LOGITS)


class MLMHead(nn.Module):
    """BERT/DistilBERT masked-LM head: dense -> act -> norm -> decoder (tied to the token table
    unless tie_embeddings=False) + bias."""

    config: ModelConfig

    @nn.compact
    def __call__(self, hidden, token_embed: Embed):
        cfg = self.config
        _, param_dtype = dtypes(cfg)
        h = activation_fn(cfg.activation)(
            _dense(cfg, cfg.d_model, (axes.EMBED, None), "transform")(hidden)
        )
        h = make_norm(cfg, name="norm")(h)
        if cfg.tie_embeddings:
            logits = token_embed.attend(h)
        else:
            decoder = _dense(cfg, cfg.vocab_size, (axes.EMBED, axes.VOCAB), "decoder", False)
            logits = decoder(h).astype(jnp.float32)
        logits = logits + param(
            self, "bias", nn.initializers.zeros, (cfg.vocab_size,), (axes.VOCAB,), param_dtype
        )
        return nn.with_logical_constraint(logits, axes.LOGITS)


class ClassificationHead(nn.Module):
    """Sequence classification from the pooled output, or from the first token through a
    pre-classifier dense + activation when the model has no pooler (DistilBERT)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, hidden, pooled, deterministic: bool):
        cfg = self.config
        if pooled is None:
            pooled = activation_fn(cfg.classifier_activation)(
                _dense(cfg, cfg.d_model, (axes.EMBED, None), "dense")(hidden[:, 0])
            )
        pooled = nn.Dropout(cfg.dropout_rate)(pooled, deterministic=deterministic)
        return _dense(cfg, cfg.num_labels, (None, None), "out")(pooled).astype(jnp.float32)


class TokenClassificationHead(nn.Module):
    """Per-token labels (NER): dropout -> dense."""

    config: ModelConfig

    @nn.compact
    def __call__(self, hidden, deterministic: bool):
        cfg = self.config
        hidden = nn.Dropout(cfg.dropout_rate)(hidden, deterministic=deterministic)
        return _dense(cfg, cfg.num_labels, (axes.EMBED, None), "out")(hidden).astype(jnp.float32)
