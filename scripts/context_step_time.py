"""Train-step time with the sequence split over `mesh.context` against the batch split, on 8
simulated CPU devices.

    python scripts/context_step_time.py [--length 1024] [--steps 5] [--json out.json]

Each mesh runs the training loop's step (`train.step.jit_steps`, AdamW, no dropout) of a small
GPT-2 (4 layers, d_model 256, 4 heads, the xla kernel) on the same 8 rows: data=8, then
data=8/c x context=c for c = 2, 4, 8, load-balanced as the training feed does
(train/context.py). The simulated devices share this machine's cores and "communicate" by
memory copies, so these are communication-bound CPU figures: they show what the split costs in
extra work (the K/V all-gathers and reduce-scatters, the reordering), not what it saves on
accelerators, where context parallelism exists to fit sequences that one device cannot hold.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import models  # noqa: E402
from configs.common import base_config  # noqa: E402
from train import context, partitioning  # noqa: E402
from train.optim import make_optimizer  # noqa: E402
from train.state import create_train_state  # noqa: E402
from train.step import jit_steps  # noqa: E402

ROWS = 8


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def timed(train_step, state, batch, steps: int, mesh, rules) -> tuple[str, list, list]:
    """The compiled step's text, then `steps` step times (s) and losses after two warm-ups."""
    with partitioning.activate(mesh, rules):
        hlo = train_step.lower(state, batch, jax.random.key(1)).compile().as_text()
        times, losses = [], []
        for i in range(steps + 2):
            start = time.perf_counter()
            state, metrics = train_step(state, batch, jax.random.key(1))
            loss = float(metrics["loss"])
            if i >= 2:
                times.append(time.perf_counter() - start)
                losses.append(loss)
    return hlo, times, losses


def small_gpt(length: int, layers: int, **fields):
    """The timed model: GPT-2 with d_model 256, 4 heads, a 4096 vocabulary, the xla kernel and
    no dropout."""
    return models.get_config(
        "gpt2",
        vocab_size=4096,
        d_model=256,
        num_heads=4,
        d_ff=1024,
        num_layers=layers,
        max_positions=length,
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
        attention_kernel="xla",
        **fields,
    )


def environment(model: str, rows: int, length: int) -> dict:
    """What a timing ran on: the CPU, its cores, jax, the simulated devices, model and batch."""
    return {
        "cpu": _cpu(),
        "cores": os.cpu_count(),
        "jax": jax.__version__,
        "devices": "8 simulated CPU devices (--xla_force_host_platform_device_count=8)",
        "model": model,
        "batch": f"{rows} x {length}",
    }


def time_mesh(model_config, length: int, ctx: int, steps: int) -> dict:
    """Median step time (s) and the compiled step's all-gather count for one mesh."""
    mesh = partitioning.make_mesh({"data": ROWS // ctx, "context": ctx})
    rules = partitioning.DEFAULT_RULES
    run = base_config()
    run.seq_len, run.mesh.context = length, ctx
    train_config = context.train_config(run, model_config, ctx)
    model = models.build(train_config)
    tx, schedule = make_optimizer(run.optimizer, 100)
    state, shardings = create_train_state(model, train_config, tx, mesh, rules, jax.random.key(0))
    train_step, _ = jit_steps(model, tx, schedule, "clm", shardings, mesh, rules, dropout=False)
    ids = np.random.default_rng(0).integers(1, model_config.vocab_size, (ROWS, length + 1))
    batch = {"input_ids": ids[:, :-1].astype(np.int32), "targets": ids[:, 1:].astype(np.int32)}
    if context.load_balanced(run, model_config, ctx):
        batch = context.balance(batch, model_config.family, ctx)
    batch = {
        k: jax.device_put(v, partitioning.batch_sharding(mesh, v.ndim, rules))
        for k, v in batch.items()
    }
    hlo, times, losses = timed(train_step, state, batch, steps, mesh, rules)
    return {
        "mesh": dict(mesh.shape),
        "step_s": statistics.median(times),
        "all_gathers": hlo.count("all-gather-start") or hlo.count("all-gather("),
        "last_loss": losses[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    model_config = small_gpt(args.length, 4)
    rows = [time_mesh(model_config, args.length, c, args.steps) for c in (1, 2, 4, 8)]
    env = environment(model_config.name + " 4L d256 h4, xla kernel, float32", ROWS, args.length)
    print(json.dumps(env))
    print("| mesh | step time (s) | vs data=8 | all-gathers in the step |")
    print("|---|---|---|---|")
    for row in rows:
        mesh = " x ".join(f"{k}={v}" for k, v in row["mesh"].items() if v > 1)
        ratio = row["step_s"] / rows[0]["step_s"]
        print(f"| {mesh} | {row['step_s']:.3f} | {ratio:.2f}x | {row['all_gathers']} |")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
