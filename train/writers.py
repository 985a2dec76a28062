"""Metric sinks: metrics.jsonl (one JSON object per logged step) and TensorBoard event files.

Both work on a bucket workdir. There, metrics.jsonl is rewritten whole at most every 30 s and at
each checkpoint (`models.paths.Appender`: objects cannot be appended to), and TensorBoard's
event file, one per run segment, is written locally and copied to the bucket on the same
cadence. Reads and writes are marked for the run's stall watchdog (train/watchdog.py).
"""

from __future__ import annotations

import json
import tempfile
import time

from etils import epath

from models import paths
from train import watchdog


def logged_records(workdir) -> list[dict]:
    """The records of workdir/metrics.jsonl (none for a new workdir)."""
    path = paths.resolve(workdir) / "metrics.jsonl"
    with watchdog.doing("metrics read", path):
        text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line]


class MetricWriter:
    """Appends `{"step": N, ...}` lines to workdir/metrics.jsonl and scalars to TensorBoard."""

    def __init__(self, workdir, enabled: bool = True, every_s: float = 30.0):
        self.enabled = enabled
        if not enabled:
            return
        from tensorboardX import SummaryWriter

        workdir = paths.resolve(workdir)
        self._remote, self._every_s = paths.is_remote(workdir), every_s
        self._path = workdir / "metrics.jsonl"
        with watchdog.doing("metrics read", self._path):
            self._jsonl = paths.Appender(self._path, every_s=every_s)
        self._events = workdir / "tensorboard"
        self._scratch = tempfile.TemporaryDirectory() if self._remote else None
        local = self._scratch.name if self._remote else str(self._events)
        self._tb = SummaryWriter(local)
        self._uploaded = time.monotonic()

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        with watchdog.doing("metrics write", self._path):
            self._jsonl.write(json.dumps({"step": int(step), **metrics}) + "\n")
            for key, value in metrics.items():
                self._tb.add_scalar(key, value, step)
            self._tb.flush()
            if self._remote and time.monotonic() - self._uploaded >= self._every_s:
                self._upload()

    def flush(self) -> None:
        """Writes what is buffered (a bucket's objects are rewritten here)."""
        if self.enabled:
            with watchdog.doing("metrics write", self._path):
                self._jsonl.flush()
                self._tb.flush()
                if self._remote:
                    self._upload()

    def _upload(self) -> None:
        paths.copy_tree(epath.Path(self._scratch.name), self._events)
        self._uploaded = time.monotonic()

    def close(self) -> None:
        if self.enabled:
            self.flush()
            with watchdog.doing("metrics write", self._path):
                self._jsonl.close()
            self._tb.close()
            if self._remote:
                self._scratch.cleanup()
