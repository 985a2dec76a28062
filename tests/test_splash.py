"""Splash attention on a CPU, in Pallas interpret mode, through the models' own kernel path.

`attention.interpret_kernels()` lets `attention_kernel="splash"` run its TPU kernel in Pallas'
interpreter here instead of falling back to xla. Each case builds a tiny model with the splash
kernel and the same parameters with the xla reference, and compares outputs at the real tokens and
the gradients of every parameter. Measured on a 2-core CPU (jax 0.10.2, f32, 2 heads of 16):

  case                             forward  gradients (largest gradient)
  causal (gpt2, 128 tokens)        1.5e-7   3.7e-8 (0.11)
  causal, left padding             1.2e-7   3.0e-8 (0.091)
  packed segments (llama, 256)     1.2e-7   1.5e-8 (0.079)
  bidirectional (bert, 128)        7.2e-7   6.0e-8 (1.2)
  padding (bert, 128)              4.8e-7   1.2e-7 (1.1)
  packed segments + padding        3.6e-7   6.0e-8 (1.0)
  encoder-decoder, padding (bart)  8.9e-8   7.5e-9 (0.045)
  the function alone, every row    4.8e-7   (8 query / 2 kv heads of 64, causal + padding)

Tolerances: 1e-5 forward, 1e-4 gradients (absolute). Before key padding was folded into splash's
segment ids, splash ignored the padding mask: the padded encoder was off by 3e-3 forward and 5e-4
in gradients, the function alone by 0.64. Each case takes 2-7 s; the default run keeps causal,
packed segments, padding and the fallbacks (about 25 s), `-m slow` adds the other four.
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from models import attention

T = 128


def _packed(t, cuts):
    """Segment ids 1, 2 split at `cuts` (one per row), positions restarting in each segment."""
    cut = jnp.asarray(cuts)[:, None]
    slots = jnp.arange(t)[None, :]
    return (slots >= cut).astype(jnp.int32) + 1, jnp.where(slots >= cut, slots - cut, slots)


def _inputs(case, t):
    """Model inputs for `case` and the (B, T) mask of the tokens whose outputs are compared."""
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 128, (2, t)), jnp.int32)
    kw, real = {"input_ids": ids}, jnp.ones((2, t), jnp.int32)
    if "padding" in case:
        real = jnp.stack([jnp.ones(t, jnp.int32), (jnp.arange(t) < t - 37).astype(jnp.int32)])
        if "left" in case:
            real = real[:, ::-1]
        kw["attention_mask"] = real
    if "segments" in case:
        kw["segment_ids"], kw["positions"] = _packed(t, [t // 3, t // 2])
        if "padding" in case:  # the padded tail is its own segment 0, as packing writes it
            kw["segment_ids"] = kw["segment_ids"] * real
    return kw, real


def _run(config, kernel, params, kw, real):
    """Outputs (logits, or the last hidden state), parameter gradients, and whether a Pallas
    kernel ran, under `kernel` with the interpret switch on while tracing."""
    model = models.build(config.replace(attention_kernel=kernel))

    def loss(p):
        out = model.apply({"params": p}, **kw)
        h = out.logits if out.logits is not None else out.last_hidden_state  # (B, T, V|D)
        return jnp.sum(jnp.where(real[..., None] > 0, h, 0.0) ** 2) * 1e-3, h

    with attention.interpret_kernels():
        traced = jax.jit(jax.value_and_grad(loss, has_aux=True)).trace(params)
    (_, out), grads = traced.lower().compile()(params)
    return out, grads, "pallas_call" in str(traced.jaxpr)


def _compare(name, case, t=T, **overrides):
    config = models.get_config(name, max_positions=t, num_heads=2, **overrides)
    kw, real = _inputs(case, t)
    if config.family == "encoder_decoder":
        kw["decoder_input_ids"] = kw["input_ids"]
    init_kw = {k: v for k, v in kw.items() if k != "input_ids"}
    ref_model = models.build(config.replace(attention_kernel="xla"))
    params = ref_model.init(jax.random.key(0), kw["input_ids"], **init_kw)["params"]
    out_ref, g_ref, _ = _run(config, "xla", params, kw, real)
    out, grads, ran_splash = _run(config, "splash", params, kw, real)
    assert ran_splash  # not a fallback
    assert bool(jnp.isfinite(out).all())  # padded rows too: no empty softmax
    keep = np.asarray(real, bool)
    np.testing.assert_allclose(np.asarray(out)[keep], np.asarray(out_ref)[keep], atol=1e-5)
    assert jax.tree.structure(grads) == jax.tree.structure(g_ref)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_causal_decoder_matches_xla():
    _compare("gpt2-tiny", "causal")


def test_packed_segments_match_xla():
    """Packed rows (rotary positions restarting per segment, grouped-query heads)."""
    _compare("llama-tiny", "segments", t=256, num_kv_heads=1)


@pytest.mark.slow
def test_causal_decoder_with_left_padding_matches_xla():
    _compare("gpt2-tiny", "causal left padding")


@pytest.mark.slow
def test_bidirectional_encoder_matches_xla():
    _compare("bert-tiny", "full")


def test_padded_encoder_matches_xla():
    """Key padding, which splash takes as a segment of its own."""
    _compare("bert-tiny", "padding")


@pytest.mark.slow
def test_packed_segments_with_padding_match_xla():
    _compare("bert-tiny", "segments padding")


@pytest.mark.slow
def test_encoder_decoder_with_padding_matches_xla():
    """Encoder self-, decoder causal and cross-attention (encoder padding) all run splash."""
    _compare("bart-tiny", "padding")


def test_additive_bias_falls_back_to_xla_with_one_warning(caplog):
    """T5's relative-position bias: splash cannot add it, so the switch changes nothing."""
    attention._WARNED.clear()
    config = models.get_config("gpt2-tiny", max_positions=T, num_heads=2, position="relative")
    kw, real = _inputs("causal", T)
    params = models.build(config).init(jax.random.key(0), kw["input_ids"])["params"]
    with caplog.at_level(logging.WARNING, logger="models.attention"):
        out, grads, _ = _run(config, "xla", params, kw, real)
        fell_back = _run(config, "splash", params, kw, real)
    assert not fell_back[2]
    np.testing.assert_array_equal(fell_back[0], out)
    for a, b in zip(jax.tree.leaves(fell_back[1]), jax.tree.leaves(grads)):
        np.testing.assert_array_equal(a, b)
    warnings = [r.getMessage() for r in caplog.records if "splash" in r.getMessage()]
    assert warnings == [
        "attention kernel 'splash' does not take an additive bias (T5 relative "
        "positions); using xla"
    ]


