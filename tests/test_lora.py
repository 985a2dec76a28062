"""LoRA (train/lora.py): adapters that start as the identity, merge exactly into the kernels,
train alone over a frozen base with optimizer state of their own, shard like their kernels,
and give one error line for bad settings."""

from __future__ import annotations

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import models
from models.errors import UserError
from train import lora, partitioning
from train.optim import make_optimizer
from train.state import create_train_state
from train.step import make_train_step

OPT = ml_collections.ConfigDict(
    dict(name="adamw", learning_rate=1e-2, warmup_steps=1, schedule="constant", weight_decay=0.0)
)


def _configs(name: str, **section):
    """(the base config, the same with LoRA rank 4)."""
    base = models.get_config(name, dropout_rate=0.0, attention_dropout_rate=0.0)
    if base.family == "encoder" and base.head == "none":
        base = base.replace(head="classification", num_labels=3)
    return base, lora.configure(dict(rank=4, alpha=8.0, **section), base, init_from="base")


def _inputs(config, batch=2, length=8, seed=0):
    rng = np.random.default_rng(seed)
    ids = lambda: rng.integers(1, 60, (batch, length)).astype(np.int32)  # noqa: E731
    if config.family == "encoder_decoder":
        return {"input_ids": ids(), "decoder_input_ids": ids()}
    return {"input_ids": ids()}


def _init(config, inputs, seed=0) -> dict:
    params = models.build(config).init(jax.random.key(seed), **inputs)["params"]
    return jax.tree.map(np.asarray, nn.meta.unbox(params))


def _apply(config, params, inputs) -> np.ndarray:
    out = models.build(config).apply({"params": params}, **inputs)
    return np.asarray(out.logits if out.logits is not None else out.last_hidden_state)


def _nonzero_b(params, seed=1) -> dict:
    rng = np.random.default_rng(seed)
    flat = {
        k: rng.normal(0, 0.3, v.shape).astype(v.dtype) if k.endswith("lora_b") else v
        for k, v in lora.flat(params).items()
    }
    return lora._nested(flat)


def _without_adapters(params) -> dict:
    return lora._nested({k: v for k, v in lora.flat(params).items() if "lora_" not in k})


@pytest.mark.parametrize("name", ["bert-tiny", "gpt2-tiny", "t5-tiny", "bart-tiny", "llama-tiny"])
def test_at_initialisation_the_adapted_model_is_the_base_exactly(name):
    base, adapted = _configs(name)
    inputs = _inputs(base)
    params = _init(adapted, inputs)
    b = [v for k, v in lora.flat(params).items() if k.endswith("lora_b")]
    assert b and not any(np.any(x) for x in b)
    ours = _apply(adapted, params, inputs)
    np.testing.assert_array_equal(ours, _apply(base, _without_adapters(params), inputs))
    # and a non-zero B changes the output: the adapters are in the computation
    assert not np.allclose(_apply(adapted, _nonzero_b(params), inputs), ours, atol=1e-4)


@pytest.mark.parametrize("name", ["bert-tiny", "gpt2-tiny", "t5-tiny"])
@pytest.mark.parametrize("scan", [False, True])
def test_merged_logits_equal_the_adapted_model_with_a_nonzero_b(name, scan):
    base, adapted = _configs(name)
    adapted = adapted.replace(scan_layers=scan)
    inputs = _inputs(base)
    params = _nonzero_b(_init(adapted, inputs))
    plain, merged = lora.merged(adapted, params)
    assert plain.lora_rank == 0 and not any("lora_" in k for k in lora.flat(merged))
    ours = _apply(adapted, params, inputs)
    np.testing.assert_allclose(_apply(plain, merged, inputs), ours, rtol=0, atol=1e-5)
    assert not np.allclose(_apply(plain, _without_adapters(params), inputs), ours, atol=1e-4)


