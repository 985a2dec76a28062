"""Train-step time with the layers split into pipeline stages against the batch split, on 8
simulated CPU devices.

    python scripts/pipeline_step_time.py [--length 256] [--steps 5] [--json out.json]

Each row runs the training loop's step (`train.step.jit_steps`, AdamW, no dropout) of a small
GPT-2 (8 scanned layers, d_model 256, 4 heads, the xla kernel) on the same 16 rows: data=8, then
data=4 x stage=2 and data=2 x stage=4 with several microbatch counts and repeats, built as the
loop builds them (train/stages.py). The simulated devices share this machine's cores and
"communicate" by memory copies, so these are CPU figures of the schedule's overhead (the
bubble's idle slots are computed on zeros here, and the stages' hand-offs are copies), not of
what stages save on accelerators, where they exist to fit and feed models too deep for one
device group.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from context_step_time import environment, small_gpt, timed  # noqa: E402

import models  # noqa: E402
from configs.common import base_config  # noqa: E402
from models.pipeline import Schedule  # noqa: E402
from train import partitioning, stages  # noqa: E402
from train.optim import make_optimizer  # noqa: E402
from train.state import create_train_state  # noqa: E402
from train.step import jit_steps  # noqa: E402

ROWS = 16
MESHES = [  # (stages, microbatches, repeats)
    (1, 0, 1),
    (2, 2, 1),
    (2, 4, 1),
    (2, 2, 2),
    (2, 4, 2),
    (4, 4, 1),
    (4, 8, 1),
    (4, 4, 2),
]


def time_mesh(model_config, length: int, schedule: tuple, steps: int) -> dict:
    """Median step time (s) and the compiled step's collective permutes for one mesh."""
    s, m, r = schedule
    mesh = partitioning.make_mesh({"data": 8 // s, "stage": s})
    rules = partitioning.DEFAULT_RULES
    run = base_config()
    run.seq_len, run.batch_size = length, ROWS
    run.pipeline.microbatches, run.pipeline.repeats = m, r
    step_config = stages.model_config(run, model_config, mesh, rules)
    model = models.build(step_config)
    tx, lr = make_optimizer(run.optimizer, 100)
    state, shardings = create_train_state(model, step_config, tx, mesh, rules, jax.random.key(0))
    train_step, _ = jit_steps(model, tx, lr, "clm", shardings, mesh, rules, dropout=False)
    ids = np.random.default_rng(0).integers(1, model_config.vocab_size, (ROWS, length + 1))
    batch = {"input_ids": ids[:, :-1].astype(np.int32), "targets": ids[:, 1:].astype(np.int32)}
    batch = {
        k: jax.device_put(v, partitioning.batch_sharding(mesh, v.ndim, rules))
        for k, v in batch.items()
    }
    hlo, times, losses = timed(train_step, state, batch, steps, mesh, rules)
    return {
        "mesh": dict(mesh.shape),
        "microbatches": m if s > 1 else None,
        "repeats": r if s > 1 else None,
        "bubble": Schedule(s, m, r).bubble if s > 1 else 0.0,
        "step_s": statistics.median(times),
        "collective_permutes": hlo.count("collective-permute-start")
        or hlo.count("collective-permute("),
        "last_loss": losses[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model_config = small_gpt(args.length, 8, scan_layers=True)
    rows = [time_mesh(model_config, args.length, s, args.steps) for s in MESHES]
    model = model_config.name + " 8L d256 h4 scanned, xla kernel, float32"
    env = environment(model, ROWS, args.length)
    print(json.dumps(env))
    print("| mesh | microbatches | repeats | bubble | step time (s) | vs data=8 | last loss |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        mesh = " x ".join(f"{k}={v}" for k, v in row["mesh"].items() if v > 1)
        ratio = row["step_s"] / rows[0]["step_s"]
        print(
            f"| {mesh} | {row['microbatches'] or '-'} | {row['repeats'] or '-'} | "
            f"{row['bubble']:.2f} | {row['step_s']:.3f} | {ratio:.2f}x | {row['last_loss']:.4f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
