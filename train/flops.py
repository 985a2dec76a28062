"""Analytic FLOP counts for a training step (the numerator of MFU).

Counted: every matmul, at 2 FLOPs per multiply-add, in the attention projections, the MLP, the
attention itself (Q.K^T and probabilities.V) and the output head (the MLM head's transform dense
included). A backward pass costs twice its forward pass (one matmul for the input gradient, one
for the weight gradient), so a training step is 3x the forward FLOPs. Causal self-attention is
counted at half: query t attends to t+1 keys, on average T/2 (PaLM's and MaxText's convention for
useful FLOPs, although the XLA kernel computes the full T x T square and masks it). Bidirectional
and cross-attention count in full. Not counted: embedding lookups, norms, softmax, activations,
the loss and the optimizer update (O(params) or O(tokens x width): a few percent at the sizes in
docs/benchmarks, and not done by the matrix units that define the peak).

Per token, for a layer of width d with `inner` = heads x head_dim (k/v `kv_inner` under
grouped-query attention), MLP width f, attended context S (T/2 causal, T or the source length
otherwise) and vocabulary V:

    q, k, v, out projections   2 * (2 * d * inner + 2 * d * kv_inner)
    cross-attention (enc-dec)  the same again, its k/v over the encoder tokens (counted per
                               decoder token: exact when source and target lengths are equal)
    MLP                        2 * d * f * (3 if gated else 2)
    attention                  2 * 2 * inner * S        (Q.K^T and P.V)
    LM head                    2 * d * V                (once per token, after the last layer)
    MLM head                   2 * d * d + 2 * d * V    (transform dense, then the decoder)

Example, gpt2 (d=768, 12 heads x 64, f=3072, 12 layers, V=50257) at 256 tokens, per token:
projections 4,718,592 + MLP 9,437,184 + causal attention 4 x 768 x 128 = 393,216, times 12
layers, plus the head 77,194,752: 251,782,656 forward FLOPs; a step of batch 8 is
3 x 2048 x 251,782,656 = 1.547 TFLOP. `flops_breakdown` lists the terms.

`six_n_flops` is the rule of thumb 6 * N * tokens plus dense attention (Kaplan et al.), which the
planner reports beside this count as a cross-check.
"""

from __future__ import annotations

from models.config import ModelConfig


def _projection_flops(cfg: ModelConfig) -> int:
    d, inner = cfg.d_model, cfg.num_heads * cfg.dim_per_head
    kv_inner = cfg.kv_heads * cfg.dim_per_head
    return 2 * (2 * d * inner + 2 * d * kv_inner)


def _mlp_flops(cfg: ModelConfig) -> int:
    return 2 * cfg.d_model * cfg.d_ff * (3 if cfg.gated_mlp else 2)


def _attention_flops(cfg: ModelConfig, context: float) -> float:
    return 2 * 2 * cfg.num_heads * cfg.dim_per_head * context


def _head_flops(cfg: ModelConfig) -> int:
    if cfg.head == "lm":
        return 2 * cfg.d_model * cfg.vocab_size
    if cfg.head == "mlm":
        return 2 * cfg.d_model * cfg.d_model + 2 * cfg.d_model * cfg.vocab_size
    return 0


def flops_breakdown(
    cfg: ModelConfig, seq_len: int, target_len: int | None = None, *, causal_factor: float = 0.5
) -> dict[str, float]:
    """Forward FLOPs of one sequence, term by term (the keys say which stack and matmul).

    Args:
      cfg: the model.
      seq_len: tokens per sequence (the encoder's for encoder-decoders).
      target_len: decoder tokens of an encoder-decoder (default seq_len).
      causal_factor: the fraction of causal attention counted; 0.5 (the default) counts useful
        FLOPs, 1.0 what a dense masked kernel computes (to compare with XLA's cost analysis).
    """
    out: dict[str, float] = {}
    if cfg.family in ("encoder", "decoder"):
        stack = cfg.family
        context = seq_len * (causal_factor if cfg.family == "decoder" else 1.0)
        out[f"{stack}.projections"] = seq_len * cfg.num_layers * _projection_flops(cfg)
        out[f"{stack}.mlp"] = seq_len * cfg.num_layers * _mlp_flops(cfg)
        out[f"{stack}.attention"] = seq_len * cfg.num_layers * _attention_flops(cfg, context)
        out["head"] = seq_len * _head_flops(cfg)
        return out
    t = target_len or seq_len
    dec, layers = cfg.decoder_config(), cfg.decoder_layers
    out["encoder.projections"] = seq_len * cfg.num_layers * _projection_flops(cfg)
    out["encoder.mlp"] = seq_len * cfg.num_layers * _mlp_flops(cfg)
    out["encoder.attention"] = seq_len * cfg.num_layers * _attention_flops(cfg, seq_len)
    out["decoder.projections"] = t * layers * _projection_flops(dec)
    out["decoder.cross_projections"] = t * layers * _projection_flops(dec)
    out["decoder.mlp"] = t * layers * _mlp_flops(dec)
    out["decoder.attention"] = t * layers * _attention_flops(dec, t * causal_factor)
    out["decoder.cross_attention"] = t * layers * _attention_flops(dec, seq_len)
    out["head"] = t * _head_flops(cfg)
    return out


def forward_flops_per_sequence(
    cfg: ModelConfig, seq_len: int, target_len: int | None = None, *, causal_factor: float = 0.5
) -> float:
    """Forward FLOPs for one sequence (decoder-only: seq_len tokens; encoder-decoder: seq_len
    encoder tokens and target_len decoder tokens; encoder-only: seq_len tokens)."""
    return float(
        sum(flops_breakdown(cfg, seq_len, target_len, causal_factor=causal_factor).values())
    )


def train_flops_per_step(
    cfg: ModelConfig, batch: int, seq_len: int, target_len: int | None = None
) -> float:
    """FLOPs of one training step (forward + backward = 3x forward) on `batch` sequences."""
    return 3.0 * batch * forward_flops_per_sequence(cfg, seq_len, target_len)


def six_n_flops(
    cfg: ModelConfig, num_params: int, batch: int, seq_len: int, target_len: int | None = None
) -> dict[str, float]:
    """6 * N * tokens (forward + backward matmuls over N parameters, without position tables)
    plus attention scores and values (12 * layers * d_attn * key length * query tokens), as
    `model`, `attention` and `tokens`."""
    d_attn = cfg.num_heads * cfg.dim_per_head
    n = num_params
    if cfg.position == "learned":
        n -= cfg.max_positions * cfg.d_model
    if target_len is None:
        tokens = batch * seq_len
        attention = 12 * cfg.num_layers * d_attn * seq_len * tokens
    else:
        tokens = batch * (seq_len + target_len)
        keys = cfg.num_layers * seq_len**2 + cfg.decoder_layers * (
            target_len**2 + target_len * seq_len
        )
        attention = 12 * d_attn * batch * keys
    return {"model": 6 * n * tokens, "attention": attention, "tokens": tokens}
