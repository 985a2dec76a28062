"""Context parallelism (train/context.py) on 8 simulated CPU devices: every family's loss and
gradients with the sequence split 2 and 4 ways (with and without load balancing) equal the same
step split only by batch; the reordering and its inverse; the K/V all-gathers in the compiled
step; and the one-line errors."""

import contextlib
import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

import models
from models import attention
from models.summary import dummy_inputs
from train import context, losses, partitioning

LENGTH = 16
ROWS = 8


def _packed_rows(rng, vocab, rows=ROWS, length=LENGTH):
    """Decoder rows of 1-2 packed examples and trailing padding: ids, segments, positions."""
    ids = rng.integers(2, vocab, (rows, length + 1)).astype(np.int32)
    segments = np.zeros((rows, length), np.int32)
    positions = np.zeros((rows, length), np.int32)
    for r in range(rows):
        first = rng.integers(3, length // 2 + 1)
        used = rng.integers(length * 5 // 8, length + 1)
        segments[r, :first], segments[r, first:used] = 1, 2
        positions[r, :first], positions[r, first:used] = np.arange(first), np.arange(used - first)
    return ids, segments, positions


def _batch(family: str, seed: int = 0, vocab: int = 128, rows=ROWS, length=LENGTH) -> dict:
    rng = np.random.default_rng(seed)
    ids, segments, positions = _packed_rows(rng, vocab, rows, length)
    valid = (segments > 0).astype(np.int32)
    if family == "decoder":  # packed causal LM rows
        return dict(
            input_ids=ids[:, :-1],
            attention_mask=valid,
            segment_ids=segments,
            positions=positions,
            targets=ids[:, 1:],
            weights=valid.astype(np.float32),
        )
    if family == "encoder":  # masked LM with padding
        masked = (rng.random((rows, length)) < 0.3) & (valid > 0)
        return dict(
            input_ids=np.where(masked, 1, ids[:, :-1]),
            attention_mask=valid,
            targets=ids[:, :-1],
            weights=masked.astype(np.float32),
        )
    _, dec_segments, _ = _packed_rows(rng, vocab, rows, length)  # seq2seq, padding on both sides
    dec_valid = (dec_segments > 0).astype(np.int32)
    targets = rng.integers(2, vocab, (rows, length)).astype(np.int32)
    return dict(
        input_ids=ids[:, :-1],
        attention_mask=valid,
        decoder_input_ids=np.concatenate([np.zeros((rows, 1), np.int32), targets[:, :-1]], 1),
        decoder_attention_mask=dec_valid,
        targets=targets,
        weights=dec_valid.astype(np.float32),
    )


OBJECTIVES = {"decoder": "clm", "encoder": "mlm", "encoder_decoder": "seq2seq"}


def _loss_and_grads(config, params, batch, sizes, interpret=False):
    """The mean loss and its gradients on a mesh of `sizes`, and the compiled program's text
    (with `interpret`, also whether a Pallas kernel ran, in interpret mode)."""
    model = models.build(config)
    mesh = partitioning.make_mesh(sizes)
    rules = partitioning.DEFAULT_RULES
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), **dummy_inputs(config)))
    params = jax.device_put(params, partitioning.logical_shardings(boxed["params"], mesh, rules))
    batch = {
        k: jax.device_put(v, partitioning.batch_sharding(mesh, np.ndim(v), rules))
        for k, v in batch.items()
    }
    objective = OBJECTIVES[config.family]

    def mean_loss(p, b):
        sums = losses.loss_sums(model, p, b, objective)
        return sums["loss"] / sums["weight"]

    with partitioning.activate(mesh, rules), contextlib.ExitStack() as stack:
        if interpret:
            stack.enter_context(attention.interpret_kernels())
        traced = jax.jit(jax.value_and_grad(mean_loss)).trace(params, batch)
        compiled = traced.lower().compile()
        loss, grads = compiled(params, batch)
    if interpret:
        return float(loss), jax.device_get(grads), "pallas_call" in str(traced.jaxpr)
    return float(loss), jax.device_get(grads), compiled.as_text()


def _init(config):
    model = models.build(config)
    variables = model.init(jax.random.key(1), **dummy_inputs(config))
    return jax.device_get(nn.meta.unbox(variables["params"]))


