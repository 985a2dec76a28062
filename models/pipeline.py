"""Pipeline parallelism: a scanned layer stack run as stages over the `stage` mesh axis.

The stack's L layers (stacked on a leading axis, `scan_layers`) are cut into S stages of L/(S.R)
layers, R times over: layer `(r.S + s).L/(S.R) + j` is layer j of stage s in repeat r. R = 1 is
GPipe; R > 1 is the circular schedule, in which a microbatch passes through the stages R times,
shrinking the bubble from (S-1)/(M+S-1) to (S-1)/(R.M+S-1) for M microbatches.

The schedule runs as one `lax.scan` over R.M + S - 1 iterations. Each iteration runs every
stage once, side by side: a `jax.vmap` over the stage axis with `spmd_axis_name="stage"`, so the
stage dimension of the activations and of the stage's weights is split over the `stage` mesh
axis and each device group runs its own layers. Between iterations the activations move one
stage on (`jnp.roll` of a stage-sharded array, which XLA compiles to a collective permute).
Stage 0 reads microbatch `i % M` from a buffer that holds the stack's inputs; the last stage
writes its outputs back into the buffer, where stage 0 reads them again in the next repeat
(M >= S makes them ready in time). After the last iteration the buffer holds the outputs.

Stages with no microbatch (the bubble) compute on zeros and their outputs are never read, so
nothing they hold reaches the result or the gradients; a test can fill the stage state with NaN
(`BUBBLE_FILL`) to prove it. The weights keep their unpipelined (L, ...) layout: checkpoints
written by a pipelined run restore on any mesh, and the reverse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from models import axes

STAGE_AXIS = "stage"  # the mesh axis the stages are split over (train/partitioning.py)
# What the stage state holds before each stage's first microbatch; tests set NaN to show that no
# bubble slot reaches the outputs or the gradients.
BUBBLE_FILL = 0.0
# The name (jax.ad_checkpoint) of each layer's input (models/blocks.py): the backward pass keeps
# it, as a rematerialised layer keeps its inputs.
LAYER_INPUT = "layer_input"
_LAYER_INPUTS = jax.checkpoint_policies.save_only_these_names(LAYER_INPUT)
# Data movement (slices, casts, reshapes): the circular schedule's iterations recompute these for
# the backward pass instead of keeping them (`_stages_fn`).
_MOVES = frozenset(
    ("dynamic_slice", "gather", "slice", "squeeze", "reshape", "transpose", "convert_element_type")
)


@dataclass(frozen=True)
class Schedule:
    """S stages, M microbatches, R repeats (rounds of the circular schedule)."""

    stages: int
    microbatches: int
    repeats: int = 1

    @classmethod
    def of(cls, config) -> Schedule:
        """A ModelConfig's schedule (`pipeline_stages`, `_microbatches`, `_repeats`)."""
        return cls(config.pipeline_stages, config.pipeline_microbatches, config.pipeline_repeats)

    @property
    def iterations(self) -> int:
        return self.repeats * self.microbatches + self.stages - 1

    @property
    def bubble(self) -> float:
        """The idle share of every stage's slots: (S-1)/(R.M+S-1)."""
        return (self.stages - 1) / self.iterations

    def layers_per_stage(self, num_layers: int) -> int:
        return num_layers // (self.stages * self.repeats)


