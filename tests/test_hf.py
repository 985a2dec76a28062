"""Hugging Face checkpoint parity (no torch needed): tests/fixtures/hf/<case>/ holds a tiny
transformers model directory and its float32 outputs on a padded batch (see
scripts/make_hf_fixtures.py); our loader + forward pass must match at every real position."""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest

import models
from models import hf

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "hf")
CASES = sorted(os.listdir(FIXTURES)) if os.path.isdir(FIXTURES) else []
TOL = 1e-4


def _reference(case: str) -> dict[str, np.ndarray]:
    with np.load(os.path.join(FIXTURES, case, "reference.npz")) as ref:
        return dict(ref)


def _forward(config, params, ref: dict[str, np.ndarray]):
    inputs = {
        k: ref[k]
        for k in (
            "input_ids",
            "attention_mask",
            "token_type_ids",
            "decoder_input_ids",
            "decoder_attention_mask",
        )
        if k in ref
    }
    return jax.jit(models.build(config).apply)({"params": params}, **inputs)


def max_diffs(config, params, ref: dict[str, np.ndarray]) -> dict[str, float]:
    """Max |ours - HF| per output, over real (non-padded) positions only."""
    out = _forward(config, params, ref)
    enc_mask = ref["attention_mask"].astype(bool)
    dec_mask = ref.get("decoder_attention_mask", ref["attention_mask"]).astype(bool)
    diffs = {}
    for key in ("logits", "last_hidden_state", "pooler_output", "encoder_last_hidden_state"):
        if key not in ref:
            continue
        ours, theirs = np.asarray(getattr(out, key)), ref[key]
        assert ours.shape == theirs.shape, (key, ours.shape, theirs.shape)
        if key == "pooler_output" or (key == "logits" and ours.ndim == 2):
            diffs[key] = float(np.abs(ours - theirs).max())  # one row per sequence
        else:
            mask = enc_mask if key == "encoder_last_hidden_state" else dec_mask
            diffs[key] = float(np.abs(ours - theirs)[mask].max())
    return diffs


def test_fixtures_present():
    expected = {
        "bert_mlm",
        "bert_model",
        "bert_seqcls",
        "bert_tokcls",
        "distilbert_model",
        "distilbert_mlm",
        "distilbert_seqcls",
        "gpt2_model",
        "gpt2_lm",
        "t5_v1_0",
        "t5_v1_1",
        "bart_model",
        "bart_cg",
    }
    assert expected <= set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_parity_with_transformers(case):
    config, params = hf.load_pretrained(os.path.join(FIXTURES, case))
    diffs = max_diffs(config, params, _reference(case))
    assert diffs and all(d < TOL for d in diffs.values()), diffs


@pytest.mark.parametrize("case", ["bert_mlm", "gpt2_lm", "t5_v1_1", "bart_cg"])
def test_scan_layers_and_save_round_trip(case, tmp_path):
    """Stacked (scan) params give the same outputs; save_pretrained -> load_pretrained is exact."""
    ref = _reference(case)
    config, params = hf.load_pretrained(os.path.join(FIXTURES, case), scan_layers=True)
    assert "layers" in params["decoder" if config.family == "decoder" else "encoder"]
    assert all(d < TOL for d in max_diffs(config, params, ref).values())
    hf.save_pretrained(config, params, tmp_path / "out")
    config2, params2 = hf.load_pretrained(tmp_path / "out")
    assert config2.replace(name=config.name, scan_layers=True) == config
    flat1 = jax.tree.leaves(hf.convert_params_to_hf(config, params))
    flat2 = jax.tree.leaves(hf.convert_params_to_hf(config2, params2))
    assert all(np.array_equal(a, b) for a, b in zip(flat1, flat2))


def test_expected_config_fields():
    config, _ = hf.load_pretrained(os.path.join(FIXTURES, "t5_v1_0"))
    assert (config.relative_buckets, config.relative_max_distance) == (16, 20)
    assert (config.head_dim, config.num_heads, config.d_model) == (6, 3, 16)
    assert config.tie_embeddings and config.scale_tied_logits and not config.gated_mlp
    config, _ = hf.load_pretrained(os.path.join(FIXTURES, "t5_v1_1"))
    assert config.gated_mlp and not config.tie_embeddings and config.activation == "gelu_new"
    config, _ = hf.load_pretrained(os.path.join(FIXTURES, "bert_mlm"))
    assert (config.type_vocab_size, config.head, config.pooler) == (3, "mlm", False)
    config, _ = hf.load_pretrained(os.path.join(FIXTURES, "bert_seqcls"))
    assert (config.head, config.pooler, config.num_labels) == ("classification", True, 3)


# Errors: one line, a ValueError subclass, naming what is wrong -----------------------------------


def _copy_case(case: str, tmp_path) -> str:
    directory = str(tmp_path / case)
    shutil.copytree(os.path.join(FIXTURES, case), directory)
    return directory


def _edit_config(directory: str, **changes) -> None:
    file = os.path.join(directory, "config.json")
    with open(file) as f:
        config = json.load(f)
    config.update(changes)
    with open(file, "w") as f:
        json.dump(config, f)