def test_kernel_matches_reference_on_every_row():
    """The function itself, as the TPU test calls it: grouped-query heads, a full causal and padding
    mask with segment ids, padded query rows included."""
    keys = jax.random.split(jax.random.key(1), 3)
    q = jax.random.normal(keys[0], (2, T, 8, 64))
    k, v = (jax.random.normal(key, (2, T, 2, 64)) for key in keys[1:])
    valid = jnp.arange(T)[None, :] < jnp.array([[T], [85]])  # (B, S)
    mask = jnp.tril(jnp.ones((T, T), bool))[None, None] & valid[:, None, None, :]  # (B, 1, T, S)
    seg = jnp.ones((2, T), jnp.int32)
    ref = attention.reference_attention(q, k, v, mask=mask, scale=0.125)
    with attention.interpret_kernels():
        out = jax.jit(
            lambda q, k, v: attention.dot_product_attention(
                q, k, v, kernel="splash", mask=mask, scale=0.125, causal=True, segment_ids=seg
            )
        )(q, k, v)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_a_mask_over_queries_without_segment_ids_falls_back(caplog):
    """Splash takes key padding and segment ids only; any other mask (the causal mask over cache
    slots while decoding, packed cross-attention) goes to the reference."""
    attention._WARNED.clear()
    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(key, (1, T, 2, 16)) for key in keys)
    mask = jnp.tril(jnp.ones((T, T), bool))[None, None]  # (1, 1, T, S)
    ref = attention.reference_attention(q, k, v, mask=mask, scale=0.25)
    with attention.interpret_kernels(), caplog.at_level(logging.WARNING, "models.attention"):
        out = attention.dot_product_attention(q, k, v, kernel="splash", mask=mask, scale=0.25)
    np.testing.assert_array_equal(out, ref)
    assert "takes only key padding and packed segments" in caplog.text


def test_the_switch_is_off_outside_its_block():
    with pytest.raises(RuntimeError), attention.interpret_kernels():
        assert attention._INTERPRET[0]
        raise RuntimeError
    assert not attention._INTERPRET[0]
    reason = attention._unsupported(
        "splash", *jnp.zeros((2, 1, T, 2, 16)), mask=None, bias=None, causal=True, segments=False
    )
    assert reason == "needs a TPU (backend is cpu)"
