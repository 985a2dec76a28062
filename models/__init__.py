"""Triptych models: encoder-only, decoder-only and encoder-decoder transformers in Flax linen.

import models
config = models.get_config("gpt2")        # a named architecture (published sizes)
model = models.build(config)              # a linen Module
models.list_architectures()
"""

from __future__ import annotations

import flax.linen as nn

from models.config import ConfigError, ModelConfig, get_config, list_architectures
from models.decoder import DecoderModel
from models.encoder import EncoderModel
from models.encoder_decoder import EncoderDecoderModel
from models.heads import ModelOutput

_FAMILY_MODULES = {
    "encoder": EncoderModel,
    "decoder": DecoderModel,
    "encoder_decoder": EncoderDecoderModel,
}


def build(config: ModelConfig | str, **overrides) -> nn.Module:
    """A linen Module for `config` (or for the named architecture, with field overrides)."""
    if isinstance(config, str):
        config = get_config(config, **overrides)
    elif overrides:
        config = config.replace(**overrides)
    return _FAMILY_MODULES[config.family](config)


__all__ = [
    "ConfigError",
    "DecoderModel",
    "EncoderDecoderModel",
    "EncoderModel",
    "ModelConfig",
    "ModelOutput",
    "build",
    "get_config",
    "list_architectures",
]
