"""fp8 matmuls (`model.fp8`): flax's fp8 op in the dense layers, its scales and amax histories
carried by the train state outside the optimizer, through gradient accumulation and
checkpoints, and the inputs it refuses. On a CPU the fp8 products are emulated."""

import json
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec
from test_train_cli import _digest, _killed_after_checkpoint, _losses, _one_line_error, _train

import models
from models.layers import FP8, DenseGeneral
from train import distill, lora, partitioning
from train.checkpoint import _restore_numpy
from train.hardware import Fp8Error, check_fp8
from train.losses import loss_sums
from train.optim import make_optimizer
from train.state import abstract_state, create_train_state
from train.step import _split_microbatches, make_train_step

E4M3_MAX, E5M2_MAX = 448.0, 57344.0
FIELDS = ("input", "kernel", "output_grad")


def _dense(x, w, fp8_state=None):
    layer = DenseGeneral(w.shape[-1], ("embed", "mlp"), use_bias=False, fp8=True)
    variables = {"params": {"kernel": w}}
    if fp8_state is not None:
        variables[FP8] = fp8_state
    return layer.apply(variables, x)


def test_dense_fp8_matches_the_float32_product_within_fp8_rounding():
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (4, 8, 64))  # (B, T, K)
    w = 0.02 * jax.random.normal(kw, (64, 32))  # (K, F)
    layer = DenseGeneral(32, ("embed", "mlp"), use_bias=False, fp8=True)
    state = layer.init(jax.random.key(1), x)[FP8]
    shapes = jax.tree.map(jnp.shape, state["fp8"])
    assert shapes == {f"{f}_{k}": s for f in FIELDS for k, s in
                      (("amax_history", (1024,)), ("scale", (1,)))}  # fmt: skip
    # one backward pass records the amaxes; the next product scales by them (delayed scaling)
    grad = jax.grad(lambda s: jnp.sum(_dense(x, w, s) ** 2))(state)
    exact = x @ w
    quantized = _dense(x, w, grad)
    error = float(jnp.linalg.norm(quantized - exact) / jnp.linalg.norm(exact))
    assert 1e-4 < error < 0.04  # fp8 (3 mantissa bits), and not the float32 product itself
    assert float(grad["fp8"]["input_amax_history"][0]) == pytest.approx(float(jnp.abs(x).max()))
    assert float(grad["fp8"]["kernel_amax_history"][0]) == pytest.approx(float(jnp.abs(w).max()))
    # without the collection (inference) the layer multiplies in its compute dtype
    np.testing.assert_array_equal(_dense(x, w), exact)


@pytest.mark.parametrize("scan", [False, True])
def test_attention_and_mlp_get_fp8_state_and_heads_do_not(scan):
    config = models.get_config("gpt2-tiny", fp8=True, scan_layers=scan, tie_embeddings=False)
    model = models.build(config)
    ids = jnp.ones((2, 8), jnp.int32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), ids))
    names = {"/".join(str(k.key) for k in path[:-2])
             for path, _ in jax.tree_util.tree_flatten_with_path(variables[FP8])[0]}  # fmt: skip
    layers = ["decoder/layers"] if scan else ["decoder/layers_0", "decoder/layers_1"]
    expected = {f"{layer}/{block}" for layer in layers for block in (
        "self_attention/query", "self_attention/key", "self_attention/value",
        "self_attention/out", "mlp/wi", "mlp/wo")}  # fmt: skip
    assert names == expected  # no embeddings, no LM head
    history = variables[FP8]["decoder"]["layers" if scan else "layers_0"]["mlp"]["wi"]["fp8"]
    assert history["input_amax_history"].shape == ((2, 1024) if scan else (1024,))


def test_the_fp8_state_is_replicated_and_outside_the_optimizer_state():
    config = _tiny(scan_layers=True)
    mesh = partitioning.make_mesh({"data": 1, "fsdp": -1})
    tx, _ = make_optimizer(_opt(weight_decay=0.1), 10)
    abstract, shardings = abstract_state(
        models.build(config), config, tx, mesh, partitioning.DEFAULT_RULES
    )
    assert jax.tree.leaves(abstract.fp8)[0].shape[0] == config.num_layers  # scanned
    assert all(s.spec == PartitionSpec() for s in jax.tree.leaves(shardings.fp8))
    assert any(s.spec != PartitionSpec() for s in jax.tree.leaves(shardings.params))
    paths = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(
        (abstract.params, abstract.opt_state))[0]]  # fmt: skip
    assert paths and not any("amax" in p or "['fp8']" in p or FP8 in p for p in paths)


