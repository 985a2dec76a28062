"""Context parallelism (train/context.py) on 8 simulated CPU devices: every family's loss and
gradients with the sequence split 2 and 4 ways (with and without load balancing) equal the same
step split only by batch; the reordering and its inverse; the K/V all-gathers in the compiled
step; and the one-line errors."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

import models
from models.summary import dummy_inputs
from train import context, losses, partitioning

LENGTH = 16
ROWS = 8


def _packed_rows(rng, vocab):
    """Decoder rows of 1-2 packed examples and trailing padding: ids, segments, positions."""
    ids = rng.integers(2, vocab, (ROWS, LENGTH + 1)).astype(np.int32)
    segments = np.zeros((ROWS, LENGTH), np.int32)
    positions = np.zeros((ROWS, LENGTH), np.int32)
    for r in range(ROWS):
        first, used = rng.integers(3, 9), rng.integers(10, LENGTH + 1)
        segments[r, :first], segments[r, first:used] = 1, 2
        positions[r, :first], positions[r, first:used] = np.arange(first), np.arange(used - first)
    return ids, segments, positions


def _batch(family: str, seed: int = 0, vocab: int = 128) -> dict:
    rng = np.random.default_rng(seed)
    ids, segments, positions = _packed_rows(rng, vocab)
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
        masked = (rng.random((ROWS, LENGTH)) < 0.3) & (valid > 0)
        return dict(
            input_ids=np.where(masked, 1, ids[:, :-1]),
            attention_mask=valid,
            targets=ids[:, :-1],
            weights=masked.astype(np.float32),
        )
    _, dec_segments, _ = _packed_rows(rng, vocab)  # seq2seq with padding on both sides
    dec_valid = (dec_segments > 0).astype(np.int32)
    targets = rng.integers(2, vocab, (ROWS, LENGTH)).astype(np.int32)
    return dict(
        input_ids=ids[:, :-1],
        attention_mask=valid,
        decoder_input_ids=np.concatenate([np.zeros((ROWS, 1), np.int32), targets[:, :-1]], 1),
        decoder_attention_mask=dec_valid,
        targets=targets,
        weights=dec_valid.astype(np.float32),
    )


OBJECTIVES = {"decoder": "clm", "encoder": "mlm", "encoder_decoder": "seq2seq"}


def _loss_and_grads(config, params, batch, sizes):
    """The mean loss and its gradients on a mesh of `sizes`, and the compiled program's text."""
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

    with partitioning.activate(mesh, rules):
        step = jax.jit(jax.value_and_grad(mean_loss))
        compiled = step.lower(params, batch).compile()
        loss, grads = compiled(params, batch)
    return float(loss), jax.device_get(grads), compiled.as_text()


def _init(config):
    model = models.build(config)
    variables = model.init(jax.random.key(1), **dummy_inputs(config))
    return jax.device_get(nn.meta.unbox(variables["params"]))


CASES = [
    ("gpt2-tiny", 2, True),
    ("gpt2-tiny", 4, True),
    ("gpt2-tiny", 2, False),
    ("llama-tiny", 4, True),
    ("bert-tiny", 2, False),
    ("bert-tiny", 4, False),
    ("t5-tiny", 2, True),
    ("bart-tiny", 4, True),
    ("bart-tiny", 2, False),
]


@pytest.mark.parametrize("name,ctx,balanced", CASES)
def test_context_split_equals_the_batch_split(name, ctx, balanced):
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
    loss, grads, hlo = _loss_and_grads(
        split_config, params, split_batch, {"data": 8 // ctx, "context": ctx}
    )
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    # within 1e-5 of the largest gradient (a key bias's gradient is 0 up to round-off)
    scale = max(float(np.abs(r).max()) for r in jax.tree.leaves(ref_grads))
    for (path, g), r in zip(
        jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads), strict=True
    ):
        np.testing.assert_allclose(
            g, r, rtol=1e-5, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path)
        )
    # the keys and values are gathered over the context axis (the batch-split step has none)
    assert hlo.count("all-gather") > ref_hlo.count("all-gather")
