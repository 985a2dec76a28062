"""The stall watchdog (train/watchdog.py): a stuck operation ends the process with the stack
logged and one error line; operations that keep finishing never trip it."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from train import watchdog

ROOT = Path(__file__).resolve().parents[1]

STUCK = textwrap.dedent(
    """
    import logging, time
    from train import watchdog

    logging.basicConfig(level=logging.INFO)

    def read_back_metrics():
        time.sleep(60)  # a storage call that never answers

    with watchdog.Watchdog(0.5):
        with watchdog.doing("metrics write", "gs://bucket/run/metrics.jsonl"):
            read_back_metrics()
    print("not reached")
    """
)


def test_a_stuck_operation_ends_the_process_with_its_stack_and_one_line(tmp_path):
    script = tmp_path / "stuck.py"
    script.write_text(STUCK)
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(script)],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.monotonic() - began < 20
    assert result.returncode == 1 and "not reached" not in result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "error: metrics write (gs://bucket/run/metrics.jsonl) made no progress for 0.5s"
    ), result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [last]
    assert "in read_back_metrics" in result.stderr and "time.sleep(60)" in result.stderr


class Recording(watchdog.Watchdog):
    """Records a stall instead of ending the process."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stalls = []

    def _end(self, operation, path):
        self.stalls.append((operation, path))
        self._stop.set()


def test_operations_that_keep_finishing_never_trip_it():
    with Recording(0.3, poll_s=0.02) as watch:
        for step in range(15):
            with watchdog.doing(f"train step {step + 1}"):
                time.sleep(0.05)
        time.sleep(0.5)  # between operations nothing is watched
    assert watch.stalls == []


def test_the_innermost_open_operation_is_the_one_named():
    with Recording(0.2, poll_s=0.02) as watch:
        with watchdog.doing("eval", "step 8"), watchdog.doing("eval batch 2"):
            time.sleep(0.6)
    assert watch.stalls == [("eval batch 2", "")]


def test_a_storage_timeout_becomes_one_line_naming_the_operation():
    with Recording(60) as watch, pytest.raises(watchdog.StorageTimeout) as error:
        with watchdog.doing("checkpoint save", "gs://b/run/checkpoints/8"):
            raise TimeoutError("Connection timeout to host http://127.0.0.1:1")
    message = str(error.value)
    assert message.startswith("checkpoint save (gs://b/run/checkpoints/8) timed out")
    assert "TimeoutError: Connection timeout" in message and "\n" not in message
    assert watch.stalls == [] and watch._open == []


def test_off_and_outside_a_run_it_does_nothing():
    with watchdog.Watchdog(0) as watch:
        assert watch._thread is None
        with watchdog.doing("train step 1"):
            pass
        assert watch._open == []
    with pytest.raises(TimeoutError):  # no run watching: the error is the caller's
        with watchdog.doing("metrics read", "gs://b/metrics.jsonl"):
            raise TimeoutError


def test_stall_timeout_s_is_a_run_config_key():
    from configs import cli

    config = cli.load_config(str(ROOT / "configs" / "gpt_lm.py") + ":smoke")
    assert config.stall_timeout_s == watchdog.DEFAULT_TIMEOUT_S == 1800
    cli.apply_overrides(config, [("stall_timeout_s", "5")])
    assert config.stall_timeout_s == 5
