"""Attention kernels against the XLA reference, wherever each can run, and the fallback."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from models import attention, masks

BACKEND = jax.default_backend()


def _inputs(dtype=jnp.float32, b=2, t=128, n=8, k=2, h=64, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (b, t, n, h), dtype)
    kk = jax.random.normal(keys[1], (b, t, k, h), dtype)
    v = jax.random.normal(keys[2], (b, t, k, h), dtype)
    valid = jnp.arange(t)[None, :] < jnp.array([[t], [2 * t // 3]])
    slots = masks.arange_slots(b, t)
    mask = masks.combine(masks.key_mask(valid), masks.causal_mask(slots, slots))
    return q, kk, v, mask


def _relative_bias(b, n, t):
    rel = jnp.arange(t)[None, :] - jnp.arange(t)[:, None]
    return jnp.broadcast_to(
        jnp.sin(rel / 7.0)[None, None] * jnp.arange(1, n + 1)[None, :, None, None] / n, (b, n, t, t)
    ).astype(jnp.float32)


def test_reference_matches_naive_softmax():
    q, k, v, mask = _inputs(t=16, n=4, k=4, h=8)
    out = attention.reference_attention(q, k, v, mask=mask, scale=8**-0.5)
    logits = jnp.einsum("btnh,bsnh->bnts", q, k) * 8**-0.5
    logits = jnp.where(mask, logits, -jnp.inf)
    naive = jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(logits, -1), v)
    np.testing.assert_allclose(out, naive, atol=1e-5)


@pytest.mark.parametrize("with_bias", [False, True])
def test_jax_kernel_matches_reference(with_bias):
    q, k, v, mask = _inputs()
    bias = _relative_bias(2, 8, 128) if with_bias else None
    ref = attention.reference_attention(q, k, v, mask=mask, bias=bias, scale=0.125)
    out = attention.dot_product_attention(q, k, v, kernel="jax", mask=mask, bias=bias, scale=0.125)
    np.testing.assert_allclose(out, ref, atol=2e-5)


@pytest.mark.skipif(BACKEND != "gpu", reason="cuDNN attention needs an NVIDIA GPU")
@pytest.mark.parametrize("with_bias", [False, True])
def test_cudnn_kernel_matches_reference(with_bias):
    q, k, v, mask = _inputs(jnp.bfloat16)
    bias = _relative_bias(2, 8, 128) if with_bias else None
    ref = attention.reference_attention(
        q.astype(jnp.float32),
        k.astype(jnp.float32),
        v.astype(jnp.float32),
        mask=mask,
        bias=bias,
        scale=0.125,
    )
    out = jax.jit(
        lambda q, k, v: attention.dot_product_attention(
            q, k, v, kernel="cudnn", mask=mask, bias=bias, scale=0.125
        )
    )(q, k, v)
    assert (
        "cudnn"
        in jax.jit(
            lambda q, k, v: attention.dot_product_attention(
                q, k, v, kernel="cudnn", mask=mask, bias=bias, scale=0.125
            )
        )
        .lower(q, k, v)
        .compile()
        .as_text()
        .lower()
    )
    np.testing.assert_allclose(out.astype(jnp.float32), ref, atol=3e-2)


def _value_and_grads(fn, q, k, v):
    loss = lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) ** 2)  # noqa: E731
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)


@pytest.mark.skipif(BACKEND != "gpu", reason="cuDNN attention needs an NVIDIA GPU")
@pytest.mark.parametrize("padding,with_bias", [(False, False), (True, False), (True, True)])
def test_cudnn_causal_flag_gradients_match_reference(padding, with_bias):
    """The training path: `causal=True` (cuDNN's causal mask type) with no mask tensor, or with a
    padding mask and T5's bias beside it; values and gradients against the f32 reference."""
    q, k, v, full = _inputs(jnp.bfloat16, t=256)
    pad = masks.key_mask(jnp.arange(256)[None, :] < jnp.array([[256], [170]]))
    bias = _relative_bias(1, 8, 256) if with_bias else None
    slots = masks.arange_slots(2, 256)
    ref_mask = full if padding else masks.causal_mask(slots, slots)
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    ref = _value_and_grads(
        lambda q, k, v: attention.reference_attention(
            q, k, v, mask=ref_mask, bias=bias, scale=0.125
        ),
        *f32,
    )
    out = _value_and_grads(
        lambda q, k, v: attention.dot_product_attention(
            q,
            k,
            v,
            kernel="cudnn",
            mask=pad if padding else None,
            bias=bias,
            scale=0.125,
            causal=True,
        ),
        q,
        k,
        v,
    )
    np.testing.assert_allclose(float(out[0]), float(ref[0]), rtol=2e-2)
    for a, b in zip(out[1], ref[1]):
        scale = float(jnp.abs(b).max())
        np.testing.assert_allclose(np.asarray(a, np.float32), b, atol=3e-2 * scale)


@pytest.mark.skipif(BACKEND != "gpu", reason="cuDNN attention needs an NVIDIA GPU")
def test_cudnn_bias_gradient_matches_reference():
    """T5's relative-position bias is learned through the attention's bias gradient: cuDNN's
    dbias (causal, with padding) equals the reference's."""
    q, k, v, full = _inputs(jnp.bfloat16, t=256)
    pad = masks.key_mask(jnp.arange(256)[None, :] < jnp.array([[256], [170]]))
    bias = _relative_bias(1, 8, 256)

    def bias_grad(fn):
        loss = lambda b: jnp.sum(fn(b).astype(jnp.float32) ** 2)  # noqa: E731
        return jax.jit(jax.grad(loss))(bias)

    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    ref = bias_grad(lambda b: attention.reference_attention(*f32, mask=full, bias=b, scale=0.125))
    out = bias_grad(
        lambda b: attention.dot_product_attention(
            q, k, v, kernel="cudnn", mask=pad, bias=b, scale=0.125, causal=True
        )
    )
    assert float(jnp.abs(ref).max()) > 0
    np.testing.assert_allclose(out, ref, atol=3e-2 * float(jnp.abs(ref).max()))


@pytest.mark.parametrize("kernel", ["xla", "jax", "blocked"])
def test_causal_flag_adds_the_causal_mask(kernel):
    """`causal=True` with only a padding mask (as the stack passes it outside decoding) equals the
    reference with the full causal-and-padding mask, in every kernel that runs here."""
    q, k, v, full = _inputs(t=128, h=16)
    pad = masks.key_mask(jnp.arange(128)[None, :] < jnp.array([[128], [85]]))
    ref = attention.reference_attention(q, k, v, mask=full, scale=0.25)
    out = attention.dot_product_attention(q, k, v, kernel=kernel, mask=pad, scale=0.25, causal=True)
    np.testing.assert_allclose(out, ref, atol=2e-5)
    alone = attention.dot_product_attention(q, k, v, kernel=kernel, scale=0.25, causal=True)
    slots = masks.arange_slots(2, 128)
    causal = attention.reference_attention(
        q, k, v, mask=masks.causal_mask(slots, slots), scale=0.25
    )
    np.testing.assert_allclose(alone, causal, atol=2e-5)


@pytest.mark.skipif(BACKEND != "tpu", reason="splash attention needs a TPU")
def test_splash_kernel_matches_reference():
    q, k, v, mask = _inputs(jnp.bfloat16, k=8)
    seg = jnp.ones(q.shape[:2], jnp.int32)
    ref = attention.reference_attention(q, k, v, mask=mask, scale=0.125)
    out = attention.dot_product_attention(
        q, k, v, kernel="splash", mask=mask, scale=0.125, causal=True, segment_ids=seg
    )
    np.testing.assert_allclose(out.astype(jnp.float32), ref.astype(jnp.float32), atol=3e-2)


@pytest.mark.skipif(BACKEND != "cpu", reason="checks the fallback on a machine without the kernels")
@pytest.mark.parametrize("kernel", ["cudnn", "splash"])
def test_missing_kernel_falls_back_with_one_warning(kernel, caplog):
    attention._WARNED.clear()
    q, k, v, mask = _inputs(t=16, n=4, k=4, h=8)
    ref = attention.reference_attention(q, k, v, mask=mask, scale=0.3)
    with caplog.at_level(logging.WARNING, logger="models.attention"):
        for _ in range(3):
            out = attention.dot_product_attention(q, k, v, kernel=kernel, mask=mask, scale=0.3)
            np.testing.assert_array_equal(out, ref)
    warnings = [r for r in caplog.records if kernel in r.getMessage()]
    assert len(warnings) == 1 and "using xla" in warnings[0].getMessage()


@pytest.mark.parametrize("kernel", ["jax", "cudnn"])
def test_model_outputs_do_not_depend_on_the_kernel(kernel):
    """A whole model (padding + causal masks, T5 relative bias) gives the same logits."""
    if kernel == "cudnn" and BACKEND != "gpu":
        pytest.skip("cuDNN attention needs an NVIDIA GPU")
    dtype, atol = ("bfloat16", 5e-2) if kernel == "cudnn" else ("float32", 2e-5)
    for name in ("gpt2-tiny", "t5-tiny"):
        config = models.get_config(name, dtype=dtype)
        ids = jnp.asarray(np.random.default_rng(0).integers(1, 128, (2, 16)), jnp.int32)
        mask = jnp.array([[1] * 16, [1] * 11 + [0] * 5], jnp.int32)
        kw = {"decoder_input_ids": ids} if config.family == "encoder_decoder" else {}
        ref_model = models.build(config.replace(attention_kernel="xla"))
        params = ref_model.init(jax.random.key(0), ids, **kw)["params"]
        ref = ref_model.apply({"params": params}, ids, attention_mask=mask, **kw).logits
        out = (
            models.build(config.replace(attention_kernel=kernel))
            .apply({"params": params}, ids, attention_mask=mask, **kw)
            .logits
        )
        real = np.asarray(mask, bool)
        np.testing.assert_allclose(np.asarray(out)[real], np.asarray(ref)[real], atol=atol)


@pytest.mark.parametrize("t,kv_heads,with_bias", [(128, 2, False), (256, 4, True), (1024, 1, True)])
def test_blocked_kernel_matches_reference(t, kv_heads, with_bias):
    """Skipping the key blocks above the diagonal changes nothing: padding, packed segments,
    grouped-query heads and T5's bias are applied inside each block (values and gradients)."""
    q, k, v, mask = _inputs(t=t, n=4, k=kv_heads, h=16)
    segments = (jnp.arange(t)[None, :] >= t // 3).astype(jnp.int32) * jnp.ones((2, 1), jnp.int32)
    mask = mask & masks.segment_mask(segments, segments)
    bias = _relative_bias(1, 4, t) if with_bias else None

    def value_and_grads(fn):
        loss = lambda q, k, v: jnp.sum(fn(q, k, v) ** 2)  # noqa: E731
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)

    ref = value_and_grads(
        lambda q, k, v: attention.reference_attention(q, k, v, mask=mask, bias=bias, scale=0.25)
    )
    out = value_and_grads(
        lambda q, k, v: attention.dot_product_attention(
            q, k, v, kernel="blocked", mask=mask, bias=bias, scale=0.25, causal=True
        )
    )
    np.testing.assert_allclose(out[0], ref[0], rtol=1e-5)
    for a, b in zip(out[1], ref[1]):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_blocked_kernel_is_causal_without_a_mask():
    q, k, v, mask = _inputs(t=128, h=16)
    slots = masks.arange_slots(2, 128)
    ref = attention.reference_attention(q, k, v, mask=masks.causal_mask(slots, slots), scale=0.25)
    out = attention.blocked_causal_attention(q, k, v, scale=0.25, block=64)
    np.testing.assert_allclose(out, ref, atol=2e-5)


def test_blocked_kernel_falls_back_where_it_does_not_apply(caplog):
    attention._WARNED.clear()
    q, k, v, mask = _inputs(t=128, h=16)
    ref = attention.reference_attention(q, k, v, mask=mask, scale=0.3)
    with caplog.at_level(logging.WARNING, logger="models.attention"):
        out = attention.dot_product_attention(q, k, v, kernel="blocked", mask=mask, scale=0.3)
    np.testing.assert_array_equal(out, ref)  # not causal: the reference itself
    assert "'blocked' is for causal self-attention; using xla" in caplog.text
    assert attention._block_size(96) is None and attention._block_size(4096) == 512


@pytest.mark.parametrize("name", ["gpt2-tiny", "t5-tiny"])
def test_blocked_kernel_in_a_model_matches_the_reference(name):
    """Loss and gradients of a whole model at 128 tokens (where `auto` picks the blocked kernel
    on CPUs) equal those with the reference kernel."""
    config = models.get_config(name, max_positions=128)
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 128, (2, 128)), jnp.int32)
    mask = jnp.array([[1] * 128, [1] * 100 + [0] * 28], jnp.int32)
    kw = {"decoder_input_ids": ids} if config.family == "encoder_decoder" else {}

    def loss_and_grads(kernel):
        model = models.build(config.replace(attention_kernel=kernel))
        params = model.init(jax.random.key(0), ids, **kw)["params"]

        def loss(p):
            out = model.apply({"params": p}, ids, attention_mask=mask, **kw)
            return jnp.sum(jnp.where(mask[..., None] > 0, out.logits, 0.0) ** 2) * 1e-3

        return jax.jit(jax.value_and_grad(loss))(params)

    (l_ref, g_ref), (l_blk, g_blk) = loss_and_grads("xla"), loss_and_grads("blocked")
    np.testing.assert_allclose(l_blk, l_ref, rtol=1e-5)
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g_ref))
    for a, b in zip(jax.tree.leaves(g_blk), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale)
