"""Decoder-only models (GPT, GPT-2, GPT-3 sizes, Llama-style): causal stack and LM head."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from models.blocks import TransformerStack
from models.config import ModelConfig
from models.heads import (
    ClassificationHead,
    LMHead,
    ModelOutput,
    TokenClassificationHead,
)
from models.layers import token_embedding


def last_token(hidden, attention_mask):
    """(B, T, D) -> (B, D) at each row's last real token (right padding)."""
    if attention_mask is None:
        return hidden[:, -1]
    last = jnp.maximum(jnp.sum(attention_mask.astype(jnp.int32), axis=1) - 1, 0)
    return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]


class DecoderModel(nn.Module):
    """token_embed -> causal stack -> [head: lm | classification (last token) |
    token_classification]."""

    # the batch keys __call__ takes (the trainer passes those of a batch it has)
    INPUTS = ("input_ids", "attention_mask", "positions", "segment_ids")

    config: ModelConfig

    def setup(self):
        cfg = self.config
        self.token_embed = token_embedding(cfg)
        self.decoder = TransformerStack(cfg, cfg.num_layers, causal=True)
        if cfg.head == "lm":
            self.head = LMHead(cfg)
        elif cfg.head == "classification":
            self.head = ClassificationHead(cfg)
        elif cfg.head == "token_classification":
            self.head = TokenClassificationHead(cfg)

    def __call__(
        self,
        input_ids,
        attention_mask=None,
        positions=None,
        segment_ids=None,
        deterministic: bool = True,
        decode: bool = False,
    ) -> ModelOutput:
        """input_ids (B, T) -> ModelOutput(last_hidden_state (B, T, D), logits (B, T, V)).

        With decode=True the call appends to the KV cache (see TransformerStack).
        """
        cfg = self.config
        hidden = self.decoder(
            self.token_embed(input_ids),
            attention_mask=attention_mask,
            positions=positions,
            segment_ids=segment_ids,
            deterministic=deterministic,
            decode=decode,
        )
        logits = None
        if cfg.head == "lm":
            logits = self.head(hidden, self.token_embed)
        elif cfg.head == "classification":
            logits = self.head(hidden, last_token(hidden, attention_mask), deterministic)
        elif cfg.head == "token_classification":
            logits = self.head(hidden, deterministic)
        return ModelOutput(last_hidden_state=hidden, logits=logits)
