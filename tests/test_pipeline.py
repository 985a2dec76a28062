"""Pipeline parallelism (models/pipeline.py, train/stages.py) on 8 simulated CPU devices: the
loss and gradients of the layers run as 2 and 4 stages, with S and 2S microbatches and 1 and 2
repeats, equal the unpipelined step's in float32, with every bubble slot filled with NaN; the
stages compose with data, fsdp, context and tensor; dropout differs per microbatch; the rotation
compiles to collective permutes; and the one-line errors."""

import dataclasses
import functools

import flax.linen as nn
import jax
import numpy as np
import pytest
from ml_collections import ConfigDict
from test_context import _assert_same, _batch, _init, _loss_and_grads

import models
from models import pipeline
from models.config import ConfigError
from models.summary import dummy_inputs
from train import context, losses, partitioning, stages

ROWS = 16


@functools.cache
def _config(name: str, layers: int, remat: str = "none"):
    head = {"bert-tiny": "mlm"}.get(name, "lm")
    config = models.get_config(name, head=head).replace(
        num_layers=layers,
        scan_layers=True,
        remat_policy=remat,
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
    )
    return config


@functools.cache
def _reference(name: str, layers: int):
    """The unpipelined loss and gradients, the batch split over data only."""
    config = _config(name, layers)
    params, batch = _init(config), _batch(config.family, rows=ROWS)
    return params, batch, _loss_and_grads(config, params, batch, {"data": 8})


def _pipelined(config, stages_, micro, repeats):
    return config.replace(
        pipeline_stages=stages_, pipeline_microbatches=micro, pipeline_repeats=repeats
    )


CASES = [  # (model, layers, mesh, microbatches, repeats)
    ("gpt2-tiny", 8, {"stage": 2, "data": 4}, 2, 1),
    ("gpt2-tiny", 8, {"stage": 2, "data": 4}, 4, 1),
    ("gpt2-tiny", 8, {"stage": 2, "data": 4}, 2, 2),
    ("gpt2-tiny", 8, {"stage": 2, "data": 4}, 4, 2),
    ("gpt2-tiny", 8, {"stage": 4, "data": 2}, 4, 1),
    ("gpt2-tiny", 8, {"stage": 4, "data": 2}, 8, 1),
    ("gpt2-tiny", 8, {"stage": 4, "data": 2}, 4, 2),
    ("gpt2-tiny", 8, {"stage": 4, "data": 2}, 8, 2),
    ("llama-tiny", 4, {"stage": 2, "fsdp": 2, "tensor": 2}, 4, 1),
    ("llama-tiny", 4, {"stage": 2, "data": 2, "context": 2}, 2, 2),
    ("bert-tiny", 4, {"stage": 2, "data": 4}, 4, 1),
    ("t5-tiny", 4, {"stage": 2, "data": 2, "tensor": 2}, 2, 1),
    ("t5-tiny", 4, {"stage": 2, "data": 4}, 4, 2),
    ("bart-tiny", 4, {"stage": 4, "data": 2}, 8, 1),
]


@pytest.mark.parametrize("name,layers,mesh,micro,repeats", CASES)
def test_pipeline_equals_the_unpipelined_step(monkeypatch, name, layers, mesh, micro, repeats):
    monkeypatch.setattr(pipeline, "BUBBLE_FILL", float("nan"))  # a leak would show as NaN
    params, batch, (ref_loss, ref_grads, ref_text) = _reference(name, layers)
    config = _pipelined(_config(name, layers), mesh["stage"], micro, repeats)
    if mesh.get("context", 1) > 1:  # load-balanced context parallelism, as a run does it
        config = dataclasses.replace(config, causal_from_positions=True)
        batch = context.balance(batch, config.family, mesh["context"])
    loss, grads, text = _loss_and_grads(config, params, batch, mesh)
    _assert_same(loss, grads, ref_loss, ref_grads)
    assert "collective-permute" in text and "collective-permute" not in ref_text


def test_the_pipeline_rematerialises_each_stage_as_the_policy_says(monkeypatch):
    monkeypatch.setattr(pipeline, "BUBBLE_FILL", float("nan"))
    params, batch, (ref_loss, ref_grads, _) = _reference("gpt2-tiny", 8)
    config = _pipelined(_config("gpt2-tiny", 8, remat="full"), 2, 4, 1)
    loss, grads, _ = _loss_and_grads(config, params, batch, {"stage": 2, "data": 4})
    _assert_same(loss, grads, ref_loss, ref_grads)

    def rematerialised(cfg):
        model = models.build(cfg)
        apply = lambda p: model.apply({"params": p}, batch["input_ids"]).logits.sum()  # noqa: E731
        return str(jax.make_jaxpr(jax.grad(apply))(params)).count("remat")

    # the schedule's own (its weight slices, models/pipeline.py) and one around each block
    assert rematerialised(config) > rematerialised(_pipelined(_config("gpt2-tiny", 8), 2, 4, 1))


def test_each_microbatch_gets_its_own_dropout():
    config = dataclasses.replace(_config("gpt2-tiny", 4), dropout_rate=0.5)
    params = _init(config)
    ids = np.tile(np.arange(2, 18, dtype=np.int32), (4, 1))  # four identical rows

    def logits(cfg, deterministic):
        out = models.build(cfg).apply(
            {"params": params},
            ids,
            deterministic=deterministic,
            rngs={"dropout": jax.random.key(3)},
        )
        return np.asarray(out.logits)

    piped = _pipelined(config, 2, 4, 1)
    plain = logits(piped, deterministic=True)
    np.testing.assert_allclose(plain, logits(config, deterministic=True), rtol=1e-5, atol=1e-6)
    dropped = logits(piped, deterministic=False)
    assert np.isfinite(dropped).all()
    # one row per microbatch: four different masks
    assert len({dropped[i].tobytes() for i in range(4)}) == 4


