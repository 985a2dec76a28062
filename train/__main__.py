"""`python -m train --config configs/NAME.py[:variant] --workdir DIR [--config.key=value ...]`.

With no arguments it runs the embedded default (configs/gpt_lm.py: a small GPT on the CPython
documentation corpus bundled with Python) in a fresh workdir under ./runs/.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

import configs

_DEFAULT_CONFIG = str(Path(configs.__file__).parent / "gpt_lm.py")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/gpt_lm.py:smoke (default: gpt_lm)."
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Run directory (checkpoints, metrics); an existing one is resumed. "
    "Default: runs/<config>-<time>.",
)
# Multi-host: these override JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (see
# launch/distributed.py for SLURM, TPU pod and GKE detection).
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0 (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")


def main(argv) -> int:
    if len(argv) > 1:
        print(
            f"error: unexpected arguments {argv[1:]}; use --config and --workdir", file=sys.stderr
        )
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    for noisy in ("absl", "jax._src", "orbax", "tensorflow_datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from launch import distributed

    try:  # before anything touches a device
        distributed.initialize(
            distributed.detect(
                coordinator=_COORDINATOR.value,
                num_processes=_NUM_PROCESSES.value,
                process_id=_PROCESS_ID.value,
            )
        )
    except distributed.DistributedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import jax

    if jax.process_index() != 0:  # logs and progress from process 0 only
        logging.getLogger().setLevel(logging.WARNING)

    from data.errors import DataError
    from models.config import ConfigError
    from models.hf import CheckpointError as HFCheckpointError
    from train.checkpoint import CheckpointError
    from train.loop import TrainingError, train_and_evaluate
    from train.objectives import ObjectiveError
    from train.optim import OptimizerError
    from train.partitioning import MeshError
    from train.tasks import TaskError

    config = _CONFIG.value
    name = Path(flags.FLAGS["config"].config_filename).stem
    workdir = _WORKDIR.value or f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        summary = train_and_evaluate(config, workdir)
    except (
        ConfigError,
        DataError,
        MeshError,
        CheckpointError,
        HFCheckpointError,
        TrainingError,
        ObjectiveError,
        OptimizerError,
        TaskError,
        distributed.DistributedError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if jax.process_index() != 0:
        return 0
    if "sample" in summary:
        print(f"\nsample: {summary['sample']}")
    final = summary.get("final", {})
    line = f"\nstep {summary['steps']}: loss {final.get('loss', float('nan')):.4f}"
    if summary.get("eval"):
        line += f", eval loss {summary['eval']['eval_loss']:.4f}"
    print(line + f" in {summary['wall_time_s']:.0f}s")
    print(f"workdir: {summary['workdir']}")
    return 0


def run() -> None:
    # Without --config the default experiment is used; naming it on the command line (rather
    # than as the flag's default) keeps --config.key=value overrides working.
    if not any(a == "--config" or a.startswith("--config=") for a in sys.argv[1:]):
        sys.argv.insert(1, f"--config={_DEFAULT_CONFIG}")
    app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    from launch import allocator

    allocator.reexec_with_tcmalloc()  # XLA:CPU steps without page faults (launch/allocator.py)
    run()
