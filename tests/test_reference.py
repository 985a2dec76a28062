"""train/reference.py: each kind of model directory resolves to one record with the weights its
own reader gives, and a name of the wrong kind, a missing step or an empty directory is one
error line."""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

import models
from models import hf
from models.errors import UserError
from train import convert, lora, peft, reference
from train.checkpoint import workdir_params

FIXTURES = Path(__file__).parent / "fixtures"
HF_DIR = FIXTURES / "hf" / "bert_seqcls"


def _same_tree(a, b) -> None:
    flat_a, flat_b = lora.flat(a), lora.flat(b)
    assert sorted(flat_a) == sorted(flat_b)
    for name in flat_a:
        np.testing.assert_array_equal(np.asarray(flat_a[name]), np.asarray(flat_b[name]), name)


def test_a_hugging_face_directory_reads_as_models_hf_reads_it():
    ref = reference.resolve(HF_DIR, "init_from")
    assert (ref.kind, ref.step, ref.lora_base, ref.hub_id) == ("hugging_face", None, None, None)
    config, params = ref.load()
    want_config, want = hf.load_pretrained(HF_DIR)
    assert config == want_config
    _same_tree(params, want)
    assert ref.load()[1] is params  # read once


def test_a_converted_checkpoint_holds_the_converted_weights(tmp_path):
    assert convert.main(["--from-hf", str(HF_DIR), "--to", str(tmp_path / "ours")]) == 0
    ref = reference.resolve(tmp_path / "ours")
    assert ref.kind == "converted" and ref.where == str(tmp_path / "ours")
    _same_tree(ref.params, hf.load_pretrained(HF_DIR)[1])


def test_a_workdir_gives_its_latest_step_its_run_config_and_its_tokenizer(tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(FIXTURES / "resume_v1", workdir)
    ref = reference.resolve(workdir, "--workdir")
    assert (ref.kind, ref.step) == ("workdir", 4)
    assert ref.where == f"{workdir} (step 4)"
    assert ref.saved["resolved_model"]["name"] == "gpt2-tiny"
    assert ref.tokenizer == str(workdir / "tokenizer")
    assert ref.config == models.ModelConfig.from_dict(ref.saved["resolved_model"])
    _same_tree(ref.params, workdir_params(workdir, 4))
    with pytest.raises(UserError, match=r"no checkpoint at step 7; have 4$"):
        reference.resolve(workdir, step=7)


def test_a_peft_adapter_is_its_base_with_the_update_folded_in(tmp_path):
    base_config, base_params = hf.load_pretrained(HF_DIR)
    config = lora.configure(dict(rank=2, alpha=6.0), base_config, init_from=str(HF_DIR))
    ids = np.ones((1, 4), np.int32)
    fresh = models.build(config).init(jax.random.key(0), ids)["params"]
    leaves = lora.flat(jax.tree.map(np.asarray, models.nn.meta.unbox(fresh)))
    rng = np.random.default_rng(0)
    trained = {k: rng.normal(0, 0.2, v.shape).astype(np.float32) for k, v in leaves.items()}
    trained = {k: v for k, v in trained.items() if lora.is_trained(k, config.lora_train_head)}
    peft.export(config, lora._nested(trained), str(HF_DIR), tmp_path / "adapter")

    ref = reference.resolve(tmp_path / "adapter", "--from-peft", kinds=("peft_adapter",))
    assert ref.kind == "peft_adapter" and ref.lora_base == str(HF_DIR)
    merged = lora.flat(ref.params)
    layer = "encoder/layers_0/self_attention/query"
    a, b = trained[f"{layer}/lora_a"], trained[f"{layer}/lora_b"]
    kernel = lora.flat(base_params)[f"{layer}/kernel"]
    update = (a.reshape(-1, 2) @ b.reshape(2, -1)).reshape(kernel.shape)  # W + alpha/r A B
    np.testing.assert_allclose(merged[f"{layer}/kernel"], kernel + 3.0 * update, atol=1e-6)
    untouched = "encoder/layers_0/self_attention/key/kernel"
    np.testing.assert_array_equal(merged[untouched], lora.flat(base_params)[untouched])


def test_names_of_nothing_or_of_the_wrong_kind_are_one_line(tmp_path):
    cases = [
        (dict(name=tmp_path / "missing"), "no such directory"),
        (dict(name=tmp_path), "is neither a converted checkpoint"),
        (
            dict(name=HF_DIR, what="--to-peft", kinds=("workdir",)),
            "--to-peft needs a training workdir (checkpoints/); "
            f"{HF_DIR} is a Hugging Face directory (config.json)",
        ),
        (dict(name=HF_DIR, step=3), "is not a training workdir; it has no steps"),
    ]
    for kwargs, needle in cases:
        with pytest.raises(UserError) as error:
            reference.resolve(**kwargs)
        assert needle in str(error.value) and "\n" not in str(error.value)
