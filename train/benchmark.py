"""Training-step benchmark: tokens/s, MFU, compile time and peak memory.

    python -m train.benchmark --model gpt2 --batch 8 --seq 256 --steps 10 --dtype bf16 \\
        --json out.json

The step is the real one (train/step.py: forward, backward, AdamW update, sharded over every
device along `data`). MFU = analytic FLOPs per step (train/flops.py) / median step time / peak
FLOP/s, where the peak is the published dense bf16 (or TF32 for f32) figure on GPUs/TPUs and a
matmul measured on the spot on CPUs (f32, or bf16 inputs with f32 accumulation for --dtype bf16).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import models
from train import partitioning
from train.flops import train_flops_per_step
from train.state import create_train_state
from train.step import make_train_step

# Published dense peaks per chip, FLOP/s: (bf16, f32 via TF32 or native).
PEAK_FLOPS = {
    "H100": (989.4e12, 494.7e12),  # H100 SXM5 datasheet
    "H200": (989.4e12, 494.7e12),  # same compute as H100 SXM
    "A100": (312e12, 156e12),  # A100 SXM4 datasheet
    "TPU v4": (275e12, 275e12),
    "TPU v5 lite": (197e12, 197e12),  # v5e
    "TPU v5p": (459e12, 459e12),
    "TPU v6 lite": (918e12, 918e12),  # v6e (Trillium)
}

OBJECTIVE = {
    "decoder": ("causal_lm", "lm"),
    "encoder": ("masked_lm", "mlm"),
    "encoder_decoder": ("seq2seq", "lm"),
}


def measured_matmul_peak(dtype: str, n: int = 2048, reps: int = 5) -> float:
    """Best-of-`reps` FLOP/s of an n x n x n matmul on the default device."""
    in_dtype = jnp.bfloat16 if dtype == "bf16" else jnp.float32
    a = jnp.ones((n, n), in_dtype)
    f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def device_peak(dtype: str) -> tuple[float, str]:
    """(peak FLOP/s, where it came from) for the first device."""
    kind = jax.devices()[0].device_kind
    for name, (bf16, f32) in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return (bf16 if dtype == "bf16" else f32) * jax.device_count(), f"published ({kind})"
    peak = measured_matmul_peak(dtype) * jax.device_count()
    return peak, f"measured {dtype} matmul ({kind})"


def environment() -> dict:
    import flax

    dev = jax.devices()[0]
    return {
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "python": platform.python_version(),
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def _peak_memory(compiled) -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    try:
        m = compiled.memory_analysis()
        return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes)
    except Exception:  # not every backend reports it
        return None


def synthetic_batch(cfg, batch: int, seq: int, target: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ids = lambda length: rng.integers(1, cfg.vocab_size, (batch, length)).astype(np.int32)  # noqa: E731
    ones = lambda length: np.ones((batch, length), np.float32)  # noqa: E731
    if cfg.family == "encoder_decoder":
        return {
            "input_ids": ids(seq),
            "decoder_input_ids": ids(target),
            "targets": ids(target),
            "weights": ones(target),
        }
    return {"input_ids": ids(seq), "targets": ids(seq), "weights": ones(seq)}


def benchmark(
    model: str,
    batch: int,
    seq: int,
    *,
    steps: int = 10,
    warmup: int = 2,
    dtype: str = "bf16",
    kernel: str = "auto",
    remat: str = "none",
    target_seq: int | None = None,
    scan_layers: bool = False,
) -> dict:
    """Times `steps` training steps after `warmup`; returns the result dict."""
    base = models.get_config(model)
    objective, head = OBJECTIVE[base.family]
    cfg = base.replace(
        head=head,
        dtype="bfloat16" if dtype == "bf16" else "float32",
        attention_kernel=kernel,
        remat_policy=remat,
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
        scan_layers=scan_layers,
    )
    target = target_seq or seq
    net = models.build(cfg)
    mesh = partitioning.make_mesh({"data": -1})
    rules = partitioning.DEFAULT_RULES
    tx = optax.adamw(1e-4, weight_decay=0.01)
    state, shardings = create_train_state(net, cfg, tx, mesh, rules, jax.random.key(0))
    host = synthetic_batch(cfg, batch, seq, target)
    data = {
        k: jax.device_put(v, partitioning.batch_sharding(mesh, v.ndim)) for k, v in host.items()
    }
    with partitioning.activate(mesh, rules):
        step = jax.jit(
            make_train_step(net, tx, lambda s: 1e-4, objective, dropout=False),
            in_shardings=(shardings, None, None),
            out_shardings=(shardings, None),
            donate_argnums=(0,),
        )
        rng = jax.random.key(1)
        start = time.perf_counter()
        compiled = step.lower(state, data, rng).compile()
        compile_s = time.perf_counter() - start
        for _ in range(warmup):
            state, metrics = compiled(state, data, rng)
        jax.block_until_ready(state)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            state, metrics = compiled(state, data, rng)
            jax.block_until_ready(state)
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    flops = train_flops_per_step(
        cfg, batch, seq, target if cfg.family == "encoder_decoder" else None
    )
    peak, peak_source = device_peak(dtype)
    tokens = batch * (seq + (target if cfg.family == "encoder_decoder" else 0))
    return {
        "model": model,
        "family": cfg.family,
        "objective": objective,
        "batch": batch,
        "seq": seq,
        "target_seq": target if cfg.family == "encoder_decoder" else None,
        "dtype": dtype,
        "attention_kernel": kernel,
        "remat": remat,
        "steps": steps,
        "params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params)),
        "step_time_s": step_s,
        "step_times_s": times,
        "tokens_per_step": tokens,
        "tokens_per_s": tokens / step_s,
        "flops_per_step": flops,
        "tflops_per_s": flops / step_s / 1e12,
        "peak_flops": peak,
        "peak_source": peak_source,
        "mfu": flops / step_s / peak,
        "compile_s": compile_s,
        "peak_memory_bytes": _peak_memory(compiled),
        "final_loss": float(metrics["loss"]),
        "environment": environment(),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m train.benchmark", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--seq", type=int, required=True)
    p.add_argument("--target-seq", type=int, default=None, help="decoder length (enc-dec)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--dtype", choices=("f32", "bf16"), default="bf16")
    p.add_argument("--kernel", default="auto", help="attention kernel (models/attention.py)")
    p.add_argument("--remat", default="none")
    p.add_argument("--scan-layers", action="store_true")
    p.add_argument("--json", default=None, help="write the result here")
    args = p.parse_args(argv)
    try:
        result = benchmark(
            args.model,
            args.batch,
            args.seq,
            steps=args.steps,
            warmup=args.warmup,
            dtype=args.dtype,
            kernel=args.kernel,
            remat=args.remat,
            target_seq=args.target_seq,
            scan_layers=args.scan_layers,
        )
    except (models.ConfigError, partitioning.MeshError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    mem = result["peak_memory_bytes"]
    print(
        f"{result['model']} batch {args.batch} seq {args.seq} {args.dtype} on "
        f"{result['environment']['device_count']}x {result['environment']['device_kind']}: "
        f"{result['step_time_s'] * 1e3:.1f} ms/step, {result['tokens_per_s']:,.0f} tokens/s, "
        f"{result['tflops_per_s']:.2f} TFLOP/s, MFU {result['mfu']:.1%} "
        f"(peak {result['peak_flops'] / 1e12:.1f} TFLOP/s, {result['peak_source']}), "
        f"compile {result['compile_s']:.1f}s"
        + (f", peak memory {mem / 2**30:.2f} GiB" if mem else "")
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
