"""The analytic FLOP formula (train/flops.py): hand counts term by term, and XLA's own count."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

import models
from models.summary import dummy_inputs
from train.flops import flops_breakdown, forward_flops_per_sequence, train_flops_per_step


def test_gpt2_tiny_hand_count():
    # gpt2-tiny: d=32, 4 heads x 8, f=64, 2 layers, V=128; 16 tokens, causal context 16/2 = 8.
    cfg = models.get_config("gpt2-tiny")
    terms = flops_breakdown(cfg, 16)
    assert terms == {
        "decoder.projections": 16 * 2 * (2 * (2 * 32 * 32 + 2 * 32 * 32)),  # 262,144
        "decoder.mlp": 16 * 2 * (2 * 32 * 64 * 2),  # 262,144
        "decoder.attention": 16 * 2 * (2 * 2 * 32 * 8),  # 32,768
        "head": 16 * (2 * 32 * 128),  # 131,072
    }
    assert forward_flops_per_sequence(cfg, 16) == 688_128
    assert train_flops_per_step(cfg, 2, 16) == 3 * 2 * 688_128  # backward = 2x forward


def test_gpt2_published_size():
    # 251,782,656 forward FLOPs per token at 256 tokens (the docstring's worked example).
    cfg = models.get_config("gpt2")
    assert forward_flops_per_sequence(cfg, 256) == 256 * 251_782_656
    assert train_flops_per_step(cfg, 8, 256) == pytest.approx(1.546952638464e12)


def test_causal_attention_is_counted_at_half():
    cfg = models.get_config("gpt2-tiny")
    half = flops_breakdown(cfg, 16)["decoder.attention"]
    full = flops_breakdown(cfg, 16, causal_factor=1.0)["decoder.attention"]
    assert full == 2 * half
    # the same shapes bidirectional (an encoder) count the full square
    enc = flops_breakdown(cfg.replace(family="encoder", head="none"), 16)
    assert enc["encoder.attention"] == full


def test_grouped_query_gated_mlp_hand_count():
    # llama-tiny: 4 query heads, 2 kv heads of 8 (kv_inner 16), SwiGLU (3 matrices), untied head.
    cfg = models.get_config("llama-tiny")
    terms = flops_breakdown(cfg, 10)
    assert terms["decoder.projections"] == 10 * 2 * 2 * (2 * 32 * 32 + 2 * 32 * 16)
    assert terms["decoder.mlp"] == 10 * 2 * (2 * 32 * 64 * 3)
    assert terms["decoder.attention"] == 10 * 2 * (4 * 32 * 5)


def test_mlm_head_counts_its_transform():
    cfg = models.get_config("bert-tiny", head="mlm")
    assert flops_breakdown(cfg, 4)["head"] == 4 * (2 * 32 * 32 + 2 * 32 * 128)
    assert flops_breakdown(cfg.replace(head="none"), 4)["head"] == 0


def test_encoder_decoder_hand_count():
    # t5-tiny: 2+2 layers; 12 encoder tokens, 6 decoder tokens (causal self-attention at 3,
    # cross-attention over all 12 encoder tokens).
    cfg = models.get_config("t5-tiny")
    t = flops_breakdown(cfg, 12, 6)
    proj = 2 * (2 * 32 * 32 + 2 * 32 * 32)
    mlp = 2 * 32 * 64 * 2
    assert t["encoder.projections"] == 12 * 2 * proj
    assert t["encoder.mlp"] == 12 * 2 * mlp
    assert t["encoder.attention"] == 12 * 2 * (4 * 32 * 12)
    assert t["decoder.projections"] == t["decoder.cross_projections"] == 6 * 2 * proj
    assert t["decoder.mlp"] == 6 * 2 * mlp
    assert t["decoder.attention"] == 6 * 2 * (4 * 32 * 3)
    assert t["decoder.cross_attention"] == 6 * 2 * (4 * 32 * 12)
    assert t["head"] == 6 * 2 * 32 * 128


def _xla_forward_flops(cfg, batch, length):
    net = models.build(cfg)
    ids = jnp.ones((batch, length), jnp.int32)
    inputs = {"input_ids": ids}
    if cfg.family == "encoder_decoder":
        inputs["decoder_input_ids"] = ids
    params = jax.eval_shape(
        lambda: nn.meta.unbox(net.init(jax.random.key(0), **dummy_inputs(cfg))["params"])
    )
    fwd = jax.jit(lambda p, kw: net.apply({"params": p}, **kw).logits)
    cost = fwd.lower(params, inputs).compile().cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]


WIDE = dict(d_model=256, num_heads=4, d_ff=1024, vocab_size=2048, max_positions=128)


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("gpt2-tiny", WIDE),
        ("bert-tiny", dict(WIDE, head="mlm")),
        ("t5-tiny", dict(WIDE, max_positions=512)),
        ("llama-tiny", dict(WIDE, num_kv_heads=2)),
    ],
)
def test_matches_xla_cost_analysis(name, overrides):
    """XLA counts what it computes: with the reference kernel the dense causal square (so
    causal_factor=1.0), with the blocked kernel (CPU default) the blocks on and below the
    diagonal (two blocks of 64 at 128 tokens: 3/4 of the square), and the elementwise ops we
    leave out, which stay within 5% at these widths."""
    cfg = models.get_config(name, **overrides)
    xla = _xla_forward_flops(cfg.replace(attention_kernel="xla"), 2, 128)
    ours = 2 * forward_flops_per_sequence(cfg, 128, 128, causal_factor=1.0)
    assert ours <= xla <= 1.05 * ours
    blocked = _xla_forward_flops(cfg.replace(attention_kernel="blocked"), 2, 128)
    ours_blocked = 2 * forward_flops_per_sequence(cfg, 128, 128, causal_factor=0.75)
    assert ours_blocked <= blocked <= 1.05 * ours_blocked
    assert (blocked < xla) == (cfg.family != "encoder")
    # the useful count leaves out the masked half of each causal square, which XLA computes
    masked = ours - 2 * forward_flops_per_sequence(cfg, 128, 128)
    assert (masked > 0) == (cfg.family != "encoder")
