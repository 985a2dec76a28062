"""The train state and its sharded initialisation.

Parameters and optimizer state are created directly in their shardings: the init function is
traced abstractly (`jax.eval_shape`), the logical axis names on the abstract tree give the
shardings, and `jit(init, out_shardings=...)` materialises every array already split across the
mesh. Nothing is first built on one device.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from models.layers import FP8
from models.summary import dummy_inputs
from train import partitioning


@struct.dataclass
class TrainState:
    """`params` are what trains. With LoRA (train/lora.py) they are the adapters and the head,
    and `frozen` holds the base parameters, which the step closes over and checkpoints leave
    out; otherwise `frozen` is None. With `model.fp8`, `fp8` holds the fp8 matmuls' scales and
    amax histories (the model's `FP8` collection), which the step replaces with their next
    values, outside the optimizer; otherwise None."""

    step: jax.Array
    params: Any
    opt_state: Any
    frozen: Any = None
    fp8: Any = None


@struct.dataclass
class SavedState:
    """What a checkpoint holds of a `TrainState`: all of it but the frozen base (the on-disk
    layout of every checkpoint written before LoRA existed). A state with fp8 scales is saved
    as a `SavedFp8State`, which adds them; every other keeps this layout."""

    step: jax.Array
    params: Any
    opt_state: Any

    @classmethod
    def of(cls, state: TrainState) -> SavedState:
        if state.fp8 is not None:
            return SavedFp8State(state.step, state.params, state.opt_state, state.fp8)
        return SavedState(step=state.step, params=state.params, opt_state=state.opt_state)

    def train_state(self, frozen=None) -> TrainState:
        return TrainState(
            step=self.step, params=self.params, opt_state=self.opt_state, frozen=frozen
        )


@struct.dataclass
class SavedFp8State(SavedState):
    """A `SavedState` with the fp8 scales and amax histories (`TrainState.fp8`)."""

    fp8: Any

    def train_state(self, frozen=None) -> TrainState:
        return super().train_state(frozen).replace(fp8=self.fp8)


def _boxed(x) -> bool:
    return isinstance(x, nn.LogicallyPartitioned)


def _init_fn(model: nn.Module, model_config, tx: optax.GradientTransformation):
    def init(rng):
        variables = model.init(rng, **dummy_inputs(model_config))
        params, fp8 = variables["params"], variables.get(FP8)  # fp8: outside the optimizer
        frozen = None
        if model_config.lora_rank:
            from train import lora

            params, frozen = lora.split(params, model_config.lora_train_head, is_leaf=_boxed)
        opt_state = jax.tree.map(_fix_box, tx.init(params), is_leaf=_boxed)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=opt_state,
            frozen=frozen,
            fp8=fp8,
        )

    return init


def _fix_box(box):
    """Optimizer statistics of another shape than their parameter (Adafactor's factored row
    and column moments) inherit its box; they are small, so they are replicated. Placeholders
    without an array (optax's MaskedNode for parameters outside a masked group) are unboxed."""
    if not isinstance(box, nn.LogicallyPartitioned):
        return box
    if not hasattr(box.value, "shape"):
        return box.value
    if len(box.names) != len(box.value.shape):
        return box.replace(names=(None,) * len(box.value.shape))
    return box


def full_params(state: TrainState):
    """The whole parameter tree of `state` (its trained and frozen leaves together)."""
    from train import lora

    return lora.join(state.params, state.frozen)


def abstract_state(model, model_config, tx, mesh, rules):
    """(abstract unboxed state as ShapeDtypeStructs with shardings, the shardings tree)."""
    boxed = jax.eval_shape(_init_fn(model, model_config, tx), jax.random.key(0))
    shardings = partitioning.logical_shardings(boxed, mesh, rules)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        nn.meta.unbox(boxed),
        shardings,
    )
    return abstract, shardings


def create_train_state(model, model_config, tx, mesh, rules, rng):
    """(state, shardings): a freshly initialised state laid out on `mesh`."""
    _, shardings = abstract_state(model, model_config, tx, mesh, rules)
    init = _init_fn(model, model_config, tx)
    with partitioning.activate(mesh, rules):
        state = jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shardings)(rng)
    return state, shardings
