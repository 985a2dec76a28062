"""`python -m train --config configs/NAME.py[:variant] --workdir DIR [--config.key=value ...]`.

With no arguments it runs the embedded default (configs/gpt_lm.py: a small GPT on the CPython
documentation corpus bundled with Python) in a fresh workdir under ./runs/.
"""

from __future__ import annotations

import logging
import sys
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/gpt_lm.py:smoke (default: gpt_lm).")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory (checkpoints, metrics); an existing one is resumed. "
    "Default: runs/<config>-<time>.")


def _default_config():
    from configs import gpt_lm

    return gpt_lm.get_config()


def main(argv) -> int:
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}; use --config and --workdir",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("absl", "jax._src", "orbax", "tensorflow_datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from data.errors import DataError
    from models.config import ConfigError
    from train.checkpoint import CheckpointError
    from train.loop import TrainingError, train_and_evaluate
    from train.objectives import ObjectiveError
    from train.optim import OptimizerError
    from train.partitioning import MeshError

    config = _CONFIG.value if _CONFIG.value is not None else _default_config()
    name = "gpt_lm"
    if flags.FLAGS["config"].present:
        name = flags.FLAGS["config"].config_filename.rsplit("/", 1)[-1].split(".py")[0]
    workdir = _WORKDIR.value or f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        summary = train_and_evaluate(config, workdir)
    except (ConfigError, DataError, MeshError, CheckpointError, TrainingError, ObjectiveError,
            OptimizerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if "sample" in summary:
        print(f"\nsample: {summary['sample']}")
    final = summary.get("final", {})
    print(f"\nstep {summary['steps']}: loss {final.get('loss', float('nan')):.4f}"
          + (f", eval loss {summary['eval']['eval_loss']:.4f}" if summary.get("eval") else "")
          + f" in {summary['wall_time_s']:.0f}s")
    print(f"workdir: {summary['workdir']}")
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
