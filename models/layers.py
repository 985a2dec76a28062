"""Leaf layers: dense projections, embeddings, norms and the feed-forward block.

Each parameter gets its logical axis names here, in one place (`param`). Matmuls take inputs in the
compute dtype and accumulate in float32 (`preferred_element_type`), which is both the accurate and
the fast path for bfloat16 on CPUs, GPUs and TPUs.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import fp8_ops
from jax import lax

from models import axes
from models.config import ModelConfig

Initializer = Callable[..., jax.Array]
# The variable collection of fp8 scales and amax histories (flax's fp8 ops). Its "gradient" is
# its next value: the train step stores it in place, outside the optimizer (train/step.py).
FP8 = fp8_ops.OVERWRITE_WITH_GRADIENT


def param(
    module: nn.Module,
    name: str,
    init: Initializer,
    shape: Sequence[int],
    logical_axes: Sequence[str | None],
    dtype,
) -> jax.Array:
    """Declares a parameter with its logical axis names (boxed as nn.LogicallyPartitioned)."""
    if len(shape) != len(logical_axes):
        raise ValueError(f"{name}: shape {tuple(shape)} vs logical axes {tuple(logical_axes)}")
    return module.param(
        name, nn.with_logical_partitioning(init, tuple(logical_axes)), tuple(shape), dtype
    )


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
    """Activations by their Hugging Face names (gelu = exact erf, gelu_new = tanh approximation)."""
    return {
        "relu": jax.nn.relu,
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
        "silu": jax.nn.silu,
        "tanh": jnp.tanh,
    }[name]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _low_precision_dot(x: jax.Array, w: jax.Array, contract: int) -> jax.Array:
    """x . w over the last `contract` dims of x and the first of w, f32 accumulation (f32 out).

    Autodiff of a dot with `preferred_element_type=float32` runs both backward dots with the f32
    cotangent against a bf16 operand, i.e. as f32 matmuls (3x slower than bf16 on CPUs, and off
    the bf16 units of GPUs/TPUs). Here the cotangent is rounded to the inputs' dtype first, as
    mixed-precision training does (PyTorch autocast included): all three matmuls run in bf16
    with f32 accumulation.
    """
    return _dot_last_first(x, w, contract)


def _dot_last_first(x, w, contract):
    dims = (tuple(range(x.ndim - contract, x.ndim)), tuple(range(contract)))
    return lax.dot_general(x, w, (dims, ((), ())), preferred_element_type=jnp.float32)


def _low_precision_dot_fwd(x, w, contract):
    return _dot_last_first(x, w, contract), (x, w)


def _low_precision_dot_bwd(contract, residuals, g):
    x, w = residuals
    g = g.astype(x.dtype)  # (*B, *F)
    batch, free = x.ndim - contract, w.ndim - contract
    g_free = tuple(range(batch, batch + free))
    dx = lax.dot_general(  # (*B, *F) . (*K, *F) -> (*B, *K)
        g,
        w,
        ((g_free, tuple(range(contract, w.ndim))), ((), ())),
        preferred_element_type=jnp.float32,
    )
    dw = lax.dot_general(  # (*B, *K) . (*B, *F) -> (*K, *F)
        x,
        g,
        ((tuple(range(batch)), tuple(range(batch))), ((), ())),
        preferred_element_type=jnp.float32,
    )
    return dx.astype(x.dtype), dw.astype(w.dtype)


_low_precision_dot.defvjp(_low_precision_dot_fwd, _low_precision_dot_bwd)


def dot_last_first(x: jax.Array, w: jax.Array, contract: int = 1) -> jax.Array:
    """x . w over the last `contract` dims of x and the first `contract` dims of w, accumulated
    and returned in float32; inputs already in the compute dtype. Below float32 the backward
    matmuls also run in the compute dtype (see `_low_precision_dot`)."""
    if x.dtype == jnp.float32 and w.dtype == jnp.float32:
        return _dot_last_first(x, w, contract)
    return _low_precision_dot(x, w, contract)


def dtypes(config: ModelConfig) -> tuple[jnp.dtype, jnp.dtype]:
    """(compute dtype, parameter dtype)."""
    return jnp.dtype(config.dtype), jnp.dtype(config.param_dtype)


class DenseGeneral(nn.Module):
    """y = x . W + b over the last `contract` input dims; W has logical axes `kernel_axes`.

    `features` may be a tuple (e.g. (heads, head_dim) for attention projections); the kernel
    shape is `x.shape[-contract:] + features`.

    With `fp8` the product runs through flax's fp8 op (`Fp8DotGeneral`, submodule `fp8`): x and
    W quantised to e4m3 and the output gradient to e5m2, each with a scale from its amax
    history, which live in the `FP8` collection. A call given no such collection (inference:
    eval, decoding, tasks) multiplies in the compute dtype instead; `init` creates it.
    """

    features: int | tuple[int, ...]
    kernel_axes: tuple[str | None, ...]
    contract: int = 1
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    kernel_init: Initializer = nn.initializers.normal(0.02)
    # ModelConfig.lora: (rank, alpha, dropout, target regexes); the layer adapts itself when a
    # target matches its module path
    lora: tuple | None = None
    fp8: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        in_shape = x.shape[-self.contract :]
        kernel = param(
            self,
            "kernel",
            self.kernel_init,
            in_shape + features,
            self.kernel_axes,
            self.param_dtype,
        )
        # One 2-D product, (..., prod(in)) . (prod(in), prod(features)), of the same numbers:
        # with several free or contracted dims (attention's heads) XLA otherwise lays the weight
        # gradient out transposed, and the optimizer and weight-gradient products each copy it
        # back (cpu-profile.md).
        lead = x.shape[: x.ndim - self.contract]
        x2 = x.astype(self.dtype).reshape(*lead, math.prod(in_shape))  # (*B, K)
        w2 = kernel.astype(self.dtype).reshape(math.prod(in_shape), math.prod(features))  # (K, F)
        if self.fp8 and (self.is_mutable_collection(FP8) or self.has_variable(FP8, "fp8")):
            dims = (((x2.ndim - 1,), (0,)), ((), ()))
            y = fp8_ops.Fp8DotGeneral(name="fp8")(x2, w2, dims).astype(jnp.float32)  # (*B, F)
        else:
            y = dot_last_first(x2, w2)  # (*B, F)
        y = y.reshape(*lead, *features)
        if self.lora is not None and lora_targeted(self.path, self.lora[3]):
            y = y + self._lora(x, in_shape, features)
        if self.use_bias:
            bias = param(
                self,
                "bias",
                nn.initializers.zeros,
                features,
                self.kernel_axes[self.contract :],
                self.param_dtype,
            )
            y = y + bias.astype(jnp.float32)
        return y.astype(self.dtype)

    def _lora(self, x: jax.Array, in_shape: tuple, features: tuple) -> jax.Array:
        """(alpha / r) * dropout(x) A B in float32: A (in..., r) takes the kernel's input axes
        and B (r, features...) its output axes, so both shard like the kernel. A starts as
        PEFT's (uniform, bound 1/sqrt(fan_in)), B at zero."""
        rank, alpha, dropout, _ = self.lora
        fan_in = math.prod(in_shape)

        def a_init(key, shape, dtype):
            return jax.random.uniform(key, shape, dtype, -1.0, 1.0) / math.sqrt(fan_in)

        a = param(
            self, "lora_a", a_init, in_shape + (rank,), self.kernel_axes[: self.contract] + (None,),
            self.param_dtype,
        )  # fmt: skip
        b = param(
            self, "lora_b", nn.initializers.zeros, (rank, *features),
            (None, *self.kernel_axes[self.contract :]), self.param_dtype,
        )  # fmt: skip
        if dropout and self.has_rng("dropout"):  # training: the step passes a dropout key
            x = nn.Dropout(dropout, deterministic=False)(x)
        lead = x.shape[: x.ndim - self.contract]
        h = dot_last_first(
            x.astype(self.dtype).reshape(*lead, fan_in), a.astype(self.dtype).reshape(fan_in, rank)
        )
        d = dot_last_first(
            h.astype(self.dtype), b.astype(self.dtype).reshape(rank, math.prod(features))
        )
        return d.reshape(*lead, *features) * (alpha / rank)


