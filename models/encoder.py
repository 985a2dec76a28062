"""Encoder-only models (BERT, DistilBERT, MiniLM): bidirectional stack, pooler, heads."""

from __future__ import annotations

import flax.linen as nn

from models.blocks import TransformerStack
from models.config import ModelConfig
from models.heads import (
    ClassificationHead,
    MLMHead,
    ModelOutput,
    Pooler,
    TokenClassificationHead,
)
from models.layers import token_embedding


class EncoderModel(nn.Module):
    """token_embed -> encoder stack -> [pooler] -> [head: mlm | classification |
    token_classification]."""

    # the batch keys __call__ takes (the trainer passes those of a batch it has)
    INPUTS = ("input_ids", "attention_mask", "token_type_ids", "positions", "segment_ids")

    config: ModelConfig

    def setup(self):
        cfg = self.config
        self.token_embed = token_embedding(cfg)
        self.encoder = TransformerStack(cfg, cfg.num_layers, causal=False)
        if cfg.pooler:
            self.pooler = Pooler(cfg)
        if cfg.head == "mlm":
            self.head = MLMHead(cfg)
        elif cfg.head == "classification":
            self.head = ClassificationHead(cfg)
        elif cfg.head == "token_classification":
            self.head = TokenClassificationHead(cfg)

    def __call__(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        positions=None,
        segment_ids=None,
        deterministic: bool = True,
    ) -> ModelOutput:
        """input_ids (B, T) -> ModelOutput(last_hidden_state (B, T, D), logits, pooler_output)."""
        cfg = self.config
        hidden = self.encoder(
            self.token_embed(input_ids),
            attention_mask=attention_mask,
            positions=positions,
            segment_ids=segment_ids,
            token_type_ids=token_type_ids,
            deterministic=deterministic,
        )
        pooled = self.pooler(hidden) if cfg.pooler else None
        logits = None
        if cfg.head == "mlm":
            logits = self.head(hidden, self.token_embed)
        elif cfg.head == "classification":
            logits = self.head(hidden, pooled, deterministic)
        elif cfg.head == "token_classification":
            logits = self.head(hidden, deterministic)
        return ModelOutput(last_hidden_state=hidden, logits=logits, pooler_output=pooled)
