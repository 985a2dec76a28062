"""Knowledge distillation's building blocks (train/distill.py): the KD and hidden-state losses
against PyTorch's KLDivLoss and CosineEmbeddingLoss as HF's distiller computes them, the student
started from the teacher's layers bit for bit, and one error line for each bad setting."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from train import distill, lora
from train.distill import DistillError

TEMPERATURES = (1.0, 2.0, 4.0)


def _batch(seed=0, batch=4, length=16, width=50, scale=1.0):
    """Random student and teacher rows (B, T, width) and an attention mask with padding."""
    rng = np.random.default_rng(seed)
    student = (rng.normal(size=(batch, length, width)) * scale).astype(np.float32)
    teacher = (rng.normal(size=(batch, length, width)) * scale).astype(np.float32)
    lengths = rng.integers(3, length + 1, batch)
    lengths[0] = length
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.float32)
    return student, teacher, mask


# The losses against torch ----------------------------------------------------------------------


def _torch_kd(student, teacher, mask, temperature):
    """HF distiller.py's loss_ce: KLDivLoss(batchmean) over the attention-masked rows x T^2."""
    import torch

    keep = torch.from_numpy(mask).bool()
    s = torch.from_numpy(student).double()[keep]  # (N, V)
    t = torch.from_numpy(teacher).double()[keep]
    loss = torch.nn.KLDivLoss(reduction="batchmean")(
        torch.log_softmax(s / temperature, dim=-1), torch.softmax(t / temperature, dim=-1)
    )
    return float(loss) * temperature**2


def _torch_cos(student, teacher, mask):
    """HF distiller.py's loss_cos: CosineEmbeddingLoss, target 1, over the masked rows."""
    import torch

    keep = torch.from_numpy(mask).bool()
    s = torch.from_numpy(student).double()[keep]
    t = torch.from_numpy(teacher).double()[keep]
    return float(torch.nn.CosineEmbeddingLoss()(s, t, torch.ones(s.shape[0], dtype=s.dtype)))


@pytest.mark.hf
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("seed", range(3))
def test_kd_loss_matches_torch_kldiv_batchmean(temperature, seed):
    """Against torch in float64: ours is float32, so 1e-6 is a few ulps of a loss near 1."""
    student, teacher, mask = _batch(seed)
    ours = distill.kd_loss_sums(student, teacher, mask, temperature) / mask.sum()
    reference = _torch_kd(student, teacher, mask, temperature)
    assert ours.dtype == jnp.float32
    assert abs(float(ours) - reference) < 1e-6, (float(ours), reference)


@pytest.mark.hf
@pytest.mark.parametrize("seed", range(3))
def test_hidden_loss_matches_torch_cosine_embedding_loss(seed):
    student, teacher, mask = _batch(seed, width=32)
    ours = distill.hidden_loss_sums(student, teacher, mask) / mask.sum()
    reference = _torch_cos(student, teacher, mask)
    assert abs(float(ours) - reference) < 1e-6, (float(ours), reference)


def test_losses_are_exactly_zero_when_the_student_is_the_teacher():
    student, _, mask = _batch(seed=2, scale=3.0)
    for temperature in TEMPERATURES:
        assert float(distill.kd_loss_sums(student, student, mask, temperature)) == 0.0
    assert float(distill.hidden_loss_sums(student, student, mask)) == 0.0


def test_losses_compute_in_float32_from_bfloat16():
    student, teacher, mask = _batch(seed=3)
    s16, t16 = jnp.asarray(student, jnp.bfloat16), jnp.asarray(teacher, jnp.bfloat16)
    kd = distill.kd_loss_sums(s16, t16, mask, 2.0)
    upcast = distill.kd_loss_sums(s16.astype(jnp.float32), t16.astype(jnp.float32), mask, 2.0)
    assert kd.dtype == jnp.float32 and float(kd) == float(upcast)
    hidden = distill.hidden_loss_sums(s16, t16, mask)
    assert hidden.dtype == jnp.float32


def test_weights_scale_each_position():
    student, teacher, mask = _batch(seed=4)
    one = distill.kd_loss_sums(student, teacher, mask, 2.0)
    assert float(distill.kd_loss_sums(student, teacher, 3.0 * mask, 2.0)) == pytest.approx(
        3.0 * float(one), rel=1e-6
    )
    assert float(distill.kd_loss_sums(student, teacher, np.zeros_like(mask), 2.0)) == 0.0


