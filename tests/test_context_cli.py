"""`python -m train` with context parallelism on 8 simulated CPU devices: the losses of a
sequence split over `mesh.context` equal those of the batch split over `mesh.data`, a checkpoint
written with context resumes on a data-only mesh, and a SIGKILLed context run resumes exactly."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_train_cli import _digest, _losses

ROOT = Path(__file__).resolve().parents[1]
# No dropout: with load balancing the tokens sit in another order, so a dropout mask drawn per
# position would differ between the two layouts.
COMMON = [
    "--config.steps=10",
    "--config.log_every_steps=1",
    "--config.eval_every_steps=0",
    "--config.sample_tokens=0",
    "--config.model.dropout_rate=0",
    "--config.model.attention_dropout_rate=0",
]


def _train(config: str, workdir, *flags, wait=True, check=True):
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", PYTHONPATH=str(ROOT)
    )
    cmd = [sys.executable, "-m", "train", "--config", str(ROOT / "configs" / config)]
    cmd += ["--workdir", str(workdir), *COMMON, *flags]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 or not check, result.stderr[-3000:]
    return result


@pytest.mark.parametrize(
    "config,context",
    [("gpt_lm.py:smoke", 4), ("bert_mlm.py:smoke", 2), ("t5_span.py:smoke", 2)],
)
def test_context_gives_the_losses_of_the_batch_split(tmp_path, config, context):
    _train(config, tmp_path / "data", "--config.mesh.data=8")
    # the tokenizer the first run trained (a WordPiece trained twice can break ties differently)
    split = ["--config.mesh.data=-1", f"--config.mesh.context={context}"]
    split.append(f"--config.tokenizer.path={tmp_path / 'data' / 'tokenizer'}")
    _train(config, tmp_path / "context", *split)
    reference, losses = _losses(tmp_path / "data"), _losses(tmp_path / "context")
    assert sorted(losses) == list(range(1, 11))
    np.testing.assert_allclose(
        [losses[s] for s in sorted(losses)], [reference[s] for s in sorted(losses)], rtol=1e-4
    )


def test_a_killed_context_run_resumes_exactly_and_its_checkpoint_restores_on_data(tmp_path):
    context = ["--config.mesh.data=2", "--config.mesh.context=4"]
    every = ["--config.checkpoint_every_steps=1"]
    _train("gpt_lm.py:smoke", tmp_path / "full", *context, *every)
    full = _losses(tmp_path / "full")
    # killed after a few checkpoints
    proc = _train("gpt_lm.py:smoke", tmp_path / "killed", *context, *every, wait=False)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(_losses(tmp_path / "killed")) >= 4:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(_losses(tmp_path / "killed"))
    assert done < 10, "the run ended before it was killed; nothing was resumed"
    shutil.copytree(tmp_path / "killed", tmp_path / "moved")
    # resumed on the same mesh: the same losses, bit for bit
    _train("gpt_lm.py:smoke", tmp_path / "killed", *context, *every)
    resumed = _losses(tmp_path / "killed")
    assert [resumed[s] for s in range(1, 11)] == [full[s] for s in range(1, 11)]
    # the context=4 checkpoint resumed on data=8: the same losses up to the layout's round-off
    _train("gpt_lm.py:smoke", tmp_path / "moved", "--config.mesh.data=8")
    moved = _losses(tmp_path / "moved")
    np.testing.assert_allclose(
        [moved[s] for s in range(1, 11)], [full[s] for s in range(1, 11)], rtol=1e-4
    )
    # a context the run cannot take: one line, exit 2, the checkpoints untouched
    before = _digest(tmp_path / "killed" / "checkpoints")
    for flags, needle in (
        (["--config.mesh.context=4", "--config.seq_len=36"], "seq_len=36 is not divisible by 2"),
        (["--config.mesh.data=1", "--config.mesh.context=-1", "--config.steps=12"], None),
    ):
        result = _train("gpt_lm.py:smoke", tmp_path / "killed", *flags, check=False)
        if needle is None:  # context=8 on a length of 32: fine, and it trains on
            assert result.returncode == 0, result.stderr[-3000:]
            continue
        assert result.returncode == 2, result.stderr[-3000:]
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error:") and needle in last, last
        assert "Traceback" not in result.stderr
        assert _digest(tmp_path / "killed" / "checkpoints") == before