def test_default_targets_follow_the_family():
    for name in ("bert-tiny", "gpt2-tiny", "t5-tiny", "bart-tiny"):
        _, adapted = _configs(name)
        layers = {k.rsplit("/", 2)[-2] for k in lora.flat(_init(adapted, _inputs(adapted)))
                  if k.endswith("lora_a")}  # fmt: skip
        assert layers == {"query", "value"}, name
    _, llama = _configs("llama-tiny")
    layers = {k.rsplit("/", 2)[-2] for k in lora.flat(_init(llama, _inputs(llama)))
              if k.endswith("lora_a")}  # fmt: skip
    assert layers == {"query", "key", "value", "out", "wi", "wi_linear", "wo"}


def test_a_task_head_trains_and_a_language_model_head_stays_frozen():
    """As PEFT: a SEQ_CLS / TOKEN_CLS adapter saves its head, a causal or seq2seq LM's is the
    pretrained one and stays frozen (llama2-7b's lm_head alone is 131M parameters)."""
    for head, trains in (("classification", True), ("token_classification", True), ("lm", False)):
        config = models.get_config("bert-tiny" if head != "lm" else "llama-tiny")
        config = config.replace(head=head, num_labels=3)
        assert lora.configure({"rank": 2}, config, init_from="base").lora_train_head is trains
    config = models.get_config("bert-tiny").replace(head="classification", num_labels=3)
    assert not lora.configure({"rank": 2, "train_head": False}, config, "base").lora_train_head
    llama = lora.configure({"rank": 2}, models.get_config("llama-tiny"), init_from="base")
    trained, frozen = lora.split(_init(llama, _inputs(llama)), llama.lora_train_head)
    assert all(k.endswith(lora.ADAPTERS) for k in lora.flat(trained))
    assert any(k.startswith("head/") for k in lora.flat(frozen))


def _train(config, mesh_sizes, steps=4, devices=None):
    """`steps` LoRA steps of `config` on a mesh; (the first state, the last, losses, mesh)."""
    model = models.build(config)
    mesh = partitioning.make_mesh(mesh_sizes, devices)
    rules = partitioning.DEFAULT_RULES
    tx, schedule = make_optimizer(OPT, 10)
    state, shardings = create_train_state(model, config, tx, mesh, rules, jax.random.key(0))
    state = state.replace(params=jax.device_put(_nonzero_b(jax.device_get(state.params)),
                                                shardings.params))  # fmt: skip
    first = jax.device_get(state)
    rng = np.random.default_rng(0)
    with partitioning.activate(mesh, rules):
        step = jax.jit(
            make_train_step(model, tx, schedule, "causal_lm", dropout=False),
            in_shardings=(shardings, None, None),
            out_shardings=(shardings, None),
        )
        losses = []
        for _ in range(steps):
            ids = rng.integers(1, 120, (8, 17)).astype(np.int32)
            batch = {"input_ids": ids[:, :-1], "targets": ids[:, 1:],
                     "weights": np.ones((8, 16), np.float32)}  # fmt: skip
            batch = {k: jax.device_put(v, partitioning.batch_sharding(mesh, v.ndim))
                     for k, v in batch.items()}  # fmt: skip
            state, metrics = step(state, batch, jax.random.key(1))
            losses.append(float(metrics["loss"]))
    return first, state, losses, mesh


@pytest.fixture(scope="module")
def one_device():
    _, config = _configs("gpt2-tiny")
    return _train(config, {"data": 1}, devices=jax.devices()[:1])


def test_only_adapters_train_and_carry_optimizer_state(one_device):
    first, last, losses, _ = one_device
    trained = set(lora.flat(first.params))
    assert trained and all(k.endswith(("lora_a", "lora_b")) for k in trained)  # no head: LM
    moments = {"/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
               for path, _ in jax.tree_util.tree_flatten_with_path(last.opt_state)[0]}  # fmt: skip
    assert moments and all(("lora_a" in m or "lora_b" in m or m.endswith("count")) for m in moments)
    for name, value in lora.flat(jax.device_get(last.frozen)).items():  # the base: bit-identical
        np.testing.assert_array_equal(value, lora.flat(first.frozen)[name], err_msg=name)
    changed = [k for k, v in lora.flat(jax.device_get(last.params)).items()
               if not np.array_equal(v, lora.flat(first.params)[k])]  # fmt: skip
    assert len(changed) == len(trained) and losses[-1] < losses[0]