def lora_targeted(path: Sequence[str], targets: Sequence[str]) -> bool:
    """Whether a dense layer at module `path` is adapted: a target regex finds its path
    ('decoder/layers_0/self_attention/query'; with scanned layers 'decoder/layers/...')."""
    name = "/".join(path)
    return any(re.search(t, name) for t in targets)


_MATRIX_TILE = 128  # vocabulary padding for 16-bit matrix products (Embed.attend)


class Embed(nn.Module):
    """A lookup table; `attend` reuses it as the output projection of a tied head."""

    num_embeddings: int
    features: int
    table_axes: tuple[str | None, str | None] = (axes.VOCAB, axes.EMBED)
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    embedding_init: Initializer = nn.initializers.normal(0.02)

    def setup(self):
        self.embedding = param(
            self,
            "embedding",
            self.embedding_init,
            (self.num_embeddings, self.features),
            self.table_axes,
            self.param_dtype,
        )

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """x @ table.T with float32 accumulation: (..., D) -> (..., V) logits in the compute dtype
        (float32 in float32 compute; in 16-bit compute the product rounds its output, as PyTorch
        autocast's LM head does, and losses and decoding upcast, which saves a float32
        (B, T, V) buffer).

        In 16-bit compute the table is padded with zero rows to a multiple of 128 for the
        product and the logits are sliced back to V: the same values, but matrix shapes that
        the tensor cores and MXUs tile evenly (measured in docs/benchmarks/gpu-notes.md)."""
        x, table = x.astype(self.dtype), self.embedding.astype(self.dtype)
        if self.dtype == jnp.float32:
            return lax.dot_general(
                x, table, (((x.ndim - 1,), (1,)), ((), ())), preferred_element_type=jnp.float32
            )
        vocab = table.shape[0]
        table = jnp.pad(table, ((0, -vocab % _MATRIX_TILE), (0, 0)))
        logits = lax.dot_general(  # (..., D) . (V', D) -> (..., V')
            x, table, (((x.ndim - 1,), (1,)), ((), ())), preferred_element_type=self.dtype
        )
        return logits[..., :vocab]


