"""python -m data.benchmark: every objective's training batches, timed, with stage shares."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "name, objective",
    [
        ("gpt_lm", "clm"),
        ("bert_mlm", "mlm"),
        ("t5_span", "span"),
        ("bart_denoise", "denoise"),
        ("translate", "seq2seq"),
        ("finetune_cls", "classify"),
        ("finetune_ner", "tag"),
    ],
)
def test_every_objective_is_measured(name, objective):
    import importlib

    from data.benchmark import measure

    config = importlib.import_module(f"configs.{name}").get_config("smoke")
    train = (config.data.files or {}).get("train")
    needed = [train] if isinstance(train, str) else list(dict(train).values()) if train else []
    missing = [f for f in needed if not Path(f).exists()]
    if missing:
        pytest.skip(f"needs {missing[0]} (../shared/data)")
    result = measure(config, workers=0, seconds=0.3)
    assert result["objective"] == objective and result["batches"] > 0
    assert 0 < result["process_cores"] <= result["cpu_count"] * 1.05  # CPU seconds per second
    per_batch = config.batch_size * config.seq_len
    if objective in ("clm", "mlm"):  # full rows, no decoder side
        assert result["tokens_per_s"] == pytest.approx(result["batches_per_s"] * per_batch)
    elif objective in ("classify", "tag"):  # data.trim_padding cuts the padding columns
        assert 0 < result["tokens_per_s"] <= result["batches_per_s"] * per_batch
    shares = result["stage_share"]
    assert set(shares) == {"read", "tokenize", "build"} and sum(shares.values()) == pytest.approx(1)


def test_the_cli_with_workers_writes_json(tmp_path):
    out = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "data.benchmark", "--config", "configs/gpt_lm.py:smoke"]
    args = ["--workers", "2", "--seconds", "1", "--json", str(out)]
    result = subprocess.run([*cmd, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 workers" in result.stdout and "tokens/s" in result.stdout and "cores" in result.stdout
    report = json.loads(out.read_text())
    assert report["workers"] == 2 and report["tokens_per_s"] > 0 and "stage_share" not in report
    bad = subprocess.run([*cmd, "--workers", "-1"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error:")


def test_profile_lists_the_functions_that_took_longest():
    """`--profile K`: cProfile's K functions with the most time of their own, the largest first;
    building CLM batches spends time in the tokenizer and in packing, and they are named."""
    import importlib

    from data.benchmark import measure

    config = importlib.import_module("configs.gpt_lm").get_config("smoke")
    result = measure(config, workers=0, seconds=0.5, profile=40)
    rows = result["profile"]
    assert len(rows) == 40 and all(r["calls"] > 0 for r in rows)
    assert [r["own_s"] for r in rows] == sorted((r["own_s"] for r in rows), reverse=True)
    assert sum(r["share"] for r in rows) < 1.05
    names = " ".join(r["function"] for r in rows)
    assert "encode_batch_fast" in names and "pack_causal" in names
