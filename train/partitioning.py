"""Device mesh, logical-axis rules and shardings.

models/ names every parameter and activation axis logically (models/axes.py); this module maps the
names onto the physical mesh `(data, stage, fsdp, context, tensor)` with priority rules (flax's
`logical_to_mesh_axes`: a mesh axis is used at most once per array, first rule wins). The same
vocabulary therefore serves parameters (embed -> fsdp) and activations (batch takes data+fsdp first,
so an activation's embed axis stays unsharded). The `context` axis splits the activations'
sequence (`length`) axis: context parallelism, with the keys and values gathered in attention
(models/attention.py) and causal rows reordered for balance by train/context.py. The `stage`
axis splits the stacked layers (`layers`) into pipeline stages (models/pipeline.py,
train/stages.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from models import axes
from models.errors import UserError

MESH_AXES = ("data", "stage", "fsdp", "context", "tensor")

# One rule per logical axis of models/axes.py (rules_from_config checks that every axis has one).
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    (axes.BATCH, ("data", "fsdp")),
    (axes.VOCAB, "tensor"),
    (axes.HEADS, "tensor"),
    (axes.MLP, "tensor"),
    (axes.EMBED, "fsdp"),
    (axes.KV, None),
    (axes.LENGTH, "context"),
    (axes.LAYERS, "stage"),
)


class MeshError(UserError):
    """A mesh that does not fit the devices or the batch."""


def mesh_shape(sizes: dict[str, int], num_devices: int) -> tuple[int, ...]:
    """Resolves `{data, stage, fsdp, context, tensor}` sizes (one may be -1 = the rest) to a
    shape."""
    shape = [int(sizes.get(axis, 1)) for axis in MESH_AXES]
    if sum(s == -1 for s in shape) > 1:
        raise MeshError(f"mesh {dict(zip(MESH_AXES, shape))}: at most one axis may be -1")
    if any(s == 0 or s < -1 for s in shape):
        raise MeshError(f"mesh {dict(zip(MESH_AXES, shape))}: sizes must be positive or -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise MeshError(
                f"mesh {dict(zip(MESH_AXES, shape))}: {num_devices} devices are not "
                f"divisible by {known}; change config.mesh"
            )
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        raise MeshError(
            f"mesh {' x '.join(f'{a}={n}' for a, n in zip(MESH_AXES, shape))} = "
            f"{math.prod(shape)} devices, but {num_devices} are available; set config.mesh so "
            f"the product is {num_devices} (use -1 for one axis to take the rest)"
        )
    return tuple(shape)


def make_mesh(sizes: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, stage, fsdp, context, tensor) mesh with Auto axis types (linen's tensor-parallel
    layers need them; Explicit axes fail with 'Contracting dimensions are sharded')."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(dict(sizes), len(devices))
    auto = (AxisType.Auto,) * len(shape)
    try:
        return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)
    except Exception:  # make_mesh rejects some device orders; a plain reshape always works
        return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def rules_from_config(rules) -> tuple:
    """Rules from a config (list of [name, mesh axes]) or the defaults.

    Raises:
      MeshError: a rule names an axis models/axes.py does not have or a mesh axis that does not
        exist, or an axis has no rule.
    """
    if not rules:
        return DEFAULT_RULES
    out = []
    for rule in rules:
        if not isinstance(rule, list | tuple) or len(rule) != 2:
            raise MeshError(f"partitioning_rules: {rule!r} is not [logical axis, mesh axes]")
        name, target = rule
        if name in dict(out):
            raise MeshError(f"partitioning_rules: two rules for {name!r}; give one per axis")
        if isinstance(target, list):
            target = tuple(target)
        if name not in axes.ALL:
            raise MeshError(
                f"partitioning_rules: unknown logical axis {name!r}; axes: {', '.join(axes.ALL)}"
            )
        for mesh_axis in target if isinstance(target, tuple) else (target,):
            if mesh_axis is not None and mesh_axis not in MESH_AXES:
                raise MeshError(
                    f"partitioning_rules: {name!r} -> unknown mesh axis {mesh_axis!r} "
                    f"(mesh axes: {', '.join(MESH_AXES)})"
                )
        out.append((name, target))
    missing = [a for a in axes.ALL if a not in dict(out)]
    if missing:
        raise MeshError(
            f"partitioning_rules: no rule for {', '.join(missing)}; every logical axis of "
            f"models/axes.py needs one (None = replicated)"
        )
    return tuple(out)


def batch_axes(rules=DEFAULT_RULES) -> tuple[str, ...]:
    """The mesh axes the batch is split over: the `batch` rule's."""
    target = dict(rules)[axes.BATCH]
    if target is None:
        return ()
    return target if isinstance(target, tuple) else (target,)


def spans_processes(mesh, axis: str) -> bool:
    """Whether one group of devices along `axis` (the others fixed) belongs to several processes.
    Each process reads its own rows of the batch, so an axis whose groups must see the same rows
    (context, stage) has to stay within a process."""
    devices = np.moveaxis(np.asarray(mesh.devices), mesh.axis_names.index(axis), -1)
    processes = np.vectorize(lambda d: d.process_index)(devices)
    return bool((processes != processes[..., :1]).any())


def logical_shardings(abstract_tree, mesh: Mesh, rules) -> object:
    """NamedShardings for a tree whose leaves may be boxed with logical names (unboxed leaves
    are replicated)."""
    specs = nn.get_partition_spec(abstract_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh, ndim: int = 2, rules=DEFAULT_RULES) -> NamedSharding:
    """Leading (batch) axis over the `batch` rule's mesh axes, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(batch_axes(rules), *([None] * (ndim - 1))))


def check_batch(global_batch: int, mesh: Mesh, microbatches: int = 1, rules=DEFAULT_RULES):
    split = batch_axes(rules)
    shards = math.prod(mesh.shape[a] for a in split)
    if global_batch % (shards * microbatches):
        raise MeshError(
            f"batch_size={global_batch} is not divisible by {' x '.join(split) or 'one'} = "
            f"{shards} shards x {microbatches} microbatches; change config.batch_size or "
            "config.mesh"
        )


class activate:  # noqa: N801  (a context manager used as `with activate(mesh, rules):`)
    """Makes `mesh` and the logical rules current, so that the models' logical constraints
    (nn.with_logical_constraint) become real sharding constraints while tracing."""

    def __init__(self, mesh: Mesh, rules):
        self._mesh_ctx = jax.set_mesh(mesh)
        self._rules_ctx = nn.logical_axis_rules(rules)

    def __enter__(self):
        self._mesh_ctx.__enter__()
        self._rules_ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._rules_ctx.__exit__(*exc)
        return self._mesh_ctx.__exit__(*exc)
