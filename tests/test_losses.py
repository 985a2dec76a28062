"""The cross entropy against optax's reference implementations (values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from train.losses import cross_entropy_sums


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_matches_optax(smoothing):
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(3, 7, 11)) * 3, jnp.float32)
    targets = jnp.asarray(rng.integers(0, 11, size=(3, 7)), jnp.int32)
    weights = jnp.asarray(rng.integers(0, 2, size=(3, 7)), jnp.float32)

    def reference(logits):
        labels = optax.smooth_labels(jax.nn.one_hot(targets, 11), smoothing)
        return jnp.sum(optax.softmax_cross_entropy(logits, labels) * weights)

    def ours(logits):
        return cross_entropy_sums(logits, targets, weights, label_smoothing=smoothing)["loss"]

    np.testing.assert_allclose(ours(logits), reference(logits), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(ours)(logits), jax.grad(reference)(logits), atol=1e-6)
    sums = cross_entropy_sums(logits, targets, weights)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    np.testing.assert_allclose(sums["nll"], jnp.sum(nll * weights), rtol=1e-6)
    correct = (jnp.argmax(logits, -1) == targets) * weights
    assert float(sums["correct"]) == float(jnp.sum(correct))
    assert float(sums["weight"]) == float(jnp.sum(weights))


def test_z_loss_adds_the_squared_log_normaliser():
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(4, 5)), jnp.float32)
    targets = jnp.arange(4) % 5
    plain = cross_entropy_sums(logits, targets)
    with_z = cross_entropy_sums(logits, targets, z_loss=1e-2)
    expected = 1e-2 * jnp.sum(jnp.square(jax.nn.logsumexp(logits, -1)))
    np.testing.assert_allclose(with_z["loss"] - plain["loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(with_z["z_loss"], expected, rtol=1e-5)