def _assert_same(loss, grads, ref_loss, ref_grads, tol=1e-5):
    np.testing.assert_allclose(loss, ref_loss, rtol=tol)
    # within `tol` of the largest gradient (a key bias's gradient is 0 up to round-off)
    scale = max(float(np.abs(r).max()) for r in jax.tree.leaves(ref_grads))
    for (path, g), r in zip(
        jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads), strict=True
    ):
        np.testing.assert_allclose(
            g, r, rtol=tol, atol=tol * scale, err_msg=jax.tree_util.keystr(path)
        )


CASES = [  # (model, the mesh that splits the sequence, load balancing)
    ("gpt2-tiny", {"data": 4, "context": 2}, True),
    ("gpt2-tiny", {"data": 2, "context": 4}, True),
    ("gpt2-tiny", {"data": 4, "context": 2}, False),
    ("llama-tiny", {"data": 2, "context": 4}, True),
    ("llama-tiny", {"fsdp": 2, "context": 2, "tensor": 2}, True),
    ("bert-tiny", {"data": 4, "context": 2}, False),
    ("bert-tiny", {"data": 2, "context": 4}, False),
    ("bert-tiny", {"data": 2, "fsdp": 2, "context": 2}, False),
    ("t5-tiny", {"data": 4, "context": 2}, True),
    ("t5-tiny", {"data": 2, "context": 2, "tensor": 2}, True),
    ("t5-tiny", {"data": 2, "context": 4}, False),
    ("llama-tiny", {"data": 4, "context": 2}, False),
    ("bart-tiny", {"data": 2, "context": 4}, True),
    ("bart-tiny", {"data": 4, "context": 2}, False),
]


@pytest.mark.parametrize("name,mesh,balanced", CASES)
def test_context_split_equals_the_batch_split(name, mesh, balanced):
    ctx = mesh["context"]
    head = {"bert-tiny": "mlm"}.get(name, "lm")
    config = models.get_config(
        name, head=head, dropout_rate=0.0, attention_dropout_rate=0.0, attention_kernel="xla"
    )
    batch = _batch(config.family)
    params = _init(config)
    ref_loss, ref_grads, ref_hlo = _loss_and_grads(config, params, batch, {"data": 8})
    split_config, split_batch = config, batch
    if balanced:
        split_config = dataclasses.replace(config, causal_from_positions=True)
        split_batch = context.balance(batch, config.family, ctx)
        assert not np.array_equal(split_batch["targets"], batch["targets"])
    loss, grads, hlo = _loss_and_grads(split_config, params, split_batch, mesh)
    _assert_same(loss, grads, ref_loss, ref_grads)
    # the keys and values are gathered over the context axis (the batch-split step has none)
    assert hlo.count("all-gather") > ref_hlo.count("all-gather")


def test_reordered_rows_need_masks_from_positions():
    """The check above can fail: balanced rows read with slot-order causal masks differ."""
    config = models.get_config("gpt2-tiny", dropout_rate=0.0, attention_dropout_rate=0.0)
    batch, params = _batch("decoder"), _init(config)
    ref_loss, _, _ = _loss_and_grads(config, params, batch, {"data": 8})
    wrong, _, _ = _loss_and_grads(
        config, params, context.balance(batch, "decoder", 2), {"data": 4, "context": 2}
    )
    assert abs(wrong - ref_loss) / ref_loss > 1e-4  # ten times the tolerance of the tests above


def test_dual_chunk_order():
    np.testing.assert_array_equal(context.dual_chunk_order(8, 2), [0, 1, 6, 7, 2, 3, 4, 5])
    np.testing.assert_array_equal(
        context.dual_chunk_order(16, 4), [0, 1, 14, 15, 2, 3, 12, 13, 4, 5, 10, 11, 6, 7, 8, 9]
    )
    # every device gets the same causal work: the sum of its query positions + 1
    order = context.dual_chunk_order(64, 4)
    work = (order + 1).reshape(4, -1).sum(axis=1)
    assert len(set(work.tolist())) == 1


