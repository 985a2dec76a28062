"""LoRA from the command line: a run starts from another run's workdir with adapters, resumes
bit for bit, leaves checkpoints of the adapters alone, and its workdir evaluates, predicts and
exports (merged to Hugging Face, or as a PEFT adapter)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--config", f"{ROOT}/configs/gpt_lm.py:smoke"]


def _run(*args, timeout=600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def _ok(result) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _losses(workdir: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_lora_from_a_workdir_resumes_evaluates_predicts_and_exports(tmp_path):
    base, a, b = tmp_path / "base", tmp_path / "a", tmp_path / "b"
    _ok(_run("-m", "train", *SMOKE, "--workdir", str(base)))
    flags = [*SMOKE, f"--config.init_from={base}", "--config.lora.rank=4", "--config.steps=8"]
    flags += ["--config.optimizer.learning_rate=3e-3", "--config.sample_tokens=0"]
    _ok(_run("-m", "train", *flags, "--workdir", str(a)))
    shutil.copytree(a, b)  # b: a stopped after its step-4 checkpoint
    shutil.rmtree(b / "checkpoints" / "8")
    logged = (b / "metrics.jsonl").read_text().splitlines()
    (b / "metrics.jsonl").write_text(
        "".join(f"{x}\n" for x in logged if json.loads(x).get("step", 0) <= 4)
    )
    resumed = _ok(_run("-m", "train", *flags, "--workdir", str(b)))
    assert "resuming from step 4" in resumed.stderr
    assert _losses(a) == _losses(b)  # bit for bit across the restart
    assert sorted(_losses(a)) == [2, 4, 6, 8]
    # the checkpoints hold the adapters only (and metadata, most of it in a model this small)
    assert _size(a / "checkpoints" / "8") < 0.25 * _size(base / "checkpoints" / "8")
    evaluated = _ok(_run("-m", "train.evaluate", "--workdir", str(a), "--split", "validation"))
    assert "loss" in evaluated.stdout
    predicted = _ok(_run("-m", "train.predict", "--workdir", str(a), "--max_new_tokens", "4", "to"))
    _ok(_run("-m", "models", "convert", "--from", str(a), "--to-hf", str(tmp_path / "hf")))
    merged = _ok(
        _run("-m", "train.predict", "--workdir", str(tmp_path / "hf"), "--max_new_tokens", "4",
             "to")
    )  # fmt: skip
    assert merged.stdout == predicted.stdout  # greedy: the merged weights decode alike
    _ok(_run("-m", "models", "convert", "--from", str(a), "--to-peft", str(tmp_path / "peft")))
    adapter = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and adapter["base_model_name_or_path"] == str(base)


def test_lora_errors_are_one_line_and_write_nothing(tmp_path):
    result = _run("-m", "train", *SMOKE, "--config.lora.rank=4", "--workdir", str(tmp_path / "r"))
    assert result.returncode != 0 and "needs init_from" in result.stderr.splitlines()[-1]
    result = _run("-m", "train", *SMOKE, "--config.lora.rank=-2", "--workdir", str(tmp_path / "s"))
    assert result.returncode != 0 and "lora.rank=-2 must be >= 0" in result.stderr.splitlines()[-1]
    flags = ["--config.lora.rank=4", "--config.lora.lr_ratio=0", "--workdir", str(tmp_path / "t")]
    result = _run("-m", "train", *SMOKE, *flags)
    assert (
        result.returncode != 0 and "lora.lr_ratio=0.0 must be > 0" in result.stderr.splitlines()[-1]
    )
    assert not list((tmp_path / "r").glob("checkpoints/[0-9]*"))  # no checkpoint written


@pytest.mark.slow
def test_lora_on_an_encoder_decoder_from_a_hugging_face_directory(tmp_path):
    """T5 from a `--to-hf` directory (what `init_from` reads for a Hub download): LoRA on q
    and v trains, the merged export decodes like the adapted workdir, and the PEFT adapter
    names T5's q and v modules."""
    smoke = ["--config", f"{ROOT}/configs/t5_span.py:smoke"]
    base, hf_dir, run = tmp_path / "base", tmp_path / "base-hf", tmp_path / "lora"
    _ok(_run("-m", "train", *smoke, "--config.steps=2", "--workdir", str(base)))
    _ok(_run("-m", "models", "convert", "--from", str(base), "--to-hf", str(hf_dir)))
    flags = [*smoke, f"--config.init_from={hf_dir}", "--config.lora.rank=4", "--config.steps=4"]
    _ok(_run("-m", "train", *flags, "--config.optimizer.learning_rate=1e-2", "--workdir", str(run)))
    losses = _losses(run)
    assert len(losses) >= 2 and all(v == v for v in losses.values())
    prompt = ["--max_new_tokens", "6", "the history of"]
    predicted = _ok(_run("-m", "train.predict", "--workdir", str(run), *prompt))
    _ok(_run("-m", "models", "convert", "--from", str(run), "--to-hf", str(tmp_path / "merged")))
    merged = _ok(_run("-m", "train.predict", "--workdir", str(tmp_path / "merged"), *prompt))
    assert merged.stdout == predicted.stdout
    _ok(_run("-m", "models", "convert", "--from", str(run), "--to-peft", str(tmp_path / "peft")))
    adapter = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_2_SEQ_LM" and adapter["modules_to_save"] is None
    assert {m.rsplit(".", 1)[-1] for m in adapter["target_modules"]} == {"q", "v"}
    from safetensors.numpy import load_file

    tensors = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    b = [v for k, v in tensors.items() if k.endswith("lora_B.weight")]
    assert len(b) == len(adapter["target_modules"]) and all(abs(x).max() > 0 for x in b)