@pytest.mark.parametrize("garbage", [np.nan, np.inf, -np.inf, 1e30])
def test_positions_of_weight_zero_change_nothing(garbage):
    student, teacher, mask = _batch(seed=5, scale=3.0)
    dirty_s, dirty_t = student.copy(), teacher.copy()
    dirty_s[mask == 0], dirty_t[mask == 0] = garbage, -garbage
    for loss in (
        lambda s, t: distill.kd_loss_sums(s, t, mask, 2.0),
        lambda s, t: distill.hidden_loss_sums(s, t, mask),
    ):
        assert float(loss(dirty_s, dirty_t)) == float(loss(student, teacher))
        grads = jax.grad(loss, argnums=(0, 1))(dirty_s, dirty_t)
        for grad in grads:
            assert np.isfinite(grad).all()
            assert not np.asarray(grad)[mask == 0].any()
            assert np.asarray(grad)[mask == 1].any()


# The student from the teacher's layers --------------------------------------------------------


def _init(config) -> dict:
    ids = jnp.ones((1, 4), jnp.int32)
    inputs = {"input_ids": ids}
    if config.family == "encoder_decoder":
        inputs["decoder_input_ids"] = ids
    params = models.build(config).init(jax.random.key(hash(config.name) % 1000), **inputs)
    return jax.tree.map(np.asarray, nn.meta.unbox(params["params"]))


def _unscanned(params) -> dict:
    from models import hf

    return hf._unstack_layers({k: np.asarray(v) for k, v in lora.flat(params).items()})


def _check_copied(teacher, student, fresh, maps):
    """Student layer j of each stack is teacher layer maps[stack][j] bit for bit; every other
    student leaf is the teacher's where both have it with that shape, else the fresh one."""
    teacher, student, fresh = _unscanned(teacher), _unscanned(student), _unscanned(fresh)
    assert set(student) == set(fresh)
    from_teacher = 0
    for name, value in student.items():
        source, stack = distill._source(name, maps)
        if source in teacher and teacher[source].shape == value.shape:
            np.testing.assert_array_equal(value, teacher[source], err_msg=name)
            assert value.dtype == fresh[name].dtype
            from_teacher += stack is not None
        else:
            assert stack is None or "lora_" in name, name
            np.testing.assert_array_equal(value, fresh[name], err_msg=name)
    assert from_teacher > 0


def test_a_distilbert_student_takes_a_bert_teachers_layers():
    teacher_config = models.get_config("bert-tiny", num_layers=4, head="mlm")
    student_config = models.get_config("distilbert-tiny", num_layers=2, head="mlm")
    teacher, fresh = _init(teacher_config), _init(student_config)
    student = distill.student_params(teacher_config, teacher, student_config, fresh, (1, 3))
    _check_copied(teacher, student, fresh, {"encoder": (1, 3)})
    names = set(lora.flat(student))
    assert "pooler/dense/kernel" not in names
    assert "encoder/embed/token_type/embedding" not in names
    for name in ("token_embed/embedding", "encoder/embed/norm/scale", "head/transform/kernel"):
        np.testing.assert_array_equal(lora.flat(student)[name], lora.flat(teacher)[name])


def test_what_the_teacher_lacks_keeps_its_fresh_value():
    """A MiniLM-like teacher without a head, a student with an MLM head and LoRA adapters."""
    teacher_config = models.get_config("bert-tiny", num_layers=3)
    student_config = models.get_config(
        "bert-tiny", head="mlm", lora_rank=2, lora_targets=(r"attention/(query|value)$",)
    )
    teacher, fresh = _init(teacher_config), _init(student_config)
    student = distill.student_params(teacher_config, teacher, student_config, fresh, (0, 2))
    _check_copied(teacher, student, fresh, {"encoder": (0, 2)})
    flat, kept = lora.flat(student), lora.flat(fresh)
    assert flat["head/transform/kernel"] is kept["head/transform/kernel"]
    assert (
        flat["encoder/layers_1/self_attention/query/lora_a"]
        is (kept["encoder/layers_1/self_attention/query/lora_a"])
    )


def test_without_a_map_the_student_is_fresh():
    config = models.get_config("bert-tiny")
    fresh = _init(config)
    assert distill.student_params(config, _init(config), config, fresh) is fresh