def _raises(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(hf.CheckpointError, match=match) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert isinstance(info.value, ValueError) and "\n" not in message
    return message


def test_missing_directory_and_files(tmp_path):
    _raises(f"{tmp_path / 'nope'}: no such directory", hf.load_pretrained, tmp_path / "nope")
    _raises("config.json not found", hf.load_pretrained, tmp_path)
    directory = _copy_case("bert_model", tmp_path)
    os.remove(os.path.join(directory, "model.safetensors"))
    _raises(f"no weights in {directory}", hf.load_pretrained, directory)


def test_unsupported_type_and_architecture(tmp_path):
    directory = _copy_case("gpt2_lm", tmp_path)
    _edit_config(directory, model_type="llama")
    message = _raises("model type 'llama' is not supported", hf.load_pretrained, directory)
    assert "bert, distilbert, gpt2, t5, bart" in message
    _edit_config(directory, model_type="gpt2", architectures=["GPT2ForQuestionAnswering"])
    _raises(
        "architecture GPT2ForQuestionAnswering .* not supported; supported: GPT2Model",
        hf.load_pretrained,
        directory,
    )
    _edit_config(directory, architectures=["GPT2LMHeadModel"], activation_function="quick_gelu")
    _raises("activation 'quick_gelu' is not supported", hf.load_pretrained, directory)


def test_weights_that_do_not_fit_the_config(tmp_path):
    directory = _copy_case("bert_model", tmp_path)
    _edit_config(directory, intermediate_size=50)
    _raises(
        r"weight encoder.layer.0.intermediate.dense.weight has shape \(48, 32\) but the "
        r"config needs \(50, 32\)",
        hf.load_pretrained,
        directory,
    )


def test_missing_weights(tmp_path):
    from safetensors.numpy import save_file

    directory = _copy_case("t5_v1_1", tmp_path)
    state = hf.read_state_dict(directory)
    del state["decoder.block.1.layer.2.DenseReluDense.wi_1.weight"]
    save_file(state, os.path.join(directory, "model.safetensors"))
    _raises(
        "missing weight decoder.block.1.layer.2.DenseReluDense.wi_1.weight",
        hf.load_pretrained,
        directory,
    )


def test_pytorch_bin_needs_torch(tmp_path, monkeypatch):
    directory = _copy_case("gpt2_model", tmp_path)
    os.remove(os.path.join(directory, "model.safetensors"))
    open(os.path.join(directory, "pytorch_model.bin"), "wb").close()
    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # as if not installed
    _raises(
        "pytorch_model.bin is a PyTorch checkpoint and torch is not installed",
        hf.load_pretrained,
        directory,
    )


def test_sharded_safetensors(tmp_path):
    from safetensors.numpy import save_file

    directory = _copy_case("bart_cg", tmp_path)
    state = hf.read_state_dict(directory)
    os.remove(os.path.join(directory, "model.safetensors"))
    names = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, os.path.join(directory, shard))
    index = {"metadata": {}, "weight_map": {k: s for s, keys in shards.items() for k in keys}}
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)
    config, params = hf.load_pretrained(directory)
    assert all(d < TOL for d in max_diffs(config, params, _reference("bart_cg")).values())


def _write_bf16_safetensors(state: dict[str, np.ndarray], file: str) -> None:
    """safetensors.numpy cannot write bfloat16; the format is a JSON header + raw bytes."""
    header, blobs, offset = {}, [], 0
    for key, value in state.items():
        blob = np.ascontiguousarray(value, dtype=jax.numpy.bfloat16).tobytes()
        header[key] = {
            "dtype": "BF16",
            "shape": list(value.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(file, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + b"".join(blobs))


def test_bfloat16_checkpoint_and_param_dtype(tmp_path):
    directory = _copy_case("gpt2_model", tmp_path)
    _, params32 = hf.load_pretrained(directory)
    _write_bf16_safetensors(
        hf.read_state_dict(directory), os.path.join(directory, "model.safetensors")
    )
    for param_dtype in ("float32", "bfloat16"):
        _, params = hf.load_pretrained(directory, param_dtype=param_dtype)
        leaf = params["decoder"]["layers_0"]["mlp"]["wi"]["kernel"]
        assert leaf.dtype == np.dtype(jax.numpy.dtype(param_dtype))
        np.testing.assert_allclose(
            leaf.astype(np.float32),
            params32["decoder"]["layers_0"]["mlp"]["wi"]["kernel"],
            rtol=1e-2,
            atol=1e-6,
        )


def _init(config):
    """Zero params of the right shapes (the error comes from the config, not the values)."""
    shapes = jax.eval_shape(models.build(config).init, jax.random.key(0), np.ones((1, 4), np.int32))
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def test_save_rejects_configs_without_an_hf_equivalent(tmp_path):
    config = models.get_config("gpt2-tiny", pre_norm=False, final_norm=False)
    _raises(
        "pre_norm=False cannot be expressed as a Hugging Face gpt2 checkpoint",
        hf.save_pretrained,
        config,
        _init(config),
        tmp_path / "out",
    )
    config = models.get_config("llama-tiny")
    _raises(
        "cannot be expressed as a Hugging Face gpt2",
        hf.save_pretrained,
        config,
        _init(config),
        tmp_path / "out",
    )
    config = models.get_config("gpt2-tiny")
    _raises(
        "head='lm' has no bert architecture",
        hf.save_pretrained,
        config,
        _init(config),
        tmp_path / "out",
        model_type="bert",
    )
