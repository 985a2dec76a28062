"""Model invariants: published sizes, causality, padding, packing, KV cache, cross-attention."""

import functools
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from models import axes
from models.summary import abstract_params, count_params

PUBLISHED = {  # Hugging Face base-model parameter counts
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-xl": 1_557_611_200,
    "bert-base-uncased": 109_482_240,
    "bert-base-cased": 108_310_272,
    "bert-large-uncased": 335_141_888,
    "distilbert-base-uncased": 66_362_880,
    "t5-small": 60_506_624,
    "t5-base": 222_903_552,
    "t5-v1_1-small": 76_961_152,
    "bart-base": 139_420_416,
    "llama2-7b": 6_738_415_616,
    "llama3-8b": 8_030_261_248,
}
DECODERS = ["gpt2-tiny", "llama-tiny"]
ENC_DECS = ["t5-tiny", "t5-v1_1-tiny", "bart-tiny", "transformer-tiny"]
ENCODERS = ["bert-tiny", "distilbert-tiny"]
ALL_TINY = ENCODERS + DECODERS + ENC_DECS


def tiny(name, **overrides):
    """A tiny model in f32 with its parameters (unboxed), built once per test process."""
    return _tiny(name, tuple(sorted(overrides.items())))


@functools.cache
def _tiny(name, overrides):
    config = models.get_config(name, **dict(overrides))
    model = models.build(config)
    ids = jnp.ones((2, 12), jnp.int32)
    kwargs = {"decoder_input_ids": ids} if config.family == "encoder_decoder" else {}
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(1), ids, **kwargs))["params"]
    return config, model, params


def run(model, params, **kwargs):
    """model.apply under jit, compiled once per model and input structure (not once per call)."""
    return _jitted_apply(model)(params, kwargs)


@functools.cache
def _jitted_apply(model):
    return jax.jit(lambda p, kw: model.apply({"params": p}, **kw))


def random_ids(seed, shape, vocab=128):
    return jnp.asarray(np.random.default_rng(seed).integers(1, vocab, shape), jnp.int32)


@pytest.mark.parametrize("name,count", sorted(PUBLISHED.items()))
def test_published_parameter_counts(name, count):
    assert count_params(models.get_config(name)) == count


@pytest.mark.parametrize("name", models.list_architectures())
def test_every_architecture_builds_with_logical_axes(name):
    tree = abstract_params(models.get_config(name))
    boxes = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert boxes and all(isinstance(b, nn.LogicallyPartitioned) for b in boxes)
    for box in boxes:
        assert set(box.names) <= set(axes.ALL) | {None}, box.names
        assert len(box.names) == len(box.value.shape)


def test_info_cli_json_and_unknown_name():
    out = subprocess.run(
        [sys.executable, "-m", "models", "info", "distilbert-base-uncased", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    import json

    info = json.loads(out.stdout)
    assert (info["name"], info["family"], info["params"]) == (
        "distilbert-base-uncased",
        "encoder",
        66_362_880,
    )
    bad = subprocess.run(
        [sys.executable, "-m", "models", "info", "no-such-model"], capture_output=True, text=True
    )
    assert bad.returncode != 0
    assert bad.stderr.strip().count("\n") == 0 and "Traceback" not in bad.stderr
    assert "no-such-model" in bad.stderr and "gpt2" in bad.stderr


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (dict(d_model=100, num_heads=12), "num_heads=12 does not divide d_model=100"),
        (dict(activation="swish2"), "activation='swish2' is not supported; allowed values"),
        (dict(decoder_num_heads=3), "decoder_num_heads=3 does not divide d_model=32"),
        (dict(num_kv_heads=3), "num_kv_heads=3 does not divide num_heads=4"),
        (dict(position="alibi"), "position='alibi'"),
        (dict(no_such_field=1), "unknown model config field"),
    ],
)
def test_bad_config_errors(overrides, needle):
    with pytest.raises(models.ConfigError, match=needle.replace("(", r"\(")):
        models.get_config("gpt2-tiny", **overrides)


def test_unknown_architecture_error_lists_names():
    with pytest.raises(models.ConfigError, match="unknown architecture 'gpt5'.*gpt2"):
        models.get_config("gpt5")


@pytest.mark.parametrize("name", ["gpt2-tiny", "bert-tiny", "bart-tiny"])
def test_sequence_longer_than_position_table(name):
    config, model, params = tiny(name)
    ids = jnp.ones((1, config.max_positions + 1), jnp.int32)
    kwargs = {"decoder_input_ids": ids[:, :4]} if config.family == "encoder_decoder" else {}
    with pytest.raises(
        models.ConfigError,
        match=f"sequence length {config.max_positions + 1} "
        f"exceeds max_positions={config.max_positions}",
    ):
        model.apply({"params": params}, ids, **kwargs)