@pytest.mark.parametrize("teacher_scan,student_scan", [(True, False), (False, True), (True, True)])
def test_scanned_and_unscanned_trees_on_either_side(teacher_scan, student_scan):
    teacher_config = models.get_config("gpt2-tiny", num_layers=4, scan_layers=teacher_scan)
    student_config = models.get_config("gpt2-tiny", num_layers=2, scan_layers=student_scan)
    teacher, fresh = _init(teacher_config), _init(student_config)
    student = distill.student_params(teacher_config, teacher, student_config, fresh, (3, 0))
    assert ("decoder/layers/mlp/wi/kernel" in lora.flat(student)) == student_scan
    _check_copied(teacher, student, fresh, {"decoder": (3, 0)})


def test_a_scanned_student_takes_its_layers_from_abstract_fresh_params():
    """The training loop passes the student's abstract parameters (nothing allocated yet)."""
    teacher_config = models.get_config("gpt2-tiny", num_layers=4)
    student_config = models.get_config("gpt2-tiny", num_layers=2, scan_layers=True)
    teacher, fresh = _init(teacher_config), _init(student_config)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), fresh)
    student = distill.student_params(teacher_config, teacher, student_config, abstract, (3, 0))
    flat = lora.flat(student)
    assert not any(isinstance(v, jax.ShapeDtypeStruct) for v in flat.values())
    _check_copied(teacher, student, fresh, {"decoder": (3, 0)})


@pytest.mark.parametrize("name,scan", [("t5-tiny", False), ("bart-tiny", True)])
def test_an_encoder_decoder_takes_a_map_per_stack(name, scan):
    teacher_config = models.get_config(name, num_layers=4, num_decoder_layers=4)
    student_config = models.get_config(name, num_layers=2, num_decoder_layers=3, scan_layers=scan)
    teacher, fresh = _init(teacher_config), _init(student_config)
    student = distill.student_params(
        teacher_config, teacher, student_config, fresh, (0, 3), decoder_layers=(0, 2, 3)
    )
    _check_copied(teacher, student, fresh, {"encoder": (0, 3), "decoder": (0, 2, 3)})


def test_an_unmapped_stack_of_the_teachers_depth_copies_one_to_one():
    """DistilBART's shrink: the whole encoder, every other decoder layer."""
    teacher_config = models.get_config("bart-tiny", num_layers=2, num_decoder_layers=4)
    student_config = models.get_config("bart-tiny", num_layers=2, num_decoder_layers=2)
    maps = distill.layer_maps(teacher_config, student_config, (), (1, 3))
    assert maps == {"encoder": (0, 1), "decoder": (1, 3)}


# Settings and bad input: each one line ---------------------------------------------------------


