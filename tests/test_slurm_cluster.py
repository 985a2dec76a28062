"""`python -m launch.slurm` against a real slurmctld (tests/slurm_cluster.py: two CPU nodes on
this machine, a `low` partition that an `urgent` one preempts).

- a 2-node run gives the losses of the same run in one process on 2 simulated devices;
- a job preempted by an urgent job saves, is requeued by SLURM, resumes and finishes with the
  losses of an uninterrupted run, bit for bit, and one log that holds both segments;
- `scancel --signal=TERM JOBID` (the steps only) saves the run, which is requeued;
- `--tasks-per-node 2` trains with 2 processes on one node.

Skipped, with the reason, where SLURM cannot be installed or started (not root, no apt-get).
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from launch.local import free_port
from train.distributed import PREEMPTED_EXIT_STATUS
from train.writers import logged_records

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from slurm_cluster import Unavailable, slurm_cluster  # noqa: E402

STEPS = 120
CONFIG = str(ROOT / "configs" / "gpt_lm.py") + ":smoke"
OVERRIDES = [
    f"steps={STEPS}",
    f"optimizer.decay_steps={STEPS}",
    "log_every_steps=1",
    "eval_every_steps=0",
    "checkpoint_every_steps=100000",
    "sample_tokens=0",
    "mesh.data=2",
]

# One worker runs them all (`pytest -n 2 --dist loadgroup`): one cluster, one 2-node run.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm")]


def _env(**extra: str) -> dict:
    """This environment without the suite's JAX and XLA settings (8 simulated devices)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "TRIPTYCH_", "XLA_"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", **extra)
    return env


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        with slurm_cluster(tmp_path_factory.mktemp("slurm")) as up:
            yield up
    except Unavailable as e:
        pytest.skip(f"no SLURM cluster here: {e}")