def _opt(**kw):
    base = dict(name="adamw", learning_rate=1e-2, warmup_steps=0, schedule="constant",
                weight_decay=0.0, grad_clip_norm=1.0)  # fmt: skip
    return ml_collections.ConfigDict({**base, **kw})


def _batch(rows=8, seed=0):
    ids = np.random.default_rng(seed).integers(1, 120, (rows, 17)).astype(np.int32)
    return {"input_ids": ids[:, :-1], "targets": ids[:, 1:],
            "weights": np.ones((rows, 16), np.float32)}  # fmt: skip


def _steps(config, opt, steps=1, microbatches=1, batch=None, warm=False):
    """(model, the first state, the state after `steps` train steps) on one device; `warm`:
    the first state's fp8 scales come from a forward and backward pass on another batch."""
    model = models.build(config)
    mesh = partitioning.make_mesh({"data": 1}, jax.devices()[:1])
    tx, schedule = make_optimizer(opt, 10)
    rules = partitioning.DEFAULT_RULES
    state, _ = create_train_state(model, config, tx, mesh, rules, jax.random.key(0))
    if warm:
        warmed = jax.grad(
            lambda f: loss_sums(model, state.params, _batch(seed=1), "causal_lm", fp8=f)["loss"]
        )(state.fp8)
        state = state.replace(fp8=warmed)
    first = jax.device_get(state)
    step = jax.jit(make_train_step(model, tx, schedule, "causal_lm", dropout=False,
                                   microbatches=microbatches))  # fmt: skip
    for _ in range(steps):
        state, metrics = step(state, _batch() if batch is None else batch, jax.random.key(1))
        assert np.isfinite(float(metrics["loss"]))
    return model, first, jax.device_get(state)


def _tiny(**kw):
    return models.get_config("gpt2-tiny", dropout_rate=0.0, attention_dropout_rate=0.0,
                             fp8=True, **kw)  # fmt: skip


def _leaves(tree):
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}  # fmt: skip


def test_the_step_stores_flax_s_next_scales_outside_weight_decay_and_the_optimizer():
    config = _tiny(scan_layers=True)  # scanned: (layers, 1024) histories, which decay would hit
    model, first, one = _steps(config, _opt())
    _, _, decayed = _steps(config, _opt(weight_decay=10.0))
    assert _leaves(one.params).keys() == _leaves(decayed.params).keys()
    assert any(not np.array_equal(a, _leaves(decayed.params)[k])
               for k, a in _leaves(one.params).items())  # fmt: skip
    for key, value in _leaves(one.fp8).items():  # same forward and backward: same scales
        np.testing.assert_array_equal(value, _leaves(decayed.fp8)[key], err_msg=key)
    # the state after step 1 is what flax's op returns for it, stored as is
    _, _, plain = _steps(config, _opt(), steps=2)
    expected = jax.grad(
        lambda f: loss_sums(model, first.params, _batch(), "causal_lm", fp8=f)["loss"]
    )(first.fp8)
    for key, value in _leaves(expected).items():
        np.testing.assert_allclose(_leaves(one.fp8)[key], value, rtol=1e-6, err_msg=key)
    # step 2's scales come from step 1's amax history: amax / the format's largest value
    for layer in ("mlp/wi", "self_attention/query"):
        block, name = layer.split("/")
        was = one.fp8["decoder"]["layers"][block][name]["fp8"]
        now = plain.fp8["decoder"]["layers"][block][name]["fp8"]
        for field, top in zip(FIELDS, (E4M3_MAX, E4M3_MAX, E5M2_MAX)):
            history = was[f"{field}_amax_history"]  # (layers, 1024)
            assert (history[:, 0] > 0).all() and not history[:, 1:].any()
            np.testing.assert_allclose(now[f"{field}_scale"][:, 0], history[:, 0] / top, rtol=1e-6)
            # the history rolls by one: step 1's amax moves to the end, step 2's is in front
            np.testing.assert_array_equal(now[f"{field}_amax_history"][:, -1], history[:, 0])
            assert (now[f"{field}_amax_history"][:, 0] > 0).all()