def _one_line(call, *words) -> str:
    with pytest.raises(DistillError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message
    return message


def test_settings_fill_defaults_and_read_command_line_maps():
    s = distill.settings({"teacher": "t", "student_layers": ("0", "2", "4")})
    assert s["student_layers"] == (0, 2, 4) and s["student_decoder_layers"] == ()
    assert s["temperature"] == 2.0
    weights = [s[k] for k in distill.ALPHAS]
    assert sum(weights) == 1.0 and weights[0] / weights[2] == 5 and weights[1] / weights[2] == 2
    assert distill.settings({"student_layers": "1,3"})["student_layers"] == (1, 3)
    assert not distill.enabled({}) and distill.teacher({}) is None


@pytest.mark.parametrize(
    "section,words",
    [
        ({"temperature": 0.0}, ["distill.temperature=0.0", "> 0"]),
        ({"temperature": -1.0}, ["distill.temperature"]),
        ({"alpha_kd": 0.0, "alpha_task": 0.0, "alpha_hidden": 0.0}, ["all 0"]),
        ({"alpha_hidden": -0.5}, ["distill.alpha_hidden=-0.5", ">= 0"]),
        ({"student_layers": ("0", "x")}, ["distill.student_layers", "'x'"]),
        ({"layers": (0,)}, ["unknown distill key", "student_layers"]),
        ({"alpha_kd": "high"}, ["distill.alpha_kd='high'", "number"]),
        ({"teacher_dtype": "fp16"}, ["distill.teacher_dtype='fp16'", "float32, bfloat16"]),
    ],
)
def test_bad_settings_are_one_line(section, words):
    _one_line(lambda: distill.settings({"teacher": "some/teacher", **section}), *words)


def test_a_teacher_that_is_not_found_is_one_line(tmp_path):
    from models.errors import UserError

    with pytest.raises(UserError) as info:
        distill.teacher({"teacher": str(tmp_path / "missing")})
    assert "\n" not in str(info.value) and "missing" in str(info.value)


BERT = models.get_config("bert-tiny", num_layers=4, head="mlm")
DISTILBERT = models.get_config("distilbert-tiny", num_layers=2, head="mlm")


@pytest.mark.parametrize(
    "section,teacher,student,objective,words",
    [
        ({"student_layers": (0, 4)}, BERT, DISTILBERT, "mlm", ["layer 4 is out of range", "0..3"]),
        ({"student_layers": (0, 1, 2)}, BERT, DISTILBERT, "mlm", ["names 3", "has 2"]),
        ({}, BERT, DISTILBERT.replace(vocab_size=64), "mlm", ["vocab_size=64", "128"]),
        ({}, BERT, models.get_config("gpt2-tiny"), "clm", ["family", "'decoder'"]),
        (
            {},
            models.get_config("all-minilm-l6-v2"),
            models.get_config("all-minilm-l6-v2", num_layers=3, head="mlm"),
            "mlm",
            ["distill.alpha_kd", "head='none'", "hidden-state term alone"],
        ),
        (
            {"alpha_kd": 0.0},
            BERT,
            DISTILBERT,
            "seq2seq",
            ["objective='seq2seq'", "encoder_decoder teacher"],
        ),
        (
            {},
            models.get_config("gpt2-tiny"),
            models.get_config("gpt2-tiny", num_layers=1),
            "seq2seq",
            ["objective='seq2seq'", "encoder-decoder"],
        ),
        (
            {},
            BERT.replace(head="classification", num_labels=3),
            DISTILBERT.replace(head="classification"),
            "classify",
            ["num_labels=3"],
        ),
        ({}, BERT, DISTILBERT.replace(d_model=64), "mlm", ["distill.alpha_hidden", "d_model"]),
        (
            {"student_decoder_layers": (0,)},
            BERT,
            DISTILBERT,
            "mlm",
            ["student_decoder_layers is for encoder-decoders"],
        ),
        (
            {"student_decoder_layers": (0,)},
            models.get_config("t5-tiny", num_layers=4),
            models.get_config("t5-tiny", num_layers=2, num_decoder_layers=1),
            "seq2seq",
            ["distill.student_layers", "student's encoder has 2"],
        ),
    ],
)
def test_bad_pairs_are_one_line(section, teacher, student, objective, words):
    _one_line(
        lambda: distill.check({"teacher": "t", **section}, teacher, student, objective), *words
    )


def test_a_good_pair_passes_with_its_maps():
    section = {"teacher": "t", "student_layers": "0,3"}
    assert distill.check(section, BERT, DISTILBERT, "mlm") == {"encoder": (0, 3)}
    hidden_only = {"teacher": "t", "alpha_kd": 0.0}
    minilm = models.get_config("all-minilm-l6-v2")
    assert distill.check(hidden_only, minilm, minilm.replace(head="mlm"), "mlm") == {}


def test_a_mapped_layer_of_another_width_is_one_line():
    teacher_config = models.get_config("bert-tiny", num_layers=2)
    student_config = models.get_config("bert-tiny", num_layers=1, d_ff=48)
    teacher, fresh = _init(teacher_config), _init(student_config)
    _one_line(
        lambda: distill.student_params(teacher_config, teacher, student_config, fresh, (1,)),
        "distill.student_layers",
        "encoder/layers_1/mlp/wi",
    )


def test_the_teacher_resolves_like_init_from(tmp_path):
    from models import hf

    config = models.get_config("bert-tiny", num_layers=3, head="mlm")
    hf.save_pretrained(config, _init(config), tmp_path / "teacher")
    ref = distill.teacher({"teacher": str(tmp_path / "teacher")})
    assert ref.kind == "hugging_face"
    teacher_config, teacher = ref.load()
    assert teacher_config.num_layers == 3 and teacher_config.head == "mlm"
    student_config = models.get_config("distilbert-tiny", head="mlm")
    assert distill.check(
        {"teacher": "t", "student_layers": (0, 2)}, teacher_config, student_config, "mlm"
    ) == {"encoder": (0, 2)}
    fresh = _init(student_config)
    student = distill.student_params(teacher_config, teacher, student_config, fresh, (0, 2))
    _check_copied(teacher, student, fresh, {"encoder": (0, 2)})
