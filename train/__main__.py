"""`python -m train --config configs/NAME.py[:variant] --workdir DIR [--config.key=value ...]`.

With no arguments it runs the embedded default (configs/gpt_lm.py: a small GPT on the CPython
documentation corpus bundled with Python) in a fresh workdir under ./runs/.

Any config key is set with `--config.KEY=VALUE` (configs/cli.py says how each type is written);
every key is documented in configs/common.py. To train on your own text:

    python -m train --config configs/gpt_lm.py:smoke --config.data.files=my_corpus.txt

Exit status: 0 when the run reached `steps`; 75 (train/distributed.py's PREEMPTED_EXIT_STATUS)
when SIGTERM (a preemption, `scancel --signal=TERM`, a time-limit notice) made every process save
a checkpoint and stop early, so that a scheduler's script can requeue it (launch/slurm.py's
does); 1 when a process of the run failed or was lost; 2 for bad input (one `error:` line).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from absl import flags

import configs
from configs import cli
from train import run_config

_DEFAULT_CONFIG = str(Path(configs.__file__).parent / "gpt_lm.py")
# Parsed by configs.cli (with the --config.KEY=VALUE overrides); declared here for --help.
flags.DEFINE_string(
    "config",
    None,
    "Experiment config file[:variant], e.g. configs/gpt_lm.py:smoke or bert_mlm:adapt "
    "(default: configs/gpt_lm.py). Any key is set with --config.KEY=VALUE, e.g. "
    "--config.steps=100 --config.data.files=corpus.txt; every key is documented in "
    "configs/common.py.",
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Run directory (checkpoints, metrics); an existing one is resumed. "
    "Default: runs/<config>-<time>.",
)
# Multi-host: these override JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (see
# train/distributed.py for SLURM, TPU pod and GKE detection).
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0 (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")


def main(argv, spec: str, overrides) -> int:
    """Loads the config, joins the hosts and trains (configs.cli.run_absl reports errors)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    for noisy in ("absl", "jax._src", "orbax", "tensorflow_datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    config = run_config.load(spec, overrides)

    from train import distributed

    distributed.initialize(  # before anything touches a device
        distributed.detect(
            coordinator=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    )
    import jax

    if jax.process_index() != 0:  # logs and progress from process 0 only
        logging.getLogger().setLevel(logging.WARNING)
    from train.loop import train_and_evaluate

    name = cli.split_spec(spec)[0].stem
    workdir = _WORKDIR.value or f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    with distributed.peer_failures_end_the_process():
        summary = train_and_evaluate(config, workdir)
    status = 0
    if summary.get("preempted") and summary["steps"] < config.steps:
        status = distributed.PREEMPTED_EXIT_STATUS  # saved on SIGTERM: resume to finish
        distributed.ignore_further_notices()
    if jax.process_index() != 0:
        return status
    if "sample" in summary:
        print(f"\nsample: {summary['sample']}")
    final = summary.get("final", {})
    line = f"\nstep {summary['steps']}: loss {final.get('loss', float('nan')):.4f}"
    if summary.get("eval"):
        line += f", eval loss {summary['eval']['eval_loss']:.4f}"
    print(line + f" in {summary['wall_time_s']:.0f}s")
    print(f"workdir: {summary['workdir']}")
    if status:
        print(
            f"stopped early on SIGTERM, checkpoint saved: exit status {status}; run the same "
            "command again to resume"
        )
    return status


def run() -> None:
    cli.run_absl(main, _DEFAULT_CONFIG)


if __name__ == "__main__":
    from train import allocator

    allocator.reexec_with_tcmalloc()  # XLA:CPU steps without page faults (train/allocator.py)
    run()
