"""A run config as the training commands read it: a config file and its `--config.KEY=VALUE`
overrides (configs/cli.py), with the closed sets of the keys that train/ owns checked as well.

    config = run_config.load("configs/gpt_lm.py:smoke", [("optimizer.name", "sgd")])
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from configs import cli
from train import optim, tasks


def choices() -> dict[str, tuple]:
    """The run keys of train/ with a closed set of values, each with its allowed values."""
    return {
        "task": ("", *tasks.TASK_METRICS),
        "optimizer.name": optim.OPTIMIZERS,
        "optimizer.schedule": optim.SCHEDULES,
    }


def load(
    spec: str, overrides: Sequence[tuple[str, str]] = (), *, local_files: bool = True
) -> ml_collections.ConfigDict:
    """The config `spec` (`path[:variant]`) with `overrides` applied and every closed-set key
    checked; a mistake is one `UserError` line (configs/cli.py says how values are written)."""
    return cli.apply_overrides(
        cli.load_config(spec), overrides, local_files=local_files, choices=choices()
    )
