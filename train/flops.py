"""Analytic FLOP counts for a training step (the numerator of MFU).

Counted: every matmul (2 FLOPs per multiply-add) in the attention projections, the MLP and the
output head, plus the two attention matmuls (Q.K^T and probabilities.V). A backward pass costs
twice its forward pass, so a training step is 3x the forward FLOPs. Causal self-attention is
counted at half (each query sees on average half the keys); bidirectional and cross-attention in
full. Not counted: embedding lookups, norms, softmax, activations and the optimizer update
(all O(params) or O(tokens x width), under 1% at the sizes that matter).

Per token, for a layer of width d, q/k/v/out projections of `inner` = heads x head_dim (k/v
`kv_inner` under grouped-query attention), MLP width f and context T:

    projections  2 * (2 * d * inner + 2 * d * kv_inner)
    MLP          2 * d * f * (3 if gated else 2)
    attention    2 * 2 * inner * T   (x 1/2 when causal)
    LM head      2 * d * V  (once, after the last layer)
"""

from __future__ import annotations

from models.config import ModelConfig


def _layer_matmul_flops(cfg: ModelConfig, cross: bool = False) -> int:
    d, inner = cfg.d_model, cfg.num_heads * cfg.dim_per_head
    kv_inner = cfg.kv_heads * cfg.dim_per_head
    attention = 2 * (2 * d * inner + 2 * d * kv_inner)
    mlp = 2 * d * cfg.d_ff * (3 if cfg.gated_mlp else 2)
    return attention * (2 if cross else 1) + mlp


def _attention_flops(cfg: ModelConfig, context: float) -> float:
    return 2 * 2 * cfg.num_heads * cfg.dim_per_head * context


def forward_flops_per_sequence(
    cfg: ModelConfig, seq_len: int, target_len: int | None = None
) -> float:
    """Forward FLOPs for one sequence (decoder-only: seq_len tokens; encoder-decoder: seq_len
    encoder tokens and target_len decoder tokens; encoder-only: seq_len tokens)."""
    head = 2 * cfg.d_model * cfg.vocab_size if cfg.head in ("lm", "mlm") else 0
    if cfg.family == "encoder":
        per_token = cfg.num_layers * (_layer_matmul_flops(cfg) + _attention_flops(cfg, seq_len))
        return seq_len * (per_token + head)
    if cfg.family == "decoder":
        per_token = cfg.num_layers * (_layer_matmul_flops(cfg) + _attention_flops(cfg, seq_len / 2))
        return seq_len * (per_token + head)
    t = target_len or seq_len
    encoder = seq_len * cfg.num_layers * (_layer_matmul_flops(cfg) + _attention_flops(cfg, seq_len))
    dec = cfg.decoder_config()
    decoder = t * (
        cfg.decoder_layers
        * (
            _layer_matmul_flops(dec, cross=True)
            + _attention_flops(dec, t / 2)
            + _attention_flops(dec, seq_len)
        )
        + head
    )
    return encoder + decoder


def train_flops_per_step(
    cfg: ModelConfig, batch: int, seq_len: int, target_len: int | None = None
) -> float:
    """FLOPs of one training step (forward + backward = 3x forward) on `batch` sequences."""
    return 3.0 * batch * forward_flops_per_sequence(cfg, seq_len, target_len)