def _decoder_side(config, model, params, dec_ids, **kw):
    if config.family == "encoder_decoder":
        enc = random_ids(7, (dec_ids.shape[0], 9))
        return run(model, params, input_ids=enc, decoder_input_ids=dec_ids, **kw)
    return run(model, params, input_ids=dec_ids, **kw)


@pytest.mark.parametrize("name", DECODERS + ENC_DECS)
def test_causality(name):
    config, model, params = tiny(name)
    ids = random_ids(0, (2, 10))
    base = _decoder_side(config, model, params, ids).logits
    for t in (3, 7):
        changed = ids.at[:, t + 1].set((ids[:, t + 1] + 5) % config.vocab_size)
        out = _decoder_side(config, model, params, changed).logits
        np.testing.assert_allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-6)
        assert not np.allclose(out[:, t + 1 :], base[:, t + 1 :], atol=1e-4)


@pytest.mark.parametrize("name", ALL_TINY)
def test_padding_invariance(name):
    config, model, params = tiny(name)
    ids = random_ids(1, (2, 10))
    mask = jnp.array([[1] * 10, [1] * 6 + [0] * 4], jnp.int32)
    junk = jnp.where(mask == 1, ids, random_ids(2, (2, 10)))
    kw = {}
    if config.family == "encoder_decoder":
        kw = dict(decoder_input_ids=ids, decoder_attention_mask=mask)
    a = run(model, params, input_ids=ids, attention_mask=mask, **kw)
    kw_junk = dict(kw, decoder_input_ids=junk) if kw else {}
    b = run(model, params, input_ids=junk, attention_mask=mask, **kw_junk)
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(
        np.asarray(a.last_hidden_state)[real], np.asarray(b.last_hidden_state)[real], atol=1e-5
    )


@pytest.mark.parametrize("name", ALL_TINY)
def test_packing_equals_separate(name):
    config, model, params = tiny(name)
    a, b = random_ids(3, (1, 6)), random_ids(4, (1, 5))
    packed = jnp.concatenate([a, b, jnp.zeros((1, 1), jnp.int32)], axis=1)  # (1, 12)
    segments = jnp.array([[1] * 6 + [2] * 5 + [0]], jnp.int32)
    positions = jnp.array([list(range(6)) + list(range(5)) + [0]], jnp.int32)
    mask = (segments > 0).astype(jnp.int32)
    if config.family == "encoder_decoder":
        out = run(
            model,
            params,
            input_ids=packed,
            attention_mask=mask,
            segment_ids=segments,
            positions=positions,
            decoder_input_ids=packed,
            decoder_attention_mask=mask,
            decoder_segment_ids=segments,
            decoder_positions=positions,
        )
        sep = [run(model, params, input_ids=x, decoder_input_ids=x) for x in (a, b)]
    else:
        out = run(
            model,
            params,
            input_ids=packed,
            attention_mask=mask,
            segment_ids=segments,
            positions=positions,
        )
        sep = [run(model, params, input_ids=x) for x in (a, b)]
    h = np.asarray(out.last_hidden_state)
    np.testing.assert_allclose(h[:, :6], sep[0].last_hidden_state, atol=1e-5)
    np.testing.assert_allclose(h[:, 6:11], sep[1].last_hidden_state, atol=1e-5)


@pytest.mark.parametrize("name", DECODERS + ENC_DECS)
@pytest.mark.parametrize("scan", [False, True])
def test_cached_decoding_equals_full_forward(name, scan):
    config, model, params = tiny(name, scan_layers=scan)
    ids = np.asarray(random_ids(5, (2, 9)))  # on the host: slicing it compiles nothing
    full = _decoder_side(config, model, params, ids).logits
    max_len = 12
    if config.family == "encoder_decoder":
        enc_ids = random_ids(7, (2, 9))
        encoded = run(
            model, params, input_ids=enc_ids, decoder_input_ids=ids
        ).encoder_last_hidden_state
        step = lambda p, c, x: model.apply(  # noqa: E731
            {"params": p, "cache": c},
            x,
            encoded,
            decode=True,
            mutable=["cache"],
            method=model.decode,
        )
        init = lambda: model.init(  # noqa: E731
            jax.random.key(0),
            jnp.ones((2, max_len), jnp.int32),
            encoded,
            decode=True,
            method=model.decode,
        )
    else:
        step = lambda p, c, x: model.apply(  # noqa: E731
            {"params": p, "cache": c}, x, decode=True, mutable=["cache"]
        )
        init = lambda: model.init(  # noqa: E731
            jax.random.key(0), jnp.ones((2, max_len), jnp.int32), decode=True
        )
    cache = jax.jit(init)()["cache"]  # one compile, not one per initialiser op
    step = jax.jit(step)
    # A 3-token prefill, then one token at a time.
    out, mutated = step(params, cache, ids[:, :3])
    logits = [out.logits]
    cache = mutated["cache"]
    for t in range(3, ids.shape[1]):
        out, mutated = step(params, cache, ids[:, t : t + 1])
        logits.append(out.logits)
        cache = mutated["cache"]
    np.testing.assert_allclose(np.concatenate(logits, axis=1), full, atol=2e-5)


