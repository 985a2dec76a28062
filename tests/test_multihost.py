"""Multi-process training on this machine: 2 processes x 2 simulated CPU devices train exactly
like 1 process x 4 devices, their checkpoint resumes on 1 process, disagreeing processes and
an unreachable coordinator fail with one clear line."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--config", str(ROOT / "configs" / "gpt_lm.py") + ":smoke"]
# A fixed decay length so that a run of 8 steps and one of 12 share the schedule.
FLAGS = ["--config.optimizer.decay_steps=12", "--config.sample_tokens=0"]


def _env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "TRIPTYCH_"))}
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT),
    )
    return env


def _train_cmd(workdir, *flags):
    return [sys.executable, "-m", "train", *SMOKE, "--workdir", str(workdir), *FLAGS, *flags]


def _single(workdir, *flags, devices=4):
    return subprocess.run(
        _train_cmd(workdir, *flags),
        env=_env(devices),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def _multi(n, devices, *command, timeout=300):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.local",
            "-n",
            str(n),
            "--devices-per-process",
            str(devices),
            "--grace",
            "2",
            "--",
            *command,
        ],
        env=_env(1),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def _records(workdir):
    """{step: record} for train records and {step: record} for eval records."""
    train, evals = {}, {}
    for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            train[record["step"]] = record
        elif "eval_loss" in record:  # other records (e.g. carbon/*) are neither
            evals[record["step"]] = record
    return train, evals


def _assert_close(a: dict, b: dict, keys, steps):
    for step in steps:
        for key in keys:
            np.testing.assert_allclose(
                b[step][key], a[step][key], rtol=1e-5, err_msg=f"step {step} {key}"
            )


@pytest.mark.slow
def test_two_processes_match_one_and_resume_on_one(tmp_path):
    reference = _single(tmp_path / "one", "--config.steps=12")
    assert reference.returncode == 0, reference.stderr[-3000:]
    multi = _multi(2, 2, *_train_cmd(tmp_path / "two", "--config.steps=8"))
    assert multi.returncode == 0, multi.stdout[-3000:]
    # process 1 logs nothing of its own and writes no metrics
    assert "[0] " in multi.stdout and "workdir:" in multi.stdout
    assert "[1] step" not in multi.stdout and "[1] workdir" not in multi.stdout
    ref_train, ref_eval = _records(tmp_path / "one")
    two_train, two_eval = _records(tmp_path / "two")
    assert sorted(two_train) == [2, 4, 6, 8] and sorted(two_eval) == [4, 8]
    _assert_close(ref_train, two_train, ["loss", "grad_norm", "accuracy"], [2, 4, 6, 8])
    _assert_close(ref_eval, two_eval, ["eval_loss", "eval_accuracy"], [4, 8])
    # the losses move, so equal values are not a coincidence of constants
    assert two_train[8]["loss"] < two_train[2]["loss"]

    # The 2-process checkpoint (step 8) resumes on 1 process with 2 devices (another mesh).
    assert (tmp_path / "two" / "checkpoints" / "8").exists()
    resumed = _single(tmp_path / "two", "--config.steps=12", devices=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step 8" in resumed.stderr
    res_train, res_eval = _records(tmp_path / "two")
    assert sorted(res_train) == [2, 4, 6, 8, 10, 12]
    # weights, optimizer and data position all continue: steps 10 and 12 equal the
    # uninterrupted single-process run
    _assert_close(ref_train, res_train, ["loss", "grad_norm", "accuracy"], [10, 12])
    _assert_close(ref_eval, res_eval, ["eval_loss"], [12])
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["steps"] == 12


def test_processes_with_different_configs_fail_with_one_line(tmp_path):
    # process 1 gets another seed through its own environment-dependent flag
    script = (
        "import os, sys, runpy;"
        "sys.argv = ['train', *sys.argv[1:], "
        "'--config.seed=' + os.environ['JAX_PROCESS_ID']];"
        "runpy.run_module('train', run_name='__main__')"
    )
    command = [sys.executable, "-c", script, *SMOKE, "--workdir", str(tmp_path / "w")]
    result = _multi(2, 1, *command, timeout=240)
    assert result.returncode == 2, result.stdout[-3000:]
    errors = [line for line in result.stdout.splitlines() if "error:" in line]
    assert errors, result.stdout[-3000:]
    assert "disagree on the config" in errors[0] and "--config" in errors[0]
    assert not (tmp_path / "w" / "metrics.jsonl").exists()


@pytest.mark.parametrize(
    "process_id, message",
    [
        ("1", "error: process 1 of 2: cannot reach the coordinator at 127.0.0.1:"),
        ("0", "error: process 0 of 2: the 2 processes did not all join the coordinator at "),
    ],
)
def test_coordinator_timeout_fails_with_one_line(tmp_path, process_id, message):
    from launch.local import free_port

    env = _env(1)
    env.update(
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}",
        JAX_NUM_PROCESSES="2",
        JAX_PROCESS_ID=process_id,
        TRIPTYCH_INIT_TIMEOUT="2",
    )
    result = subprocess.run(
        _train_cmd(tmp_path / "w"), env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(message), result.stderr[-2000:]
    assert "within 2s" in lines[-1]
    assert "Check failure" not in result.stderr  # no XLA abort
    assert not (tmp_path / "w").exists()  # stopped before the run started


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, None),
        (
            {
                "TRIPTYCH_DISTRIBUTED": "off",
                "SLURM_JOB_ID": "1",
                "SLURM_PROCID": "0",
                "SLURM_NTASKS": "4",
            },
            None,
        ),
        (
            {"JAX_COORDINATOR_ADDRESS": "h:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"},
            ("explicit", "h:1234", 4, 3),
        ),
        (
            {"JAX_COORDINATOR_ADDRESS": "h:1234", "JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"},
            None,
        ),
        (
            {"SLURM_JOB_ID": "7", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"},
            ("slurm", None, None, None),
        ),
        ({"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, None),
        ({"TRIPTYCH_DISTRIBUTED": "auto"}, ("auto", None, None, None)),
    ],
)
def test_detect(env, expected):
    from train.distributed import detect

    spec = detect(env)
    got = (
        None
        if spec is None
        else (spec.method, spec.coordinator, spec.num_processes, spec.process_id)
    )
    assert got == expected


@pytest.mark.parametrize(
    "env, message",
    [
        ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"}, "process_id not set"),
        (
            {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
            "not in [0, 2)",
        ),
        (
            {"JAX_COORDINATOR_ADDRESS": "h", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"},
            "host:port",
        ),
    ],
)
def test_detect_rejects_bad_settings(env, message):
    from train.distributed import DistributedError, detect

    with pytest.raises(DistributedError, match=re.escape(message)):
        detect(env)


def test_data_state_round_trip_over_host_counts():
    from train.distributed import DistributedError, local_data_state

    state = {
        "version": 1,
        "step": 5,
        "seed": 0,
        "global_batch_size": 4,
        "process_index": 0,
        "process_count": 1,
        "cursors": [[1, 0], [2, 3], [3, 0], [4, 1]],
    }
    halves = [local_data_state(state, i, 2) for i in range(2)]
    assert [h["cursors"] for h in halves] == [[[1, 0], [2, 3]], [[3, 0], [4, 1]]]
    assert [h["process_index"] for h in halves] == [0, 1]
    assert all(h["process_count"] == 2 and h["step"] == 5 for h in halves)
    assert local_data_state(state, 0, 1) == state
    with pytest.raises(DistributedError):
        local_data_state(state, 0, 3)
    with pytest.raises(DistributedError):
        local_data_state(halves[1], 0, 1)


@pytest.mark.slow
def test_two_processes_trim_padding_like_one(tmp_path):
    """data.trim_padding with 2 processes: the hosts agree on each global batch's width (through
    JAX's coordination service) and train exactly like one process with the same devices."""
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "while", "dogs", "ran", "far", "away"]
    lines = [" ".join(rng.choice(words, size=rng.integers(1, 12))) for _ in range(400)]
    corpus = tmp_path / "lines.txt"
    corpus.write_text("\n".join(lines) + "\n")
    flags = [
        f"--config.data.files={corpus}",
        "--config.data.pack=False",
        "--config.data.trim_padding=8",
        "--config.log_every_steps=1",
    ]
    one = _single(tmp_path / "one", *flags, devices=2)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _multi(2, 1, *_train_cmd(tmp_path / "two", *flags))
    assert two.returncode == 0, two.stdout[-3000:]
    ref_train, ref_eval = _records(tmp_path / "one")
    two_train, two_eval = _records(tmp_path / "two")
    assert sorted(two_train) == sorted(ref_train) == list(range(1, 9))
    _assert_close(ref_train, two_train, ["loss", "grad_norm", "accuracy"], range(1, 9))
    _assert_close(ref_eval, two_eval, ["eval_loss", "eval_accuracy"], [4, 8])


