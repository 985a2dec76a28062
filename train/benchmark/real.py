"""`--data real`: the train step fed by a config's own input pipeline, next to synthetic tokens.

    python -m train.benchmark --data real --config configs/gpt_lm.py [--config.KEY=VALUE ...] \\
        [--steps N] [--warmup W] [--rounds R] [--json F]

The run is built as `python -m train` builds it (`train.loop.setup` in a scratch workdir: the
run's tokenizer, model, optimizer, sharding and step, and its training pipeline with
`data.workers` processes), then timed two ways, alternating `rounds` times:

  real       each step's batch comes from the pipeline through the loop's `train.feed.Feed`
             (built and placed on the devices `data.prefetch` batches ahead), as in training;
  synthetic  one of those batches, already on the devices, is fed to every step: the same
             shapes and the same compiled step with no input work at all.

It reports both rates, `data_stall_share` (the share of the real rounds' wall time spent
waiting for the next batch, the loop's `time/data_wait`) and `input_slowdown` (synthetic tokens/s
over real). A host that feeds its accelerators has a stall share near 0 and a slowdown near 1.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import jax

from models.errors import UserError
from train.benchmark.machine import environment
from train.feed import Feed
from train.step import waits_for_each_step


def real_data_benchmark(config, *, steps: int = 20, warmup: int = 2, rounds: int = 2) -> dict:
    """Times `config`'s train step on its real pipeline and on synthetic tokens (module doc)."""
    import functools

    from train import loop

    if config.data.get("trim_padding"):
        raise UserError(
            "--data real times one compiled shape; set --config.data.trim_padding=0 for it"
        )
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        run = loop.setup(config, Path(workdir))
        setup_s = time.perf_counter() - start
        try:
            place = functools.partial(loop._device_batch, mesh=run.mesh, rules=run.rules)
            feed = Feed(run.train_iter, place, config.data.get("prefetch", 2))
            try:
                return _timed(run, feed, steps=steps, warmup=warmup, rounds=rounds) | {
                    "setup_s": setup_s
                }
            finally:
                feed.close()
        finally:
            run.train_iter.close()
            run.ckpt.close()


def _timed(run, feed: Feed, *, steps: int, warmup: int, rounds: int) -> dict:
    """Warm-up (the first step compiles), then `rounds` of real and synthetic steps."""
    rng = jax.random.key(run.config.seed + 1)
    state = run.state
    start = time.perf_counter()
    host, device_batch, _ = next(feed)
    state, metrics = run.train_step(state, device_batch, rng)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    state, _ = _real(run, feed, state, rng, warmup)
    real, synthetic = [], []
    for _ in range(rounds):
        state, measured = _real(run, feed, state, rng, steps)
        real.append(measured)
        state, seconds = _synthetic(run, state, device_batch, rng, steps)
        synthetic.append(seconds)
    tokens = sum(v.size for k, v in host.items() if k.endswith("input_ids"))
    real_s = statistics.median(r["wall_s"] for r in real)
    synthetic_s = statistics.median(synthetic)
    wait = sum(r["data_wait_s"] for r in real) / sum(r["wall_s"] for r in real)
    return {
        "config_model": run.model_config.name,
        "objective": run.objective,
        "batch": run.config.batch_size,
        "seq_len": run.config.seq_len,
        "tokens_per_step": tokens,
        "steps": steps,
        "rounds": rounds,
        "workers": run.train_iter.workers,
        "prefetch": feed.depth,
        "compile_s": compile_s,
        "real_tokens_per_s": tokens * steps / real_s,
        "synthetic_tokens_per_s": tokens * steps / synthetic_s,
        "data_stall_share": wait,
        "input_slowdown": real_s / synthetic_s,
        "real_rounds": real,
        "synthetic_rounds_s": synthetic,
        "environment": environment(),
    }


def _real(run, feed: Feed, state, rng, steps: int):
    """`steps` steps on the pipeline's next batches, as train/loop.py runs them."""
    wait = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        before = time.perf_counter()
        _, device_batch, _ = next(feed)
        wait += time.perf_counter() - before
        state, metrics = run.train_step(state, device_batch, rng)
        if waits_for_each_step():
            jax.block_until_ready(metrics)
    jax.block_until_ready(state)
    return state, {"wall_s": time.perf_counter() - start, "data_wait_s": wait}


def _synthetic(run, state, device_batch, rng, steps: int):
    """`steps` steps on one batch already on the devices; their wall seconds."""
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = run.train_step(state, device_batch, rng)
        if waits_for_each_step():
            jax.block_until_ready(metrics)
    jax.block_until_ready(state)
    return state, time.perf_counter() - start


def real_data_line(r: dict) -> str:
    """The printed summary of `real_data_benchmark`'s result."""
    return (
        f"{r['config_model']} {r['objective']} {r['batch']} x {r['seq_len']}, "
        f"{r['workers']} workers, prefetch {r['prefetch']}: real data "
        f"{r['real_tokens_per_s']:,.0f} tokens/s, synthetic {r['synthetic_tokens_per_s']:,.0f} "
        f"tokens/s (input slowdown {r['input_slowdown']:.2f}x, data stall "
        f"{r['data_stall_share']:.1%} of the real steps' wall time)"
    )
