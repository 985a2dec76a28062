"""What the cluster scripts share: the training command and the common flags."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence

from models.errors import UserError

# The port process 0 listens on for the jax.distributed coordinator (any free port works).
DEFAULT_PORT = 8476


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """--config, --workdir, --set KEY=VALUE (config overrides), --python, --env KEY=VALUE."""
    group = parser.add_argument_group("training command")
    group.add_argument(
        "--config", required=True, help="experiment config, e.g. configs/gpt_lm.py:gpt2"
    )
    group.add_argument(
        "--workdir",
        required=True,
        help="run directory every host sees: gs://BUCKET/run, or a shared file system",
    )
    group.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, repeatable: --set steps=1000 --set mesh.fsdp=8",
    )
    group.add_argument("--python", default="python", help="interpreter on the hosts")
    group.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment variable for every process, repeatable",
    )
    group.add_argument("--port", type=int, default=DEFAULT_PORT, help="coordinator port")
    group.add_argument(
        "--dry-run", action="store_true", help="print what would run (nothing is submitted)"
    )


def train_argv(
    config: str, workdir: str, overrides: Sequence[str] = (), python: str = "python"
) -> list[str]:
    """`python -m train --config C --workdir W --config.k=v ...` as an argument list."""
    argv = [python, "-m", "train", "--config", config, "--workdir", workdir]
    pairs = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r} is not KEY=VALUE")
        key = key.removeprefix("--").removeprefix("config.")
        pairs.append((key, value))
        argv.append(f"--config.{key}={value}")
    check_config(config, pairs)
    return argv


def check_config(config: str, overrides: Sequence[tuple[str, str]]) -> None:
    """Loads a config that exists here with its overrides, so that a typo in a key or a value
    fails before anything is submitted (a path that exists only on the cluster is left alone)."""
    from configs import cli
    from train import run_config

    if cli.split_spec(config)[0].is_file():
        run_config.load(config, overrides, local_files=False)


def train_command(args: argparse.Namespace) -> str:
    """The shell-quoted training command from parsed `add_train_arguments` flags."""
    return shlex.join(train_argv(args.config, args.workdir, args.overrides, args.python))


def parse_env(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.replace("_", "").isalnum():
            raise UserError(f"--env {item!r} is not KEY=VALUE")
        out[key] = value
    return out
