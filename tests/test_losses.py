"""The cross entropy against optax's reference implementations (values and gradients)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from train.losses import cross_entropy_sums, logit_stats


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


@pytest.mark.parametrize("smoothing,z_loss", [(0.0, 0.0), (0.1, 1e-3)])
def test_bf16_logits_get_the_float32_gradient_rounded(smoothing, z_loss):
    """16-bit logits take a hand-written gradient (losses.logit_stats): it must be autodiff's
    float32 gradient, rounded once to bf16."""
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.normal(size=(3, 5, 300)) * 4, jnp.bfloat16)
    targets = jnp.asarray(rng.integers(0, 300, size=(3, 5)), jnp.int32)
    weights = jnp.asarray(rng.integers(0, 3, size=(3, 5)), jnp.float32)

    def loss(x):
        return cross_entropy_sums(x, targets, weights, label_smoothing=smoothing, z_loss=z_loss)

    ours = jax.grad(lambda x: loss(x)["loss"])(logits)
    exact = jax.grad(lambda x: loss(x)["loss"])(logits.astype(jnp.float32))
    assert ours.dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        np.asarray(ours, np.float32), np.asarray(exact.astype(jnp.bfloat16), np.float32)
    )
    for key in ("loss", "nll", "z_loss", "correct", "weight"):
        np.testing.assert_allclose(loss(logits)[key], loss(logits.astype(jnp.float32))[key])


def test_every_statistic_has_its_gradient():
    """Each of log Z, the target's logit and the mean logit, differentiated alone (the others'
    cotangents zero), against autodiff in float32."""
    logits = jnp.asarray(np.random.default_rng(3).normal(size=(2, 4, 9)), jnp.float32)
    targets = jnp.arange(8, dtype=jnp.int32).reshape(2, 4)
    for i in range(3):

        def stat(x, i=i):
            return jnp.sum(logit_stats(x, targets, True)[i] * jnp.arange(1.0, 9.0).reshape(2, 4))

        exact = jax.grad(stat)(logits)
        ours = jax.grad(stat)(logits.astype(jnp.bfloat16)).astype(jnp.float32)
        np.testing.assert_allclose(ours, exact, atol=2e-2 * float(jnp.max(jnp.abs(exact))))


def test_bf16_gradient_is_one_pass_over_the_logits():
    """The backward pass of the loss over bf16 logits is one fusion that reads the bf16 logits
    and writes the bf16 gradient, with no scatter: autodiff's form scattered the target's part
    into a float32 softmax gradient, then rounded that copy to bf16."""
    logits = jnp.zeros((4, 8, 1000), jnp.bfloat16)
    targets = jnp.zeros((4, 8), jnp.int32)
    grad = jax.jit(jax.grad(lambda x: cross_entropy_sums(x, targets)["loss"]))
    hlo = grad.lower(logits).compile().as_text()
    entry = hlo[hlo.index("ENTRY") :]
    logits_name = re.search(r"(%\S+) = bf16\[4,8,1000\]\S* parameter\(0\)", entry).group(1)
    root = next(line for line in entry.splitlines() if "ROOT" in line)
    assert re.search(r"= bf16\[4,8,1000\]\S* fusion\(", root), root
    assert logits_name + ")" in root or logits_name + "," in root, root
    assert "scatter" not in hlo