def test_gradient_accumulation_carries_the_fp8_state_through_the_microbatches():
    config, batch = _tiny(), _batch()
    sgd = _opt(name="sgd", learning_rate=1.0, grad_clip_norm=0.0)
    model, first, whole = _steps(config, sgd, batch=batch, warm=True)
    _, _, split = _steps(config, sgd, microbatches=2, batch=batch, warm=True)
    _, _, exact = _steps(config.replace(fp8=False), sgd, batch=batch)
    # SGD: the update is the gradient. Each microbatch's products round differently (e5m2
    # gradients keep 2 mantissa bits): the sum agrees as closely as fp8 agrees with float32.
    before, a, b, f32 = (np.concatenate([v.ravel() for v in _leaves(s.params).values()])
                         for s in (first, whole, split, exact))  # fmt: skip
    error = np.linalg.norm(b - a) / np.linalg.norm(a - before)
    noise = np.linalg.norm(a - f32) / np.linalg.norm(f32 - before)
    assert error < max(1.5 * noise, 0.01), (error, noise)
    # sequential: microbatch 2 runs with the scales microbatch 1 produced, and the step keeps
    # the last values (two amaxes in each history), never a sum or an average of them
    state = first.fp8
    halves = _split_microbatches(batch, 2)  # (2, B/2, ...)
    for micro in range(2):
        rows = {k: v[micro] for k, v in halves.items()}
        state = jax.grad(
            lambda f, rows=rows: loss_sums(model, first.params, rows, "causal_lm", fp8=f)["loss"]
        )(state)
    for key, value in _leaves(state).items():
        np.testing.assert_allclose(_leaves(split.fp8)[key], value, rtol=1e-5, err_msg=key)
    history = split.fp8["decoder"]["layers_0"]["mlp"]["wi"]["fp8"]["input_amax_history"]
    assert np.count_nonzero(history) == 3  # the warm-up's amax and one per microbatch


def test_lora_trains_with_fp8():
    config = lora.configure({"rank": 2}, _tiny(), init_from="base")
    _, first, last = _steps(config, _opt(), steps=2)
    assert first.frozen is not None and all(k.endswith(("lora_a", "lora_b")) for k in
                                            lora.flat(last.params))  # fmt: skip
    history = last.fp8["decoder"]["layers_0"]["self_attention"]["query"]["fp8"]
    assert np.count_nonzero(history["input_amax_history"]) == 2  # two steps recorded


def test_a_distillation_student_trains_with_fp8_and_its_teacher_runs_without():
    student = _tiny()
    teacher_config = _tiny(num_layers=3)  # fp8 on, but a teacher has no fp8 state: plain dots
    teacher = models.build(teacher_config)
    teacher_params = teacher.init(jax.random.key(2), jnp.ones((1, 16), jnp.int32))["params"]
    distiller = distill.Distiller(teacher, distill.settings({}), student.family)
    model = models.build(student)
    mesh = partitioning.make_mesh({"data": 1}, jax.devices()[:1])
    tx, schedule = make_optimizer(_opt(), 10)
    state, _ = create_train_state(
        model, student, tx, mesh, partitioning.DEFAULT_RULES, jax.random.key(0)
    )
    step = jax.jit(make_train_step(model, tx, schedule, "causal_lm", dropout=False,
                                   distiller=distiller))  # fmt: skip
    for _ in range(2):
        state, metrics = step(state, _batch(), jax.random.key(1), teacher_params)
    assert np.isfinite(float(metrics["kd_loss"])) and float(metrics["kd_loss"]) > 0
    history = state.fp8["decoder"]["layers_1"]["mlp"]["wo"]["fp8"]["output_grad_amax_history"]
    assert np.count_nonzero(np.asarray(history)) == 2


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """20 steps of the smoke GPT in float32 and with fp8, with evals and a sample (inference)."""
    root = tmp_path_factory.mktemp("smoke")
    for name, extra in (("f32", []), ("fp8", ["--config.model.fp8=True"])):
        result = _train(root / name, "--config.steps=20", "--config.log_every_steps=1", *extra)
        assert result.returncode == 0, result.stderr[-2000:]
    return root


