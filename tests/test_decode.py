"""Cached generation against a cache-free reference, sampling controls and EOS handling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from train.decode import beam_search, generate, left_pad, sample_logits


def _model(name):
    config = models.get_config(name, dropout_rate=0.0, attention_dropout_rate=0.0)
    model = models.build(config)
    ids = jnp.ones((1, 8), jnp.int32)
    kw = {"decoder_input_ids": ids} if config.family == "encoder_decoder" else {}
    return model, model.init(jax.random.key(3), ids, **kw)["params"]


def _greedy_without_cache(model, params, prompt, steps, start_id=0):
    """Re-runs the whole sequence for every new token (no KV cache). The sequence is
    right-padded to a fixed width so that one compiled forward serves every step: causal
    attention keeps the padding after position t from changing the logits at t."""
    forward = jax.jit(lambda p, *a: model.apply({"params": p}, *a).logits)
    if model.config.family == "encoder_decoder":
        seq, offset = [start_id], 1
        width = steps + 1
        run = lambda s: forward(params, prompt[None], jnp.asarray([s + [0] * (width - len(s))]))  # noqa: E731
    else:
        seq, offset = list(prompt), len(prompt)
        width = len(prompt) + steps
        run = lambda s: forward(params, jnp.asarray([s + [0] * (width - len(s))]))  # noqa: E731
    for _ in range(steps):
        seq.append(int(jnp.argmax(run(seq)[0, len(seq) - 1])))
    return seq[offset:]


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny", "t5-tiny", "bart-tiny"])
def test_cached_greedy_equals_uncached(name):
    model, params = _model(name)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(2, 128, n).astype(np.int32) for n in (5, 3, 7)]
    if model.config.family == "encoder_decoder":
        ids, mask = left_pad(prompts)  # encoder inputs: padding anywhere is masked
        out = generate(model, params, ids, attention_mask=mask, max_new_tokens=6)
        for row, p in enumerate(prompts):
            assert list(out[row]) == _greedy_without_cache(model, params, jnp.asarray(p), 6)
    else:
        ids, mask = left_pad(prompts)
        out = generate(model, params, ids, attention_mask=mask, max_new_tokens=6)
        for row, p in enumerate(prompts):
            assert list(out[row]) == _greedy_without_cache(model, params, [int(x) for x in p], 6)


def test_sampling_controls():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 4000))
    keys = jax.random.key(0)
    greedy = sample_logits(logits, keys)
    assert (greedy == 0).all()
    top1 = sample_logits(logits, keys, temperature=1.0, top_k=1)
    assert (top1 == 0).all()
    nucleus = sample_logits(logits, keys, temperature=1.0, top_p=0.7)  # keeps {0, 1}
    assert set(np.unique(nucleus)) == {0, 1}
    free = np.asarray(sample_logits(logits, keys, temperature=1.0))
    np.testing.assert_allclose(
        np.bincount(free, minlength=4) / len(free), [0.5, 0.3, 0.15, 0.05], atol=0.03
    )
    again = sample_logits(logits, keys, temperature=1.0)
    np.testing.assert_array_equal(free, again)  # same key, same draw


def test_eos_ends_a_row():
    model, params = _model("gpt2-tiny")
    prompt = np.array([[5, 6, 7]], np.int32)
    free = generate(model, params, prompt, max_new_tokens=6)
    eos = int(free[0, 1])  # make the second generated token the EOS
    out = generate(model, params, prompt, max_new_tokens=6, eos_id=eos)
    first = list(out[0]).index(eos)
    assert first <= 1 and (out[0, first:] == eos).all()


@pytest.mark.parametrize("name", ["gpt2-tiny", "t5-tiny"])
def test_beam_size_one_equals_greedy(name):
    model, params = _model(name)
    ids = np.random.default_rng(1).integers(2, 128, (3, 6)).astype(np.int32)
    greedy = generate(model, params, ids, max_new_tokens=7)
    assert (beam_search(model, params, ids, beams=1, max_new_tokens=7) == greedy).all()
    eos = int(greedy[0, 2])  # an EOS that the greedy path meets in row 0
    greedy_eos = generate(model, params, ids, max_new_tokens=7, eos_id=eos)
    beam_eos = beam_search(model, params, ids, beams=1, max_new_tokens=7, eos_id=eos)
    np.testing.assert_array_equal(beam_eos, greedy_eos)


def test_beam_search_with_all_beams_is_exhaustive():
    """With as many beams as tokens, two steps of beam search are an exhaustive search."""
    model, params = _model("gpt2-tiny")
    prompt = np.array([[5, 9, 17]], np.int32)
    out = beam_search(model, params, prompt, beams=128, max_new_tokens=2, length_penalty=0.0)
    first = jax.nn.log_softmax(model.apply({"params": params}, prompt).logits[0, -1])  # (V,)
    seqs = np.concatenate([np.repeat(prompt, 128, 0), np.arange(128)[:, None]], 1)
    second = jax.nn.log_softmax(model.apply({"params": params}, seqs).logits[:, -1])  # (V, V)
    best = np.unravel_index(np.argmax(first[:, None] + second), (128, 128))
    assert tuple(out[0]) == tuple(int(x) for x in best)


@pytest.mark.parametrize("name", ["gpt2-tiny", "t5-tiny"])
def test_decoding_sharded_as_in_training_equals_one_device(name):
    """Parameters laid out by the training rules over a (data 2, fsdp 2, tensor 2) mesh decode
    to the same tokens as on one device (greedy and beam search)."""
    import ml_collections

    from train import partitioning
    from train.optim import make_optimizer
    from train.state import create_train_state

    model, params = _model(name)
    mesh = partitioning.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    tx, _ = make_optimizer(ml_collections.ConfigDict({"name": "sgd", "learning_rate": 0.1}), 1)
    rules = partitioning.DEFAULT_RULES
    state, _ = create_train_state(model, model.config, tx, mesh, rules, jax.random.key(3))
    sharded = state.params
    assert any(len(x.sharding.device_set) > 1 for x in jax.tree.leaves(sharded))
    ids = np.random.default_rng(2).integers(2, 128, (4, 6)).astype(np.int32)
    with partitioning.activate(mesh, rules):
        greedy = generate(model, sharded, ids, max_new_tokens=5)
        beams = beam_search(model, sharded, ids, beams=3, max_new_tokens=5)
    local = jax.tree.map(np.asarray, sharded)
    np.testing.assert_array_equal(greedy, generate(model, local, ids, max_new_tokens=5))
    np.testing.assert_array_equal(beams, beam_search(model, local, ids, beams=3, max_new_tokens=5))