@pytest.mark.parametrize("name", ENC_DECS)
def test_cross_attention_ignores_padded_encoder_positions(name):
    config, model, params = tiny(name)
    enc = random_ids(8, (2, 10))
    enc_mask = jnp.array([[1] * 10, [1] * 4 + [0] * 6], jnp.int32)
    junk = jnp.where(enc_mask == 1, enc, random_ids(9, (2, 10)))
    dec = random_ids(10, (2, 5))
    a = run(model, params, input_ids=enc, attention_mask=enc_mask, decoder_input_ids=dec)
    b = run(model, params, input_ids=junk, attention_mask=enc_mask, decoder_input_ids=dec)
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-5)
    # ...and that the encoder really is attended to: changing a real token changes the logits.
    c = run(
        model,
        params,
        input_ids=enc.at[1, 2].set(enc[1, 2] % 100 + 1),
        attention_mask=enc_mask,
        decoder_input_ids=dec,
    )
    assert not np.allclose(a.logits[1], c.logits[1], atol=1e-4)


def _stack_layers(params, prefix_layers):
    """Loop-layout params (layers_0, layers_1, ...) -> scan layout (layers, leading axis)."""
    out = {}
    for key, value in params.items():
        if isinstance(value, dict) and "layers_0" in value:
            layers = [value.pop(f"layers_{i}") for i in range(prefix_layers)]
            value = dict(value, layers=jax.tree.map(lambda *xs: jnp.stack(xs), *layers))
        out[key] = _stack_layers(value, prefix_layers) if isinstance(value, dict) else value
    return out


@pytest.mark.parametrize("name", ["gpt2-tiny", "t5-tiny", "bert-tiny"])
def test_scan_and_remat_match_layer_loop(name):
    config, model, params = tiny(name)
    _, scan_model, scan_params = tiny(name, scan_layers=True, remat_policy="full")
    stacked = _stack_layers(jax.tree.map(lambda x: x, params), config.num_layers)
    assert jax.tree.structure(stacked) == jax.tree.structure(scan_params)
    ids = random_ids(11, (2, 8))
    kw = {"decoder_input_ids": ids} if config.family == "encoder_decoder" else {}

    def loss(m, p):
        return jnp.sum(m.apply({"params": p}, ids, **kw).last_hidden_state ** 2)

    l1, g1 = jax.jit(jax.value_and_grad(lambda p: loss(model, p)))(params)
    l2, g2 = jax.jit(jax.value_and_grad(lambda p: loss(scan_model, p)))(stacked)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    # Some gradients are zero in exact arithmetic (the key bias: softmax ignores a constant
    # shift), so compare against the overall gradient scale.
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g2))
    for a, b in zip(jax.tree.leaves(_stack_layers(g1, config.num_layers)), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale)


def test_bf16_compute_keeps_f32_params():
    config, model, params = tiny("gpt2-tiny", dtype="bfloat16")
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    out = run(model, params, input_ids=random_ids(12, (2, 8)))
    assert out.last_hidden_state.dtype == jnp.bfloat16
    _, model32, _ = tiny("gpt2-tiny")
    ref = run(model32, params, input_ids=random_ids(12, (2, 8)))
    np.testing.assert_allclose(out.logits.astype(jnp.float32), ref.logits, atol=0.1)


def test_dropout_only_when_not_deterministic():
    config, model, params = tiny("bert-tiny")
    ids = random_ids(13, (2, 8))
    a, b = (
        model.apply(
            {"params": params}, ids, deterministic=False, rngs={"dropout": jax.random.key(seed)}
        )
        for seed in (0, 1)
    )
    c = model.apply({"params": params}, ids)
    d = model.apply({"params": params}, ids)
    assert not np.allclose(a.last_hidden_state, b.last_hidden_state)
    np.testing.assert_array_equal(c.last_hidden_state, d.last_hidden_state)