def test_the_schedule_and_its_bubble():
    schedule = pipeline.Schedule(stages=4, microbatches=8, repeats=2)
    assert schedule.iterations == 2 * 8 + 4 - 1
    assert schedule.bubble == pytest.approx(3 / 19)
    assert pipeline.Schedule(4, 4).bubble == pytest.approx(3 / 7)
    x = np.arange(12).reshape(6, 2)
    split = pipeline.split_microbatches(x, 3)
    assert split.shape == (3, 2, 2) and split[1, 0, 0] == x[1, 0] and split[1, 1, 0] == x[4, 0]
    np.testing.assert_array_equal(pipeline.join_microbatches(split), x)


def _run_config(**pipe):
    c = ConfigDict(dict(batch_size=16, microbatches=1))
    c.pipeline = ConfigDict(dict(microbatches=pipe.get("micro", 0), repeats=pipe.get("repeats", 1)))
    return c


def _mesh(**sizes):
    return partitioning.make_mesh(sizes)


@pytest.mark.parametrize(
    "sizes,pipe,layers,scan,message",
    [
        ({"stage": 2, "data": 4}, dict(micro=3), 4, True, "microbatches=3 is not a multiple"),
        ({"stage": 4, "data": 2}, dict(repeats=2), 4, True, "not divisible by mesh.stage=4 x"),
        ({"stage": 2, "data": 4}, dict(micro=8), 4, True, "not divisible by 4 batch shards x 8"),
        ({"stage": 2, "data": 4}, {}, 4, False, "--config.model.scan_layers=True"),
        ({"data": 8}, dict(repeats=2), 4, True, "needs pipeline stages"),
    ],
)
def test_bad_pipeline_settings_are_one_line(sizes, pipe, layers, scan, message):
    config = models.get_config("gpt2-tiny").replace(num_layers=layers, scan_layers=scan)
    with pytest.raises(stages.PipelineError, match=message) as err:
        stages.check(_run_config(**pipe), config, _mesh(**sizes))
    assert "\n" not in str(err.value)


def test_fp8_with_stages_is_one_line():
    """Each microbatch would update the fp8 scales, which the step keeps once per step."""
    config = models.get_config("gpt2-tiny", num_layers=4, scan_layers=True, fp8=True)
    with pytest.raises(stages.PipelineError, match="model.fp8 with mesh.stage > 1") as err:
        stages.check(_run_config(), config, _mesh(stage=2, data=4))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="fp8 with pipeline stages"):
        _pipelined(config, 2, 2, 1)


def test_the_model_config_refuses_a_schedule_it_cannot_run():
    base = models.get_config("gpt2-tiny").replace(num_layers=4, scan_layers=True)
    with pytest.raises(ConfigError, match="not a multiple of the 2 stages"):
        _pipelined(base, 2, 3, 1)
    with pytest.raises(ConfigError, match="not divisible by 4 stages x 2 repeats"):
        _pipelined(base, 4, 4, 2)
    with pytest.raises(ConfigError, match="scan_layers=True"):
        _pipelined(base.replace(scan_layers=False), 2, 2, 1)


def test_a_stage_axis_across_processes_is_one_line():
    """Each process reads its own rows, so the stages of one pipeline must be one process's."""
    from types import SimpleNamespace

    def mesh(processes):  # (data, stage) devices with these process indices
        processes = np.asarray(processes)[:, :, None, None, None]  # (data, stage, fsdp, c, t)
        devices = np.vectorize(lambda p: SimpleNamespace(process_index=p))(processes)
        shape = dict(zip(partitioning.MESH_AXES, devices.shape))
        return SimpleNamespace(axis_names=partitioning.MESH_AXES, devices=devices, shape=shape)

    stages.check_hosts(mesh([[0, 0], [1, 1]]))  # data over hosts, the stages within
    with pytest.raises(stages.PipelineError, match="spans processes") as error:
        stages.check_hosts(mesh([[0, 1], [0, 1]]))  # the stages over the hosts
    assert "\n" not in str(error.value)


def _temporaries(config, mesh_sizes, rows=16, length=16) -> int:
    """Bytes of XLA temporaries of the loss gradient, compiled for the mesh (nothing runs)."""
    model, mesh = models.build(config), partitioning.make_mesh(mesh_sizes)
    rules = partitioning.DEFAULT_RULES
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), **dummy_inputs(config)))
    abstract = nn.meta.unbox(boxed["params"])
    ids = jax.ShapeDtypeStruct((rows, length), np.int32)
    with partitioning.activate(mesh, rules):
        shardings = partitioning.logical_shardings(boxed["params"], mesh, rules)
        params = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
        )
        grad = jax.jit(jax.grad(lambda p, b: losses.loss_sums(model, p, b, "clm")["loss"]))
        compiled = grad.lower(params, {"input_ids": ids, "targets": ids}).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_the_circular_schedule_keeps_no_weights_per_iteration():
    """Each iteration slices its repeat's weights; the backward pass recomputes the slices, so
    twice the iterations need no more memory (kept, they grew by a stage's weights each)."""
    config = models.get_config("gpt2-tiny", d_model=256, d_ff=1024, num_layers=4, scan_layers=True)
    sizes = [
        _temporaries(_pipelined(config, 2, micro, 2), {"stage": 2, "data": 4}) for micro in (2, 8)
    ]
    stage_weights = (4 * 256 * 256 + 2 * 256 * 1024) * 4  # one layer's kernels, float32
    # 12 more iterations; each kept slice would add `stage_weights`
    assert sizes[1] - sizes[0] < 12 * stage_weights / 2, sizes