def test_fp8_ends_within_2_percent_of_float32_on_the_smoke_gpt(smoke_runs):
    runs = {name: _losses(smoke_runs / name) for name in ("f32", "fp8")}
    f32, fp8 = runs["f32"][20], runs["fp8"][20]
    assert abs(fp8 - f32) <= 0.02 * f32, (f32, fp8)
    assert runs["fp8"] != runs["f32"]  # the fp8 run did quantise
    summary = json.loads((smoke_runs / "fp8" / "summary.json").read_text())
    assert np.isfinite(summary["eval"]["eval_loss"]) and summary["sample"]


def test_an_fp8_workdir_resumes_only_with_fp8_and_its_weights_start_any_run(smoke_runs, tmp_path):
    workdir, flags = smoke_runs / "fp8", ["--config.eval_every_steps=0", "--config.sample_tokens=0"]
    before = _digest(workdir / "checkpoints")
    switched = _train(workdir, *flags, "--config.steps=24")
    _one_line_error(switched, "was trained with model.fp8=True")
    assert _digest(workdir / "checkpoints") == before
    # init_from reads the parameters, not the scales
    started = _train(tmp_path, *flags, "--config.steps=2", f"--config.init_from={workdir}")
    assert started.returncode == 0, started.stderr[-2000:]


def test_fp8_resume_after_sigkill_is_exact(tmp_path):
    flags = ["--config.model.fp8=True", "--config.steps=40", "--config.log_every_steps=1",
             "--config.checkpoint_every_steps=8", "--config.eval_every_steps=0",
             "--config.sample_tokens=0"]  # fmt: skip
    reference = _train(tmp_path / "a", *flags)
    assert reference.returncode == 0, reference.stderr[-2000:]
    _killed_after_checkpoint(tmp_path / "b", flags)
    resumed = _train(tmp_path / "b", *flags)
    assert resumed.returncode == 0 and "resuming from step" in resumed.stderr
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert sorted(b) == sorted(a) == list(range(1, 41))
    assert [b[s] for s in sorted(a)] == [a[s] for s in sorted(a)]  # bit for bit
    saved = [_leaves(_restore_numpy(tmp_path / run / "checkpoints" / "40" / "state", "fp8"))
             for run in ("a", "b")]  # fmt: skip
    assert len(saved[0]) == 2 * 6 * 6  # layers x dense layers x (3 scales, 3 histories)
    for key, value in saved[0].items():  # the fp8 state too, bit for bit
        assert np.count_nonzero(value), key
        np.testing.assert_array_equal(saved[1][key], value, err_msg=key)


def test_fp8_with_float16_is_one_line_and_writes_nothing(tmp_path):
    with pytest.raises(Fp8Error, match="float16 cannot hold fp8's scaling factors"):
        check_fp8("float16")
    for dtype in ("float32", "bfloat16"):
        check_fp8(dtype)
    result = _train(tmp_path / "w", "--config.model.fp8=True", "--config.model.dtype=float16")
    assert result.returncode == 2
    _one_line_error(result, "set model.dtype=bfloat16 or float32")
    assert not (tmp_path / "w").exists()


def _device(platform, kind, capability=None):
    fields = dict(platform=platform, device_kind=kind)
    if capability is not None:
        fields["compute_capability"] = capability
    return types.SimpleNamespace(**fields)


@pytest.mark.parametrize(
    "device,refused",
    [
        (_device("cpu", "cpu"), False),
        (_device("gpu", "NVIDIA H100 80GB HBM3", "9.0"), False),
        (_device("gpu", "NVIDIA L4", "8.9"), False),
        (_device("gpu", "NVIDIA A100-SXM4-80GB", "8.0"), True),
        (_device("gpu", "Tesla V100-SXM2-16GB", "7.0"), True),
        (_device("gpu", "AMD Instinct MI300X", "gfx942"), True),
        (_device("tpu", "TPU v5 lite"), True),
    ],
)
def test_fp8_needs_a_device_with_fp8_matmuls(device, refused):
    if not refused:
        check_fp8("bfloat16", device)
        return
    with pytest.raises(Fp8Error) as error:
        check_fp8("bfloat16", device)
    message = str(error.value)
    assert "\n" not in message and device.device_kind in message
    assert "compute capability 8.9" in message and "run without --config.model.fp8" in message