@pytest.mark.parametrize(
    "name,head,shape",
    [
        ("bert-tiny", "mlm", (2, 8, 128)),
        ("bert-tiny", "classification", (2, 3)),
        ("distilbert-tiny", "classification", (2, 3)),
        ("bert-tiny", "token_classification", (2, 8, 3)),
        ("gpt2-tiny", "classification", (2, 3)),
    ],
)
def test_heads_output_shapes(name, head, shape):
    config, model, params = tiny(name, head=head, num_labels=3)
    assert run(model, params, input_ids=random_ids(14, (2, 8))).logits.shape == shape


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the fence is CPU-only")
def test_unrolled_layers_fence_the_residual_gradient():
    """On CPUs the backward pass of unrolled layers keeps one `conditional` per layer boundary
    (models/blocks.py, `_gradient_fence`): without it XLA recomputes the residual-stream gradient
    of every layer above inside each layer's weight-gradient transposes."""
    config, model, params = tiny("gpt2-tiny", num_layers=4)
    ids = random_ids(11, (2, 8))
    grad = jax.jit(
        jax.grad(lambda p: jnp.sum(model.apply({"params": p}, ids).last_hidden_state ** 2))
    )
    hlo = grad.lower(params).compile().as_text()
    assert hlo.count(" conditional(") == config.num_layers - 1


def test_tied_head_pads_vocab_for_16bit_products_without_changing_logits():
    """Embed.attend pads a 300-row table to 384 rows in bf16: the logits and the table's
    gradient equal the unpadded product's, with the table's own shape."""
    from models.layers import Embed

    embed = Embed(300, 64, dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(0), (2, 5, 64), jnp.bfloat16)
    params = embed.init(jax.random.key(1), jnp.zeros((1, 1), jnp.int32))["params"]
    table = nn.meta.unbox(params)["embedding"]

    def loss(table, fn):
        return jnp.sum(jnp.sin(fn(table).astype(jnp.float32)))

    padded = lambda t: embed.apply({"params": {"embedding": t}}, x, method=Embed.attend)  # noqa: E731
    plain = lambda t: jnp.einsum("btd,vd->btv", x, t.astype(jnp.bfloat16))  # noqa: E731
    assert padded(table).shape == (2, 5, 300) and padded(table).dtype == jnp.bfloat16
    np.testing.assert_allclose(
        np.asarray(padded(table), np.float32), np.asarray(plain(table), np.float32), atol=1e-2
    )
    grad_padded = jax.grad(loss)(table, padded)
    grad_plain = jax.grad(loss)(table, plain)
    assert grad_padded.shape == table.shape
    np.testing.assert_allclose(
        grad_padded, grad_plain, atol=1e-2 * float(jnp.abs(grad_plain).max())
    )


def _saved_for_backward(fn, *args):
    """The arrays that autodiff keeps from fn's forward pass for its backward pass."""
    _, vjp = jax.vjp(fn, *args)
    return jax.tree.leaves(vjp)


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
def test_norm_keeps_only_its_input_for_the_backward(kind):
    """In 16-bit compute the norm is recomputed in the backward pass: of activation-sized arrays
    only the bf16 input is kept (plain autodiff keeps float32 intermediates, each twice the
    input's size)."""
    from models.layers import Norm

    x = jax.random.normal(jax.random.key(0), (2, 8, 64), jnp.bfloat16)
    norm = Norm(kind, dtype=jnp.bfloat16)
    params = norm.init(jax.random.key(1), x)
    saved = _saved_for_backward(lambda x: norm.apply(params, x), x)
    big = [a for a in saved if a.size >= x.size]
    assert [(a.shape, a.dtype) for a in big] == [(x.shape, x.dtype)]
    # in float32 the intermediates are the input's size: kept, not recomputed (CPU speed)
    x32, norm32 = x.astype(jnp.float32), Norm(kind)
    saved = _saved_for_backward(lambda x: norm32.apply(params, x), x32)
    assert len([a for a in saved if a.size >= x.size]) > 1


def test_mlp_activation_keeps_only_its_input_for_the_backward():
    """GELU is recomputed in the backward pass: of (B, T, d_ff)-sized arrays the MLP keeps the
    activation's bf16 input and output (the second product's operand), not tanh's
    intermediates."""
    from models.layers import MLP

    cfg = models.get_config("gpt2-tiny", dtype="bfloat16", dropout_rate=0.0)
    x = jax.random.normal(jax.random.key(0), (2, 8, cfg.d_model), jnp.bfloat16)
    mlp = MLP(cfg)
    params = mlp.init(jax.random.key(1), x)
    saved = _saved_for_backward(lambda x: mlp.apply(params, x), x)
    wide = [a for a in saved if a.shape[-1:] == (cfg.d_ff,) and a.ndim == 3]
    assert len(wide) == 2 and all(a.dtype == jnp.bfloat16 for a in wide)