def split_microbatches(x, m: int):
    """(B, ...) -> (M, B/M, ...) taking every M-th row (as train/step.py's accumulation does), so
    that each microbatch keeps rows on every batch shard."""
    return x.reshape(x.shape[0] // m, m, *x.shape[1:]).swapaxes(0, 1)


def join_microbatches(x):
    """The inverse of `split_microbatches`."""
    return x.swapaxes(0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def to_stages(layer_vars, schedule: Schedule):
    """Stacked (L, ...) leaves -> (S, R, L/(S.R), ...): stage s's weights for each repeat."""
    s, r = schedule.stages, schedule.repeats

    def cut(a):
        a = a.reshape(r, s, a.shape[0] // (s * r), *a.shape[1:]).swapaxes(0, 1)
        return _on_stages(a)

    return jax.tree.map(cut, layer_vars)


def _mesh_has_stages() -> bool:
    mesh = jax.sharding.get_abstract_mesh()
    return not mesh.empty and STAGE_AXIS in mesh.axis_names


def _on_stages(a):
    """Pins a stage-leading array's first axis to the `stage` mesh axis (other axes free)."""
    if not _mesh_has_stages():
        return a
    spec = PartitionSpec(STAGE_AXIS, *([PartitionSpec.UNCONSTRAINED] * (a.ndim - 1)))
    return jax.lax.with_sharding_constraint(a, spec)


def _batch_split(args, batch: int, m: int):
    """Per-row arguments split into microbatches, and which were; None, scalars and broadcast
    (leading 1) ones pass as they are."""
    per_row = tuple(a is not None and a.ndim > 0 and a.shape[0] == batch for a in args)
    return tuple(split_microbatches(a, m) if row else a for a, row in zip(args, per_row)), per_row


def run(
    stage_fn: Callable,
    layer_vars,
    x: jax.Array,
    args: tuple,
    schedule: Schedule,
    rng: jax.Array | None = None,
    remat_policy: Callable | None = None,
) -> jax.Array:
    """Runs the stacked layers over `x` (B, T, D) as a pipeline; returns (B, T, D).

    Args:
      stage_fn: `stage_fn(vars, x, args, rng) -> x` runs one stage's L/(S.R) layers: `vars` are
        `layer_vars` with leaves (L/(S.R), ...), `x` one microbatch (B/M, T, D), `args` the
        microbatch's rows of `args`, `rng` its dropout key (None when `rng` is None).
      layer_vars: the stack's variables, every leaf stacked (L, ...).
      args: the blocks' other per-call arguments; arrays with B rows are split into microbatches
        along with `x`, the rest (None, broadcast rows, scalars) pass as they are.
      rng: the stack's dropout key; each stage and microbatch gets its own fold of it.
      remat_policy: what a stage keeps for the backward pass besides each layer's input (a
        `jax.checkpoint` policy; None = nothing more), as the model's remat policy says. Data
        movement (the weight slices, casts and reshapes) is never kept.
    """
    s, m, r = schedule.stages, schedule.microbatches, schedule.repeats
    b = x.shape[0]
    staged = to_stages(layer_vars, schedule)
    margs, per_row = _batch_split(args, b, m)
    buffer = split_microbatches(x, m)  # (M, B/M, T, D): inputs, then each repeat's outputs
    buffer = _constrain(buffer, None)
    state = jnp.full((s, *buffer.shape[1:]), BUBBLE_FILL, x.dtype)  # what each stage receives
    stage_ids = jnp.arange(s)

    stages_fn = _stages_fn(stage_fn, margs, per_row, r, remat_policy, rng is not None)

    def iteration(carry, i):
        state, buffer = carry
        work = i - stage_ids  # the work item (repeat * M + microbatch) of each stage
        valid = (work >= 0) & (work < r * m)
        work = jnp.clip(work, 0, r * m - 1)
        repeat, micro = work // m, work % m
        first = jnp.take(buffer, i % m, axis=0)
        inputs = jnp.where((stage_ids == 0)[:, None, None, None], first[None], state)
        inputs = jnp.where(valid[:, None, None, None], inputs, jnp.zeros_like(inputs))
        inputs = _constrain(inputs, STAGE_AXIS)
        keys = None
        if rng is not None:
            keys = jax.vmap(lambda w, st: jax.random.fold_in(jax.random.fold_in(rng, w), st))(
                work, stage_ids
            )
        out = _constrain(stages_fn(staged, inputs, repeat, micro, keys), STAGE_AXIS)
        last = out[-1]
        slot = micro[-1]
        kept = jnp.where(valid[-1], last, jnp.take(buffer, slot, axis=0))
        buffer = jax.lax.dynamic_update_index_in_dim(buffer, kept, slot, 0)
        state = _constrain(jnp.roll(out, 1, axis=0), STAGE_AXIS)
        return (state, buffer), None

    (_, buffer), _ = jax.lax.scan(iteration, (state, buffer), jnp.arange(schedule.iterations))
    return join_microbatches(buffer)


def _stages_fn(stage_fn, margs, per_row, repeats: int, remat_policy, with_rng: bool):
    """`stage_fn` for every stage at once: (staged weights, inputs, repeat, microbatch, keys),
    each with a leading stage axis, run side by side over the `stage` mesh axis."""

    def one_stage(vars_s, x_s, repeat, micro, key):
        # GPipe's slice is static (the same in every iteration), which XLA keeps no copy of
        vars_s = jax.tree.map(lambda a: a[repeat] if repeats > 1 else a[0], vars_s)
        rows = tuple(a[micro] if split else a for a, split in zip(margs, per_row))
        return stage_fn(vars_s, x_s, rows, key)

    if repeats > 1:
        # Each iteration slices its stage's weights for its repeat. Kept for the backward pass,
        # the slices (and the layers' casts and reshapes of them) would cost a copy of a stage's
        # weights per iteration; they are recomputed instead, and the rest is kept as the
        # model's remat policy says.
        def keep(prim, *args, **params) -> bool:
            if prim.name in _MOVES:
                return False
            if _LAYER_INPUTS(prim, *args, **params):  # what a rematerialised layer starts from
                return True
            return remat_policy is not None and remat_policy(prim, *args, **params)

        one_stage = jax.checkpoint(one_stage, policy=keep)
    spmd = STAGE_AXIS if _mesh_has_stages() else None
    return jax.vmap(one_stage, in_axes=(0, 0, 0, 0, 0 if with_rng else None), spmd_axis_name=spmd)


def _constrain(a, lead):
    """(lead, B/M, T, D) activations: the lead axis on the `stage` mesh axis (lead=STAGE_AXIS)
    or unsplit (None), the rest as activations are."""
    if lead == STAGE_AXIS:
        return _on_stages(a)
    return nn.with_logical_constraint(a, (None, *axes.ACTIVATION))
