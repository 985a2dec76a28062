"""Preemption agreed across hosts: SIGTERM to any one process of a 2-process run makes both
save the same step and exit 75 (saved, stopped early), and the restarted run continues exactly
like one that was never interrupted. A process killed outright, or hung, ends the other with one
line, keeping the checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from train.distributed import PREEMPTED_EXIT_STATUS

ROOT = Path(__file__).resolve().parents[1]
STEPS = 160
FLAGS = [
    "--config",
    str(ROOT / "configs" / "gpt_lm.py") + ":smoke",
    f"--config.steps={STEPS}",
    f"--config.optimizer.decay_steps={STEPS}",
    "--config.log_every_steps=1",
    "--config.eval_every_steps=0",
    "--config.checkpoint_every_steps=100000",
    "--config.sample_tokens=0",
]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "TRIPTYCH_"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    return env


def _launch(workdir: Path, *flags: str, grace: int = 5, **env: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "train", *FLAGS, *flags, "--workdir", str(workdir)]
    launcher = [sys.executable, "-m", "launch.local", "-n", "2", "--devices-per-process", "1"]
    return subprocess.Popen(
        [*launcher, "--grace", str(grace), "--", *command],
        env={**_env(), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )


def _losses(workdir: Path) -> dict[int, float]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def _process(launcher_pid: int, process_id: int) -> int:
    """The pid of the launched training process with JAX_PROCESS_ID == process_id."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == launcher_pid and f"JAX_PROCESS_ID={process_id}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"process {process_id} of launcher {launcher_pid} not found")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    proc = _launch(workdir)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return _losses(workdir)


@pytest.mark.slow
@pytest.mark.parametrize("target", [1, 0])
def test_sigterm_to_one_process_saves_one_agreed_step(tmp_path, uninterrupted, target):
    workdir = tmp_path / "run"
    proc = _launch(workdir)
    deadline = time.time() + 300
    while len(_losses(workdir)) < 3:
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    os.kill(_process(proc.pid, target), signal.SIGTERM)  # that process only, not its group
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == PREEMPTED_EXIT_STATUS, out[-3000:]  # both exited 75, not failed
    saved = [p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(saved) == 1, saved  # one checkpoint, written by both at one agreed step
    step = int(saved[0])
    assert 0 < step < STEPS, out[-3000:]
    assert f"preempted (SIGTERM): saved step {step}" in out

    _assert_continues(workdir, step, uninterrupted)


def _assert_continues(workdir: Path, step: int, uninterrupted: dict) -> None:
    """Restarting resumes from `step`, and every later loss is the uninterrupted run's."""
    restarted = _launch(workdir)
    out, _ = restarted.communicate(timeout=600)
    assert restarted.returncode == 0, out[-3000:]
    assert f"resuming from step {step}" in out
    losses = _losses(workdir)
    assert sorted(losses) == sorted(uninterrupted) == list(range(1, STEPS + 1))
    after = [s for s in losses if s > step]
    np.testing.assert_allclose(
        [losses[s] for s in after], [uninterrupted[s] for s in after], rtol=0, atol=1e-6
    )


@pytest.mark.slow
def test_a_killed_process_ends_the_other_with_one_line(tmp_path, uninterrupted):
    workdir = tmp_path / "run"
    # the launcher would stop the survivor after 300 s; it must end well before, on its own
    proc = _launch(workdir, "--config.checkpoint_every_steps=20", grace=300)
    deadline = time.time() + 300
    while not (workdir / "checkpoints" / "40").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    os.kill(_process(proc.pid, 1), signal.SIGKILL)  # no notice: a host lost outright
    killed = time.time()
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and time.time() - killed < 120, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("[0] error:")]
    assert len(errors) == 1, out[-3000:]
    # the survivor's next collective fails, or, where that collective blocks instead (under load
    # Gloo may wait on the lost peer), the peer watch ends it: either way one line, well in time
    assert (
        "another process of this run stopped" in errors[0]
        or "process 1 has not answered for 60s" in errors[0]
    ), errors[0]
    assert "Traceback" not in out and "Check failure" not in out
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and saved[-1] >= 40
    _assert_continues(workdir, saved[-1], uninterrupted)


@pytest.mark.slow
def test_a_hung_process_ends_the_other_with_one_line(tmp_path, uninterrupted):
    """A process that stops answering (SIGSTOP: a hung host, its collectives blocked rather than
    failed) ends the other within TRIPTYCH_PEER_TIMEOUT, not JAX's 100 s heartbeat abort."""
    workdir = tmp_path / "run"
    flag = "--config.checkpoint_every_steps=20"
    proc = _launch(workdir, flag, grace=300, TRIPTYCH_PEER_TIMEOUT="10")
    deadline = time.time() + 300
    while not (workdir / "checkpoints" / "40").exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    hung, other = _process(proc.pid, 1), _process(proc.pid, 0)
    os.kill(hung, signal.SIGSTOP)
    stopped = time.time()
    try:
        while Path(f"/proc/{other}").exists() and time.time() - stopped < 90:
            time.sleep(0.2)  # the launcher reaps process 0 when it exits
        waited = time.time() - stopped
    finally:
        os.kill(hung, signal.SIGKILL)  # SIGTERM cannot reach a stopped process
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1 and waited < 60, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("[0] error:")]
    assert len(errors) == 1, out[-3000:]
    assert "process 1 has not answered for 10s" in errors[0]
    assert "Traceback" not in out and "Check failure" not in out
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    _assert_continues(workdir, saved[-1], uninterrupted)
