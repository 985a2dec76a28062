"""Metric sinks: metrics.jsonl (one JSON object per logged step) and TensorBoard event files."""

from __future__ import annotations

import json
from pathlib import Path


class MetricWriter:
    """Appends `{"step": N, ...}` lines to workdir/metrics.jsonl and scalars to TensorBoard."""

    def __init__(self, workdir: str | Path, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        from tensorboardX import SummaryWriter

        self._jsonl = open(Path(workdir) / "metrics.jsonl", "a")  # noqa: SIM115
        self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": int(step), **metrics}) + "\n")
        self._jsonl.flush()
        for key, value in metrics.items():
            self._tb.add_scalar(key, value, step)
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