@pytest.mark.parametrize("family", ["decoder", "encoder_decoder"])
def test_reordering_and_its_inverse_are_the_identity_on_every_field(family):
    batch = _batch(family)
    balanced = context.balance(batch, family, 4)
    positions = "positions" if family == "decoder" else "decoder_positions"
    assert positions in balanced  # added, so that the reordered rows keep their order
    restored = context.unbalance(balanced, family, 4)
    for key, value in batch.items():
        moved = key in context.CAUSAL_FIELDS[family]
        assert moved != np.array_equal(balanced[key], value), key  # random rows: all differ
        np.testing.assert_array_equal(restored[key], value, err_msg=key)
    if family == "encoder_decoder":  # the added positions are the source slots
        order = context.dual_chunk_order(LENGTH, 4)
        np.testing.assert_array_equal(balanced[positions], np.broadcast_to(order, (ROWS, LENGTH)))


def _run_config(**overrides):
    import configs.gpt_lm

    config = configs.gpt_lm.get_config("smoke")
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


@pytest.mark.parametrize(
    "overrides,needle",
    [
        ({"mesh.context": 4, "seq_len": 36}, "seq_len=36 is not divisible by 2 x mesh.context = 8"),
        (
            {"mesh.context": 4, "mesh.context_load_balance": False, "seq_len": 34},
            "seq_len=34 is not divisible by mesh.context = 4",
        ),
        ({"mesh.context": 3}, "mesh.context=3 is odd; load balancing"),
        ({"mesh.context": 2, "model.attention_kernel": "blocked"}, "attention_kernel='blocked'"),
        (
            {"mesh.context": 2, "seq_len": 128, "data.objective": "span"},
            "span targets' length (T5's formula)=29 is not divisible by 2 x mesh.context = 4; "
            "set --config.data.target_length=32",
        ),
    ],
)
def test_bad_context_settings_are_one_line(overrides, needle):
    kernel = overrides.pop("model.attention_kernel", "auto")
    config = _run_config(**overrides)
    model_config = models.get_config("gpt2-tiny", attention_kernel=kernel)
    with pytest.raises(context.ContextError) as error:
        context.train_config(config, model_config, config.mesh.context)
    assert needle in str(error.value) and "\n" not in str(error.value)


def test_splash_takes_the_load_balanced_causal_mask():
    """Splash (Pallas, interpret mode) on reordered packed rows split over context=2: its own
    load-balanced causal mask, no fallback, the loss and gradients of xla without context."""
    config = models.get_config(
        "llama-tiny", num_heads=2, num_kv_heads=2, max_positions=256, dropout_rate=0.0,
        attention_dropout_rate=0.0, attention_kernel="xla",
    )  # fmt: skip
    batch, params = _batch("decoder", rows=4, length=256), _init(config)
    ref_loss, ref_grads, _ = _loss_and_grads(config, params, batch, {"data": 4, "tensor": 2})
    splash = dataclasses.replace(config, attention_kernel="splash", causal_from_positions=True)
    balanced = context.balance(batch, "decoder", 2)
    loss, grads, ran = _loss_and_grads(
        splash, params, balanced, {"data": 4, "context": 2}, interpret=True
    )
    assert ran, "splash fell back to xla"
    _assert_same(loss, grads, ref_loss, ref_grads)


def test_a_context_axis_across_processes_is_one_line():
    """Each process reads its own rows, so the devices of one sequence must be one process's."""
    from types import SimpleNamespace

    def mesh(processes):  # (data, context) devices with these process indices
        processes = np.asarray(processes)[:, None, None, :, None]  # (data, stage, fsdp, c, tensor)
        devices = np.vectorize(lambda p: SimpleNamespace(process_index=p))(processes)
        shape = dict(zip(partitioning.MESH_AXES, devices.shape))
        return SimpleNamespace(axis_names=partitioning.MESH_AXES, devices=devices, shape=shape)

    context.check_hosts(mesh([[0, 0], [1, 1]]))  # data over hosts, context within
    with pytest.raises(context.ContextError, match="spans processes") as error:
        context.check_hosts(mesh([[0, 1], [0, 1]]))  # context over the hosts
    assert "\n" not in str(error.value)


def test_a_longer_target_length_lets_span_targets_split():
    config = _run_config(**{"mesh.context": 2, "seq_len": 128, "data.objective": "span"})
    config.data.target_length = 32
    model_config = models.get_config("t5-tiny")
    assert context.train_config(config, model_config, 2).causal_from_positions