def test_adapters_shard_like_their_kernels_and_train_the_same(one_device):
    _, config = _configs("gpt2-tiny")
    _, last, losses, mesh = _train(config, {"data": 2, "fsdp": 2, "tensor": 2})
    np.testing.assert_allclose(losses, one_device[2], rtol=1e-5)
    layer = last.params["decoder"]["layers_0"]["self_attention"]["query"]
    kernel = last.frozen["decoder"]["layers_0"]["self_attention"]["query"]["kernel"]
    assert kernel.sharding.spec == P("fsdp", "tensor", None)
    assert layer["lora_a"].sharding.spec == P("fsdp", None)  # the kernel's input axis
    assert layer["lora_b"].sharding.spec == P(None, "tensor", None)  # its output axes
    single = jax.device_get(one_device[1].params)
    for name, value in lora.flat(jax.device_get(last.params)).items():
        np.testing.assert_allclose(value, lora.flat(single)[name], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "section, needle",
    [
        (dict(rank=-1), "lora.rank=-1 must be >= 0"),
        (dict(rank=4, targets=("no_such_layer",)), "'no_such_layer' matches no attention"),
        (dict(rank=4, targets=("(unclosed",)), "is not a regex"),
        (dict(rank=4, colour="red"), "unknown lora key(s) ['colour']"),
    ],
)
def test_bad_lora_settings_are_one_line(section, needle):
    base = models.get_config("gpt2-tiny")
    with pytest.raises(UserError, match=None) as error:
        config = lora.configure(section, base, init_from="base")
        params = _init(config, _inputs(config))
        lora.check_targets(params, config)
    assert needle in str(error.value) and "\n" not in str(error.value)


def test_lora_needs_a_base():
    with pytest.raises(UserError, match="needs init_from"):
        lora.configure(dict(rank=8), models.get_config("gpt2-tiny"), init_from="")


def test_the_planner_reports_the_memory_lora_saves():
    """gpt2 widths, two blocks, FSDP over 8: with LoRA the optimizer holds two Adam moments of
    the adapters only, and the step's peak drops (no base gradients, no base moments)."""
    from configs.gpt_lm import get_config
    from launch.plan import plan

    def report(rank):
        c = get_config("gpt2")
        c.model.num_layers, c.batch_size, c.seq_len = 2, 8, 64
        c.lora.rank = rank
        return plan(c, 8, {"data": 1, "fsdp": 8, "tensor": 1}, chip="h100")

    full, adapted = report(0), report(8)
    adapters = 2 * 2 * (768 * 8 + 8 * 768)  # layers x (q, v) x (A + B)
    assert adapted["trained_params"] == adapters and adapted["lora_rank"] == 8
    assert full["trained_params"] == full["params"]
    assert adapted["params"] == full["params"] + adapters
    assert adapted["memory_total"]["optimizer"] <= 2 * 4 * adapters + 1024  # f32 mu and nu
    saved = full["memory_total"]["optimizer"] - adapted["memory_total"]["optimizer"]
    assert saved > 0.99 * full["memory_total"]["optimizer"]
    drop = full["memory_per_device"]["peak"] - adapted["memory_per_device"]["peak"]
    assert drop > saved / 8  # the moments and the base's gradients are gone from every device


@pytest.mark.parametrize(
    "changes, rtol",
    [
        (dict(remat_policy="full"), 1e-5),
        (dict(dtype="bfloat16"), 3e-2),
        (dict(scan_layers=True), None),
    ],
)
def test_lora_trains_with_remat_bf16_and_scanned_layers(one_device, changes, rtol):
    _, config = _configs("gpt2-tiny")
    _, last, losses, _ = _train(config.replace(**changes), {"data": 1}, devices=jax.devices()[:1])
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    if rtol is not None:  # the same adapters and batches: the same losses, to rounding
        np.testing.assert_allclose(losses, one_device[2], rtol=rtol)
    else:  # scanned: the adapters are stacked along the layer axis, like their kernels
        a = last.params["decoder"]["layers"]["self_attention"]["query"]["lora_a"]
        assert a.shape[0] == config.num_layers