def _submit(
    cluster, tmp: Path, name: str, *flags: str, nodes: int = 2, overrides=OVERRIDES
) -> tuple[str, Path]:
    """Submits a run with `python -m launch.slurm` (not --dry-run); returns its job id and its
    workdir."""
    workdir = tmp / name
    command = [
        sys.executable,
        "-m",
        "launch.slurm",
        "--nodes",
        str(nodes),
        "--gpus-per-node",
        "0",
        "--job-name",
        name,
        "--output",
        str(tmp / f"{name}-%j.out"),
        "--script",
        str(tmp / f"{name}.sbatch"),
        "--chdir",
        str(ROOT),
        "--python",
        sys.executable,
        "--port",
        str(free_port()),
        "--init-timeout",
        "120",
        "--config",
        CONFIG,
        *[arg for override in overrides for arg in ("--set", override)],
        "--workdir",
        str(workdir),
        *flags,
    ]
    result = subprocess.run(
        command, env=_env(**cluster.env), capture_output=True, text=True, timeout=120, cwd=tmp
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("Submitted batch job "), result.stdout
    return result.stdout.split()[-1], workdir


def _wait(cluster, job_id: str, until, timeout_s: float = 300) -> dict:
    """Polls the job until `until(job)`; returns the job."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = cluster.job(job_id)
        if until(job):
            return job
        assert time.monotonic() < deadline, (job, cluster.log("slurmctld"))
        time.sleep(0.5)


def _finished(job: dict) -> bool:
    return job["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")


def _log(tmp: Path, name: str, job_id: str) -> str:
    return (tmp / f"{name}-{job_id}.out").read_text(errors="replace")  # progress bars


def _losses(workdir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in logged_records(workdir) if "loss" in r}


def _until_steps(workdir: Path, steps: int, job_id: str, cluster, timeout_s: float = 300):
    deadline = time.monotonic() + timeout_s
    while len(_losses(workdir)) < steps:  # the writer appends whole lines
        job = cluster.job(job_id)
        assert not _finished(job) and time.monotonic() < deadline, job
        time.sleep(0.2)


@pytest.fixture(scope="module")
def two_nodes(cluster, tmp_path_factory):
    """An uninterrupted 2-node run: (job, log, losses)."""
    tmp = tmp_path_factory.mktemp("two_nodes")
    job_id, workdir = _submit(cluster, tmp, "two-nodes")
    job = _wait(cluster, job_id, _finished)
    log = _log(tmp, "two-nodes", job_id)
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", log[-3000:]
    return job, log, _losses(workdir)


def test_two_nodes_give_the_one_process_losses(two_nodes, tmp_path):
    job, log, losses = two_nodes
    assert job["NumNodes"] == "2" and job["NodeList"] == "vm[1-2]"
    assert "segment 1 on vm[1-2]" in log and "segment 2" not in log
    overrides = [f"--config.{override}" for override in OVERRIDES]
    command = [sys.executable, "-m", "train", "--config", CONFIG, *overrides]
    command += ["--workdir", str(tmp_path)]
    one = subprocess.run(
        command,
        env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    reference = _losses(tmp_path)
    assert sorted(losses) == sorted(reference) == list(range(1, STEPS + 1))
    steps = sorted(losses)
    np.testing.assert_allclose([losses[s] for s in steps], [reference[s] for s in steps], rtol=1e-4)


def test_preempted_job_is_requeued_and_resumes_exactly(cluster, two_nodes, tmp_path):
    job_id, workdir = _submit(cluster, tmp_path, "low", "--partition", "low")
    _until_steps(workdir, 10, job_id, cluster)
    urgent = cluster.run(
        "sbatch",
        "--parsable",
        "--partition=urgent",
        "--nodes=2",
        "--exclusive",
        f"--output={tmp_path}/urgent-%j.out",
        "--wrap",
        "echo urgent ran on $SLURM_JOB_NODELIST",
    ).stdout.strip()
    again = _wait(cluster, job_id, lambda j: j["Restarts"] == "1" or _finished(j))
    done = _wait(cluster, job_id, _finished)
    log = _log(tmp_path, "low", job_id)
    assert again["Restarts"] == "1", log[-3000:]
    assert done["JobState"] == "COMPLETED" and done["ExitCode"] == "0:0", log[-3000:]
    assert (tmp_path / f"urgent-{urgent}.out").read_text().startswith("urgent ran on vm[1-2]")
    saved = int(re.search(r"preempted \(SIGTERM\): saved step (\d+)", log).group(1))
    assert 10 <= saved < STEPS
    # one log, both segments: the first stops at `saved` and requeues, the second resumes there
    first, second = log.split("segment 2 on ")
    assert "segment 1 on vm[1-2]" in first
    assert f"saved and stopped early (status {PREEMPTED_EXIT_STATUS}); requeueing" in first
    assert f"resuming from step {saved}" in second
    losses, uninterrupted = _losses(workdir), two_nodes[2]
    assert losses == uninterrupted  # bit for bit, every step


def test_scancel_signal_term_saves_and_requeues(cluster, tmp_path):
    job_id, workdir = _submit(cluster, tmp_path, "cancel")
    _until_steps(workdir, 5, job_id, cluster)
    cluster.run("scancel", "--signal=TERM", job_id)  # the documented form: the steps only
    requeued = _wait(cluster, job_id, lambda j: j["Restarts"] == "1" or _finished(j))
    log = _log(tmp_path, "cancel", job_id)
    assert requeued["Restarts"] == "1", log[-3000:]
    saved = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(saved) == 1 and 5 <= saved[0] < STEPS, log[-3000:]
    assert f"preempted (SIGTERM): saved step {saved[0]}" in log
    assert "requeueing" in log
    cluster.run("scancel", job_id)  # stopped for good, while it waits to start again
    assert _wait(cluster, job_id, _finished)["JobState"] == "CANCELLED"


def test_tasks_per_node_runs_two_processes_on_one_node(cluster, two_nodes, tmp_path):
    steps = 20
    overrides = [*OVERRIDES, f"steps={steps}"]  # the same schedule (decay_steps), fewer steps
    job_id, workdir = _submit(
        cluster, tmp_path, "tasks", "--tasks-per-node", "2", nodes=1, overrides=overrides
    )
    job = _wait(cluster, job_id, _finished)
    log = _log(tmp_path, "tasks", job_id)
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", log[-3000:]
    assert job["NumNodes"] == "1" and job["NumTasks"] == "2", job
    # mesh.data=2 over 1 CPU device per process: only 2 processes can run it, and they give
    # the 2-node run's losses
    losses, two = _losses(workdir), two_nodes[2]
    assert sorted(losses) == list(range(1, steps + 1))
    np.testing.assert_allclose([losses[s] for s in losses], [two[s] for s in losses], rtol=1e-6)
