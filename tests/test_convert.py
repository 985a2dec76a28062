"""`python -m models convert`: Hugging Face -> Triptych -> Hugging Face, and a training workdir
out to Hugging Face."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

import models
from models import hf

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "hf"


def _convert(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS="")
    return subprocess.run(
        [sys.executable, "-m", "models", "convert", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("case", ["bert_mlm", "t5_v1_1", "bart_cg"])
def test_hf_round_trip_is_bit_exact(tmp_path, case):
    ours, back = tmp_path / "ours", tmp_path / "hf"
    assert _convert("--from-hf", FIXTURES / case, "--to", ours).returncode == 0
    assert (ours / "model_config.json").exists() and (ours / "params").is_dir()
    result = _convert("--from", ours, "--to-hf", back)
    assert result.returncode == 0, result.stderr[-2000:]
    original, written = (
        load_file(FIXTURES / case / "model.safetensors"),
        load_file(back / "model.safetensors"),
    )
    shared = set(original) & set(written)
    assert len(shared) >= len(written) - 1  # tied copies may be written once
    for name in shared:
        np.testing.assert_array_equal(written[name], original[name], err_msg=name)


def test_training_workdir_to_hf(tmp_path):
    from configs import gpt_lm
    from train.checkpoint import load_params
    from train.loop import train_and_evaluate

    config = gpt_lm.get_config("smoke")
    config.steps, config.eval_every_steps, config.sample_tokens = 2, 0, 0
    train_and_evaluate(config, tmp_path / "run")
    result = _convert("--from", tmp_path / "run", "--to-hf", tmp_path / "hf")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "hf" / "tokenizer.json").exists()
    cfg_dict, trained = load_params(tmp_path / "run")
    config2, params = hf.load_pretrained(tmp_path / "hf")
    ids = np.arange(1, 17, dtype=np.int32)[None]
    ref = models.build(models.ModelConfig.from_dict(cfg_dict)).apply({"params": trained}, ids)
    out = models.build(config2).apply({"params": params}, ids)
    np.testing.assert_allclose(out.logits, ref.logits, atol=1e-5)
    assert jax.tree.structure(trained) == jax.tree.structure(params)


def test_convert_errors(tmp_path):
    missing = _convert("--from-hf", tmp_path / "nope", "--to", tmp_path / "x")
    assert (
        missing.returncode == 2 and "nope" in missing.stderr and "Traceback" not in (missing.stderr)
    )
    ours = tmp_path / "ours"
    assert _convert("--from-hf", FIXTURES / "gpt2_lm", "--to", ours).returncode == 0
    again = _convert("--from-hf", FIXTURES / "gpt2_lm", "--to", ours)
    assert again.returncode == 2 and "already exists" in again.stderr
    neither = _convert("--from", tmp_path, "--to-hf", tmp_path / "h")
    assert neither.returncode == 2 and "neither a converted checkpoint" in neither.stderr