def _eval_line(output: str) -> dict:
    lines = [line for line in output.splitlines() if "EVAL {" in line]
    assert len(lines) == 1, output[-3000:]  # printed by process 0 only
    return json.loads(lines[0].split("EVAL ", 1)[1])


@pytest.mark.slow
@pytest.mark.parametrize(
    "task, metrics",
    [
        ("translation", ["eval_bleu"]),  # each host decodes its rows, in step
        ("classification", ["eval_accuracy", "eval_f1"]),
        ("ner", ["eval_entity_precision", "eval_entity_recall", "eval_entity_f1"]),
    ],
)
def test_task_metrics_on_two_processes_equal_one(tmp_path, task, metrics):
    script = [sys.executable, str(ROOT / "tests" / "multihost_tasks.py"), task, str(tmp_path)]
    one = subprocess.run(
        [*script, str(tmp_path / "one")],
        env=_env(2),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = _multi(2, 1, *script, str(tmp_path / "two"))
    assert two.returncode == 0, two.stdout[-3000:]
    single, double = _eval_line(one.stdout), _eval_line(two.stdout)
    assert set(metrics) <= set(double)
    assert all(0 < single[m] < 100 for m in metrics), single  # not a degenerate score
    for key in ["eval_loss", *metrics]:
        assert double[key] == pytest.approx(single[key], rel=1e-6, abs=1e-9), key
    assert "skipped" not in two.stdout
