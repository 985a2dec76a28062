"""Schedules, weight-decay masking, freezing and the body learning-rate factor."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import models
from train import partitioning
from train.optim import learning_rate_schedule, make_optimizer
from train.state import create_train_state
from train.step import make_train_step


def _opt(**kw):
    base = dict(
        name="adamw",
        learning_rate=1e-2,
        warmup_steps=0,
        schedule="constant",
        weight_decay=0.1,
        grad_clip_norm=1.0,
    )
    return ml_collections.ConfigDict({**base, **kw})


def _run(opt, steps=3):
    config = models.get_config(
        "bert-tiny",
        head="classification",
        num_labels=3,
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
    )
    model = models.build(config)
    mesh = partitioning.make_mesh({"data": 1}, jax.devices()[:1])
    tx, schedule = make_optimizer(opt, steps)
    state, _ = create_train_state(
        model, config, tx, mesh, partitioning.DEFAULT_RULES, jax.random.key(0)
    )
    before = jax.tree.map(np.asarray, state.params)
    step = jax.jit(make_train_step(model, tx, schedule, "classification", dropout=False))
    rng = np.random.default_rng(0)
    batch = {
        "input_ids": rng.integers(1, 128, (4, 12)).astype(np.int32),
        "labels": np.array([0, 1, 2, 1], np.int32),
    }
    for _ in range(steps):
        state, _ = step(state, batch, jax.random.key(1))
    return before, jax.tree.map(np.asarray, state.params)


def _flat(tree):
    return {
        "/".join(str(k.key) for k in path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def test_freezing_keeps_parameters_bit_identical():
    before, after = map(_flat, _run(_opt(freeze=["token_embed", "encoder/layers_0/"])))
    frozen = [k for k in before if k.startswith(("token_embed", "encoder/layers_0/"))]
    assert frozen
    for k in before:
        if k in frozen:
            np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    moved = [k for k in before if k not in frozen and not np.array_equal(after[k], before[k])]
    assert "head/out/kernel" in moved and "encoder/layers_1/mlp/wi/kernel" in moved


def test_freeze_body_trains_only_the_head():
    before, after = map(_flat, _run(_opt(freeze=["body"])))
    for k in before:
        changed = not np.array_equal(after[k], before[k])
        assert changed == k.startswith("head/"), k


@pytest.mark.slow
def test_body_learning_rate_factor():
    before, full = map(_flat, _run(_opt(weight_decay=0.0)))
    _, slow = map(_flat, _run(_opt(weight_decay=0.0, body_lr_factor=0.0)))
    for k in before:
        if k.startswith("head/"):
            assert not np.array_equal(slow[k], before[k])
        else:
            np.testing.assert_array_equal(slow[k], before[k], err_msg=k)
    assert not np.array_equal(
        full["encoder/layers_0/mlp/wi/kernel"], before["encoder/layers_0/mlp/wi/kernel"]
    )


def test_schedules_by_hand():
    cos = learning_rate_schedule(_opt(schedule="cosine", warmup_steps=10, end_factor=0.1), 110)
    assert float(cos(0)) == 0.0 and np.isclose(float(cos(5)), 5e-3)
    assert np.isclose(float(cos(10)), 1e-2) and np.isclose(float(cos(60)), 0.55e-2)
    assert np.isclose(float(cos(110)), 1e-3)
    rsqrt = learning_rate_schedule(_opt(schedule="rsqrt", warmup_steps=100), 1000)
    # peak * sqrt(warmup / step): T5's 1 / sqrt(max(step, warmup)) scaled to the peak
    assert np.isclose(float(rsqrt(100)), 1e-2) and np.isclose(float(rsqrt(400)), 1e-2 * 0.5)


def test_weight_decay_skips_norms_and_biases():
    tx, _ = make_optimizer(_opt(weight_decay=0.5, learning_rate=1.0, grad_clip_norm=0.0), 1)
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,)), "scale": jnp.ones((2,))}
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["kernel"], 0.5)  # 1 - lr * wd * 1
    np.testing.assert_array_equal(new["bias"], 1.0)
    np.testing.assert_array_equal(new["scale"], 1.0)


def test_optimizer_defaults_live_in_one_place():
    from configs.common import base_config
    from train import optim

    assert base_config().optimizer.to_dict() == {**optim.DEFAULTS, "freeze": ()}
    assert optim.settings({"name": "sgd"})["b2"] == 0.98  # what every config runs with
    with pytest.raises(optim.OptimizerError, match="unknown keys \\['lr'\\]"):
        make_optimizer({"lr": 0.1}, 1)


def test_lora_plus_scales_only_b_learning_rate():
    """LoRA+ (lora.lr_ratio): B moves `ratio` times as far as plain LoRA's B on the same
    gradients; A and the head move exactly as they do without it."""
    rng = np.random.default_rng(0)
    params = {
        "encoder": {"query": {"lora_a": jnp.asarray(rng.normal(size=(8, 2)), jnp.float32)}},
        "head": {"out": {"kernel": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)}},
    }
    params["encoder"]["query"]["lora_b"] = jnp.zeros((2, 8), jnp.float32)
    grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)]
    grads.append(jax.tree.map(lambda g: -0.5 * g, grads[0]))

    def run(ratio):
        tx, _ = make_optimizer(
            _opt(learning_rate=1e-3, weight_decay=0.0, grad_clip_norm=0.0), 10, ratio
        )
        p, state = params, tx.init(params)
        deltas = []
        for g in grads:
            updates, state = tx.update(g, state, p)
            deltas.append(_flat(updates))
            p = optax.apply_updates(p, updates)
        return deltas

    plain, plus = run(1.0), run(16.0)
    for one, sixteen in zip(plain, plus):
        np.testing.assert_allclose(
            sixteen["encoder/query/lora_b"], 16 * one["encoder/query/lora_b"], rtol=1e-6
        )
        np.testing.assert_array_equal(sixteen["encoder/query/lora_a"], one["encoder/query/lora_a"])
        np.testing.assert_array_equal(sixteen["head/out/kernel"], one["head/out/kernel"])
    assert np.abs(plain[0]["encoder/query/lora_b"]).min() > 0  # B moved


@pytest.mark.parametrize("ratio", [0.0, -2.0])
def test_a_bad_lora_plus_ratio_is_one_line(ratio):
    from models.errors import UserError
    from train import lora

    with pytest.raises(UserError, match="lora.lr_ratio=.* must be > 0"):
        lora.lr_ratio({"rank": 8, "lr_ratio": ratio})