def _normalize(x, scale, bias, kind: str, eps: float, dtype):
    x32 = x.astype(jnp.float32)
    if kind == "rmsnorm":
        y = x32 * lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
    else:
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * lax.rsqrt(var + eps)
    y = y * scale
    if bias is not None:
        y = y + bias
    return y.astype(dtype)


def recomputed_in_16bit(fn, dtype, **checkpoint_kwargs):
    """`fn` recomputed in the backward pass from its inputs (`jax.checkpoint`) when `dtype` is
    16-bit, where autodiff would keep float32 intermediates twice the input's size (the norms)
    or several (B, T, F) arrays beside the input (the MLP activation); `fn` itself in float32,
    where the intermediates are the input's size and recomputing them cost time on a CPU."""
    return fn if jnp.dtype(dtype) == jnp.float32 else jax.checkpoint(fn, **checkpoint_kwargs)


class Norm(nn.Module):
    """LayerNorm (scale + bias) or RMSNorm (scale only, T5/Llama); statistics in float32.

    In 16-bit compute the backward pass recomputes the normalisation from the input
    (`jax.checkpoint`) instead of keeping its float32 intermediates: with the MLP activation's
    recomputation, about 2.7 GiB less for gpt2-medium's bf16 step at 16 x 1024 on an H100
    (docs/benchmarks/gpu-notes.md). In float32 they are the input's size, and recomputing
    them slowed t5-small's step on a 2-core CPU in three runs out of three; autodiff keeps them.
    """

    kind: str = "layernorm"
    eps: float = 1e-5
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        scale = param(self, "scale", nn.initializers.ones, (d,), (axes.EMBED,), self.param_dtype)
        bias = None
        if self.kind == "layernorm":
            bias = param(self, "bias", nn.initializers.zeros, (d,), (axes.EMBED,), self.param_dtype)
        dtype = jnp.dtype(self.dtype)
        normalize = recomputed_in_16bit(_normalize, dtype, static_argnums=(3, 4, 5))
        return normalize(x, scale, bias, self.kind, self.eps, dtype)


def make_norm(config: ModelConfig, name: str | None = None) -> Norm:
    dtype, param_dtype = dtypes(config)
    return Norm(config.norm, config.norm_eps, dtype, param_dtype, name=name)


def token_embedding(config: ModelConfig) -> Embed:
    """The (vocab, d_model) token table, `token_embed` in every family (shared by an
    encoder-decoder's two stacks and its tied head)."""
    dtype, param_dtype = dtypes(config)
    return Embed(
        config.vocab_size,
        config.d_model,
        (axes.VOCAB, axes.EMBED),
        dtype,
        param_dtype,
        nn.initializers.normal(config.init_std),
        name="token_embed",
    )


class MLP(nn.Module):
    """Feed-forward block: wo(act(wi x) [* wi_gate x]). Gated = GEGLU/SwiGLU (T5 v1.1, Llama)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        cfg = self.config
        dtype, param_dtype = dtypes(cfg)
        dense = lambda features, kernel_axes, name: DenseGeneral(  # noqa: E731
            features,
            kernel_axes,
            lora=cfg.lora,
            fp8=cfg.fp8,
            use_bias=cfg.use_bias,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=nn.initializers.normal(cfg.init_std),
            name=name,
        )
        act = recomputed_in_16bit(activation_fn(cfg.activation), dtype)
        h = act(dense(cfg.d_ff, (axes.EMBED, axes.MLP), "wi")(x))
        if cfg.gated_mlp:
            h = h * dense(cfg.d_ff, (axes.EMBED, axes.MLP), "wi_linear")(x)  # (B, T, F)
        h = nn.with_logical_constraint(h, (axes.BATCH, axes.LENGTH, axes.MLP))
        return dense(cfg.d_model, (axes.MLP, axes.EMBED), "wo")(h)  # (B, T, D)
