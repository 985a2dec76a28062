"""Encoder-decoder models (2017 Transformer, T5 v1.0/v1.1, BART): one shared token table,
an encoder stack, a causal decoder stack with cross-attention, and an LM head."""

from __future__ import annotations

import flax.linen as nn

from models.blocks import TransformerStack
from models.config import ModelConfig
from models.heads import (
    LMHead,
    ModelOutput,
)
from models.layers import token_embedding


class EncoderDecoderModel(nn.Module):
    """`encode` and `decode` are usable on their own (decoding reuses one encoding)."""

    # the batch keys __call__ takes (the trainer passes those of a batch it has)
    INPUTS = (
        "input_ids",
        "decoder_input_ids",
        "attention_mask",
        "decoder_attention_mask",
        "positions",
        "decoder_positions",
        "segment_ids",
        "decoder_segment_ids",
    )

    config: ModelConfig

    def setup(self):
        cfg = self.config
        self.token_embed = token_embedding(cfg)
        self.encoder = TransformerStack(cfg, cfg.num_layers, causal=False)
        self.decoder = TransformerStack(
            cfg.decoder_config(), cfg.decoder_layers, causal=True, cross_attention=True
        )
        if cfg.head == "lm":
            self.head = LMHead(cfg)

    def encode(
        self,
        input_ids,
        attention_mask=None,
        positions=None,
        segment_ids=None,
        deterministic: bool = True,
    ):
        """input_ids (B, S) -> encoder hidden states (B, S, D)."""
        return self.encoder(
            self.token_embed(input_ids),
            attention_mask=attention_mask,
            positions=positions,
            segment_ids=segment_ids,
            deterministic=deterministic,
        )

    def decode(
        self,
        decoder_input_ids,
        encoder_hidden_states,
        attention_mask=None,
        decoder_attention_mask=None,
        decoder_positions=None,
        decoder_segment_ids=None,
        segment_ids=None,
        deterministic: bool = True,
        decode: bool = False,
    ) -> ModelOutput:
        """decoder_input_ids (B, T) attending to encoder_hidden_states (B, S, D) ->
        ModelOutput(last_hidden_state (B, T, D), logits (B, T, V)).

        `attention_mask` and `segment_ids` are the encoder's, as in `__call__`.
        """
        cfg = self.config
        hidden = self.decoder(
            self.token_embed(decoder_input_ids),
            attention_mask=decoder_attention_mask,
            positions=decoder_positions,
            segment_ids=decoder_segment_ids,
            encoded=encoder_hidden_states,
            encoder_attention_mask=attention_mask,
            encoder_segment_ids=segment_ids,
            deterministic=deterministic,
            decode=decode,
        )
        logits = self.head(hidden, self.token_embed) if cfg.head == "lm" else None
        return ModelOutput(last_hidden_state=hidden, logits=logits)

    def __call__(
        self,
        input_ids,
        decoder_input_ids,
        attention_mask=None,
        decoder_attention_mask=None,
        positions=None,
        decoder_positions=None,
        segment_ids=None,
        decoder_segment_ids=None,
        deterministic: bool = True,
        decode: bool = False,
    ) -> ModelOutput:
        encoded = self.encode(input_ids, attention_mask, positions, segment_ids, deterministic)
        out = self.decode(
            decoder_input_ids,
            encoded,
            attention_mask,
            decoder_attention_mask,
            decoder_positions,
            decoder_segment_ids,
            segment_ids,
            deterministic,
            decode,
        )
        return out.replace(encoder_last_hidden_state=encoded)
