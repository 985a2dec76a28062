"""The bf16 training fast path measured by the benchmark (models/layers.py `dot_last_first`):
backward matmuls run on bf16 operands, and the gradients match plain autodiff to bf16 rounding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from models.layers import dot_last_first

CASES = [((4, 5, 6), (6, 7), 1), ((4, 5, 3, 8), (3, 8, 6), 2), ((2, 3, 4), (4, 2, 5), 1)]


def _reference(x, w, contract):
    dims = (tuple(range(x.ndim - contract, x.ndim)), tuple(range(contract)))
    return lax.dot_general(x, w, (dims, ((), ())), preferred_element_type=jnp.float32)


@pytest.mark.parametrize("xs,ws,contract", CASES)
def test_gradients_match_autodiff(xs, ws, contract):
    kx, kw, kc = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, xs).astype(jnp.bfloat16)
    w = jax.random.normal(kw, ws).astype(jnp.bfloat16)
    ct = jax.random.normal(kc, xs[: len(xs) - contract] + ws[contract:])
    ours = jax.grad(lambda a, b: jnp.sum(dot_last_first(a, b, contract) * ct), (0, 1))(x, w)
    ref = jax.grad(lambda a, b: jnp.sum(_reference(a, b, contract) * ct), (0, 1))(x, w)
    np.testing.assert_array_equal(dot_last_first(x, w, contract), _reference(x, w, contract))
    for a, b in zip(ours, ref):
        assert a.shape == b.shape and a.dtype == b.dtype == jnp.bfloat16
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.max(np.abs(a - b)) <= 0.02 * np.max(np.abs(b))  # cotangent rounded to bf16


def _dot_operand_dtypes(fn, *args):
    jaxpr = jax.make_jaxpr(jax.grad(fn, (0, 1)))(*args)
    return [
        tuple(str(v.aval.dtype) for v in eqn.invars)
        for eqn in jaxpr.jaxpr.eqns
        if eqn.primitive.name == "dot_general"
    ]


def test_backward_matmuls_take_bf16_operands():
    x = jnp.ones((8, 16), jnp.bfloat16)
    w = jnp.ones((16, 32), jnp.bfloat16)
    ours = _dot_operand_dtypes(lambda a, b: jnp.sum(dot_last_first(a, b)), x, w)
    assert len(ours) == 3 and all(d == ("bfloat16", "bfloat16") for d in ours)
    # plain autodiff of the same dot mixes the f32 cotangent in: the slow path this avoids
    plain = _dot_operand_dtypes(lambda a, b: jnp.sum(_reference(a, b, 1)), x, w)
    assert any("float32" in d for d in plain)


def test_float32_is_plain_autodiff():
    x = jnp.ones((8, 16))
    w = jnp.ones((16, 32))
    ours = _dot_operand_dtypes(lambda a, b: jnp.sum(dot_last_first(a, b)), x, w)
    assert ours == _dot_operand_dtypes(lambda a, b: jnp.sum(_reference(a, b, 1)), x, w)
