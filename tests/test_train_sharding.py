"""The train step on 8 simulated CPU devices: mesh equivalence, golden partition specs,
gradient accumulation, overfitting one batch, and restoring onto a different mesh."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import models
from train import partitioning
from train.checkpoint import Checkpointer
from train.optim import make_optimizer
from train.state import abstract_state, create_train_state
from train.step import make_train_step

OPT = ml_collections.ConfigDict(
    dict(
        name="adamw",
        learning_rate=3e-3,
        warmup_steps=2,
        schedule="cosine",
        end_factor=0.1,
        weight_decay=0.01,
        grad_clip_norm=1.0,
    )
)


def _model(**overrides):
    config = models.get_config(
        "gpt2-tiny", dropout_rate=0.0, attention_dropout_rate=0.0, **overrides
    )
    return config, models.build(config)


def _batches(n, batch=8, length=16, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = rng.integers(1, 128, (batch, length + 1)).astype(np.int32)
        out.append(
            {
                "input_ids": ids[:, :-1],
                "targets": ids[:, 1:],
                "weights": (rng.random((batch, length)) > 0.1).astype(np.float32),
            }
        )
    return out


def _train(mesh_sizes, batches, devices=None, microbatches=1, steps=None, opt=OPT):
    config, model = _model()
    mesh = partitioning.make_mesh(mesh_sizes, devices)
    rules = partitioning.DEFAULT_RULES
    tx, schedule = make_optimizer(opt, 10)
    state, shardings = create_train_state(model, config, tx, mesh, rules, jax.random.key(0))
    with partitioning.activate(mesh, rules):
        step = jax.jit(
            make_train_step(
                model, tx, schedule, "causal_lm", microbatches=microbatches, dropout=False
            ),
            in_shardings=(shardings, None, None),
            out_shardings=(shardings, None),
            donate_argnums=(0,),
        )
        losses = []
        for batch in batches[:steps]:
            device_batch = {
                k: jax.device_put(v, partitioning.batch_sharding(mesh, v.ndim))
                for k, v in batch.items()
            }
            state, metrics = step(state, device_batch, jax.random.key(1))
            losses.append(float(metrics["loss"]))
    return state, losses, mesh


def test_eight_devices_are_simulated():
    assert jax.device_count() == 8, "tests/conftest.py must set XLA_FLAGS before JAX starts"


@pytest.fixture(scope="module")
def single_device_run():
    return _train({"data": 1}, _batches(10), devices=jax.devices()[:1])


@pytest.mark.parametrize("mesh", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_same_losses_on_every_mesh(single_device_run, mesh):
    _, reference, _ = single_device_run
    _, losses, m = _train(dict(zip(("data", "fsdp", "tensor"), mesh)), _batches(10))
    assert dict(m.shape) == dict(zip(("data", "fsdp", "tensor"), mesh), context=1, stage=1)
    np.testing.assert_allclose(losses, reference, rtol=1e-5)
    assert len(set(losses)) == len(losses)  # ten different batches, ten different losses


def test_golden_partition_specs():
    state, _, mesh = _train({"data": 2, "fsdp": 2, "tensor": 2}, _batches(1))
    p = state.params
    golden = {
        ("token_embed", "embedding"): P("tensor", "fsdp"),
        ("decoder", "embed", "position", "embedding"): P(None, "fsdp"),
        ("decoder", "layers_0", "self_attention", "query", "kernel"): P("fsdp", "tensor", None),
        ("decoder", "layers_0", "self_attention", "query", "bias"): P("tensor", None),
        ("decoder", "layers_0", "self_attention", "out", "kernel"): P("tensor", None, "fsdp"),
        ("decoder", "layers_0", "mlp", "wi", "kernel"): P("fsdp", "tensor"),
        ("decoder", "layers_0", "mlp", "wo", "kernel"): P("tensor", "fsdp"),
        ("decoder", "layers_1", "mlp_norm", "scale"): P("fsdp"),
        ("decoder", "final_norm", "bias"): P("fsdp"),
    }
    for path, spec in golden.items():
        leaf = p
        for key in path:
            leaf = leaf[key]
        assert leaf.sharding.spec == spec, (path, leaf.sharding.spec)
        assert leaf.sharding.mesh.shape == mesh.shape
    # A (V, D) = (128, 32) table split 2 x 2: each device holds a quarter.
    assert p["token_embed"]["embedding"].addressable_shards[0].data.shape == (64, 16)
    # Adam's moments follow the parameters; the step count is replicated.
    mu = state.opt_state[1][0].mu
    assert mu["token_embed"]["embedding"].sharding.spec == P("tensor", "fsdp")
    assert state.opt_state[1][0].count.sharding.is_fully_replicated


@pytest.mark.slow
def test_gradient_accumulation_equals_full_batch():
    # Plain SGD, so that parameters move by exactly the (accumulated) gradient; Adam would
    # blow up round-off in gradients that are zero in exact arithmetic.
    sgd = ml_collections.ConfigDict(
        dict(name="sgd", learning_rate=0.5, momentum=0.0, warmup_steps=0, schedule="constant")
    )
    batches = _batches(3, batch=16)
    mesh = {"data": 2, "fsdp": 2, "tensor": 2}
    full, full_losses, _ = _train(mesh, batches, opt=sgd)
    acc, acc_losses, _ = _train(mesh, batches, microbatches=4, opt=sgd)
    np.testing.assert_allclose(acc_losses, full_losses, rtol=1e-6)
    init, _, _ = _train(mesh, batches, steps=0, opt=sgd)
    for a, b, p0 in zip(*(jax.tree.leaves(s.params) for s in (acc, full, init))):
        np.testing.assert_allclose(a - p0, b - p0, rtol=1e-4, atol=1e-7)
    moved = max(
        float(jnp.abs(b - p0).max())
        for b, p0 in zip(jax.tree.leaves(full.params), jax.tree.leaves(init.params))
    )
    assert moved > 1e-3


def test_one_batch_overfits():
    batch = _batches(1, batch=8, length=16)[0]
    const = ml_collections.ConfigDict(
        dict(name="adamw", learning_rate=1e-2, warmup_steps=0, schedule="constant")
    )
    _, losses, _ = _train({"data": -1}, [batch] * 100, opt=const)
    assert losses[0] > 4.0
    assert losses[-1] < 0.25 * losses[0], losses[::20]


def test_restore_onto_other_meshes(tmp_path):
    state, _, mesh = _train({"data": 2, "fsdp": 2, "tensor": 2}, _batches(2))
    ckpt = Checkpointer(tmp_path, async_save=False)
    ckpt.save(2, state, data_state={"step": 2}, config={"note": "x"})
    ckpt.wait()
    config, model = _model()
    tx, _ = make_optimizer(OPT, 10)
    for sizes, devices in (
        ({"data": 1}, jax.devices()[:1]),
        ({"data": 4, "fsdp": 1, "tensor": 2}, None),
    ):
        target = partitioning.make_mesh(sizes, devices)
        abstract, _ = abstract_state(model, config, tx, target, partitioning.DEFAULT_RULES)
        restored, data_state, saved_config = ckpt.restore(2, abstract)
        assert data_state == {"step": 2} and saved_config == {"note": "x"}
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        emb = restored.params["token_embed"]["embedding"]
        assert emb.sharding.mesh.shape == target.shape
    ckpt.close()


def test_mesh_errors():
    with pytest.raises(partitioning.MeshError, match="= 6 devices, but 8 are available"):
        partitioning.make_mesh({"data": 3, "fsdp": 2, "tensor": 1})
    with pytest.raises(partitioning.MeshError, match="not divisible by 3"):
        partitioning.make_mesh({"data": -1, "fsdp": 3})
    mesh = partitioning.make_mesh({"data": 4, "fsdp": 2})
    with pytest.raises(partitioning.MeshError, match="batch_size=12 is not divisible"):
        partitioning.check_batch(12, mesh)


def test_close_waits_for_orbax_temporary_directory_cleanup(tmp_path, monkeypatch):
    """A run that fails right after start closes its Checkpointer and exits; Orbax's clean-up
    of unfinished saves, started in a thread with the manager, must be over by then (else the
    thread dies with a traceback at interpreter shutdown)."""
    import asyncio

    from orbax.checkpoint import checkpoint_manager

    done = []
    cleanup = checkpoint_manager.temporary_paths.cleanup_temporary_paths

    async def slow_cleanup(*args, **kwargs):
        await asyncio.sleep(0.5)
        await cleanup(*args, **kwargs)
        done.append(True)

    monkeypatch.setattr(checkpoint_manager.temporary_paths, "cleanup_temporary_paths", slow_cleanup)
    (tmp_path / "3.orbax-checkpoint-tmp-123").mkdir(parents=True)  # an unfinished save
    ckpt = Checkpointer(tmp_path)
    ckpt.close()
    assert done == [True]
    assert not (tmp_path / "3.orbax-checkpoint-tmp-123").exists()


def test_rules_cover_every_logical_axis_and_drive_the_batch_sharding():
    from models import axes

    assert sorted(dict(partitioning.DEFAULT_RULES)) == sorted(axes.ALL)
    assert partitioning.rules_from_config(()) == partitioning.DEFAULT_RULES
    rules = [[n, "data" if n == "batch" else t] for n, t in partitioning.DEFAULT_RULES]
    rules = partitioning.rules_from_config(rules)
    mesh = partitioning.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert partitioning.batch_sharding(mesh, 3, rules).spec == P("data", None, None)
    assert partitioning.batch_sharding(mesh).spec == P(("data", "fsdp"), None)
    partitioning.check_batch(6, mesh, rules=rules)  # 2 batch shards, not 4
    with pytest.raises(partitioning.MeshError, match="data x fsdp = 4 shards"):
        partitioning.check_batch(6, mesh)
    for bad, needle in [
        ([["batch", "data"]], "no rule for length, embed, heads, kv, mlp, vocab, layers"),
        ([*rules, ["hidden", "tensor"]], "unknown logical axis 'hidden'"),
        ([["batch", ["data", "model"]], *rules[1:]], "unknown mesh axis 'model'"),
        ([*rules, ["batch", "fsdp"]], "two rules for 'batch'"),
        ([1, 2], "1 is not \\[logical axis, mesh axes\\]"),
    ]:
        with pytest.raises(partitioning.MeshError, match=needle):
            partitioning.rules_from_config(bad)
