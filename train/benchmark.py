"""Training and decoding benchmarks: tokens/s, MFU, compile time, peak memory, energy and CO2,
optionally side by side with the Hugging Face PyTorch model of the same shape.

    python -m train.benchmark --model gpt2 --batch 8 --seq 256 --steps 10 --dtype bf16 \\
        [--reference torch [--rounds R]] [--decode] [--json out.json]
    python -m train.benchmark --suite cpu      # regenerates docs/benchmarks/
    python -m train.benchmark --suite gpu      # regenerates docs/benchmarks/gpu/ (one NVIDIA GPU)

The step is the real one (train/step.py: forward, backward, AdamW update, sharded over every
device along `data`), compiled ahead of time, warmed up (again while its steps still touch
fresh memory), then timed as the training loop runs it: on a GPU or TPU each step launched
while the one before still runs, a step's time the interval between two steps becoming ready;
on a CPU each step waited for. The median is reported. MFU = analytic FLOPs per step
(train/flops.py) / median step time / peak FLOP/s, where
the peak is the published dense bf16 (or TF32 for f32) figure on GPUs/TPUs and a matmul measured
on the spot on CPUs (f32, or bf16 inputs with f32 accumulation for --dtype bf16). Energy and CO2
come from train/carbon.py over the timed steps. `--reference torch` times the same step in
PyTorch (train/benchmark_torch.py), on the GPU when JAX runs on one, before ours or, with
`--rounds R`, alternating with ours R times (a drifting machine then slows both); `--decode`
times cached greedy generation (train/decode.py) against transformers' `generate`. With PyTorch
in the same process on a GPU, JAX allocates as it goes (XLA_PYTHON_CLIENT_PREALLOCATE=false)
instead of taking most of the memory up front, and in a suite takes at most half of it
(XLA_PYTHON_CLIENT_MEM_FRACTION=0.5).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import gzip
import json
import os
import platform
import re
import resource
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax

import models
from data import objectives
from models.errors import ArgumentParser, UserError, one_line_errors
from train import allocator, partitioning
from train.carbon import CarbonTracker
from train.flops import train_flops_per_step
from train.hardware import device_peak
from train.state import create_train_state
from train.step import jit_steps, waits_for_each_step

# Standard suites: (model, batch, seq, target_seq) trained in f32 and bf16, plus decoding.
SUITES = {
    "cpu": {
        "train": [
            ("gpt2", 8, 256, None),
            ("bert-base-uncased", 8, 128, None),
            ("t5-small", 8, 128, 128),
        ],
        "dtypes": ("f32", "bf16"),
        # 3 rounds of 2 steps, ours and PyTorch alternating: this shared VM's speed drifts by
        # 20% within the hour (cpu-profile.md), and alternating lets both sides see the drift.
        "steps": 2,
        "rounds": 3,
        "warmup": 1,
        "decode": {"model": "gpt2", "batches": (1, 16), "prompt_len": 32, "new_tokens": 64},
        "notes": "cpu-profile.md",  # relative to the report
    },
    # One NVIDIA GPU, bf16 with f32 weights (cuDNN flash attention via kernel "auto"); gpt2-medium
    # at 1024 tokens is the size of the MFU target in the README.
    "gpu": {
        "train": [
            ("gpt2-medium", 16, 1024, None),
            ("gpt2", 16, 1024, None),
            ("bert-base-uncased", 32, 512, None),
            ("t5-small", 16, 512, 512),
        ],
        "dtypes": ("bf16",),
        "steps": 20,
        "warmup": 3,
        "decode": {"model": "gpt2", "batches": (1, 16), "prompt_len": 32, "new_tokens": 128},
        "notes": "../gpu-notes.md",
        "platform": "gpu",
    },
}
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"


def environment() -> dict:
    """Versions, device and flags: what a reader needs to reproduce a number."""
    import flax

    dev = jax.devices()[0]
    env = {
        "jax": jax.__version__,
        "jaxlib": getattr(jax.lib, "__version__", None) or _version("jaxlib"),
        "flax": flax.__version__,
        "optax": optax.__version__,
        "python": platform.python_version(),
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "machine": platform.machine(),
        "os": platform.platform(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "xla_python_client_preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"),
        "xla_python_client_mem_fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"),
        "host_allocator": allocator.in_use(),  # train/allocator.py
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    for package in ("torch", "transformers", "codecarbon"):
        env[package] = _version(package)
    return env


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpuinfo(field: str) -> str | None:
    """The first `field` line of /proc/cpuinfo (Linux), or None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _cpu_model() -> str | None:
    return _cpuinfo("model name") or platform.processor() or None


def _peak_memory(compiled) -> tuple[int | None, str]:
    """The step's own memory: XLA's analysis of the compiled program where the backend gives one
    (the device allocator's peak covers the whole process, earlier benchmarks included)."""
    try:
        m = compiled.memory_analysis()
        total = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
        return int(total - m.alias_size_in_bytes), "XLA memory analysis (args + temps + outputs)"
    except Exception:  # not every backend reports it
        pass
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device allocator peak (whole process)"
    return None, "unavailable"


def benchmark_config(model: str, dtype: str, **overrides) -> models.ModelConfig:
    """The named architecture with its pretraining head, no dropout, and `dtype` compute."""
    base = models.get_config(model)
    fields = dict(
        head=objectives.for_family(base.family).head,
        dtype="bfloat16" if dtype == "bf16" else "float32",
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
    )
    fields.update(overrides)
    return base.replace(**fields)


# Warm-up repeats while one warm-up run of our steps takes SETTLED_FAULTS or more page faults.
WARMUP_TRIES, SETTLED_FAULTS = 4, 25_000  # 25k faults: 100 MB of 4 KiB pages


def _page_faults() -> int:
    """Minor page faults of this process so far (memory touched for the first time)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _timed_steps(compiled, state, data, rng, steps: int):
    """Runs `steps` steps the way the training loop does (on a GPU or TPU dispatching each
    before waiting for the one before it) and returns (state, metrics, seconds per step).

    A step's time is the interval between the moments its loss and the previous step's were
    ready. The host launches step i while the device still runs step i-1, as in train/loop.py,
    which reads metrics only every few steps. Waiting for each step before launching the next
    would add the launch latency to every step: about 9 ms on an H200 for gpt2-medium's ~400
    arrays (argument handling and the CUDA-graph launch), 8% of its step. On a CPU each step is
    waited for, here and in the loop (train.step.waits_for_each_step says why)."""
    if waits_for_each_step():
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            state, metrics = compiled(state, data, rng)
            jax.block_until_ready((state, metrics))
            times.append(time.perf_counter() - start)
        return state, metrics, times
    start = time.perf_counter()
    state, metrics = compiled(state, data, rng)
    ready = []
    for _ in range(steps - 1):
        pending = metrics["loss"]
        state, metrics = compiled(state, data, rng)
        pending.block_until_ready()
        ready.append(time.perf_counter())
    jax.block_until_ready((state, metrics))
    ready.append(time.perf_counter())
    return state, metrics, [float(t) for t in np.diff([start, *ready])]


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
    overrides: dict | None = None,
    reference: str | None = None,
    carbon: dict | None = None,
    profile: str | None = None,
    rounds: int = 1,
) -> dict:
    """Times `steps` training steps after `warmup` (`rounds` times); returns the result dict.

    Args:
      model: a named architecture (models.list_architectures()).
      overrides: further ModelConfig fields (e.g. num_layers=2 for a quick run).
      reference: "torch" also times the Hugging Face PyTorch model on the same batch.
      rounds: with a reference, 1 times PyTorch first, frees it, then times ours; >1
        alternates the two: `steps` of ours, `steps` of PyTorch, and again, so that a machine
        whose speed drifts (shared CPUs) slows both sides alike. Both models are then in memory
        at once. `speedup_per_round` holds each round's ratio (PyTorch's median step time there
        over ours) and `speedup_vs_reference` is their median, so drift between rounds cancels;
        the tokens/s medians are over all rounds. Energy is measured over our first round.
      carbon: the carbon config section (train/carbon.py); None = defaults.
      profile: a directory: one more step runs under `jax.profiler.trace` (a Perfetto trace
        there) and the result's "profile" lists the ops that took longest (see profile_ops).
    """
    if reference not in (None, "torch"):
        raise ValueError(f"reference={reference!r}; the only reference runner is 'torch'")
    if rounds < 1 or steps < 1:
        raise ValueError(f"steps={steps} and rounds={rounds} must be at least 1")
    cfg = benchmark_config(
        model,
        dtype,
        attention_kernel=kernel,
        remat_policy=remat,
        scan_layers=scan_layers,
        **(overrides or {}),
    )
    pretraining = objectives.for_family(cfg.family)
    objective = pretraining.loss
    enc_dec = cfg.family == "encoder_decoder"
    target = target_seq or seq
    phases, clock = {}, time.perf_counter()  # wall seconds of each phase (the result's phases_s)

    def phase(name):
        nonlocal clock
        now = time.perf_counter()
        phases[name] = phases.get(name, 0.0) + now - clock
        clock = now

    net = models.build(cfg)
    host = pretraining.synthetic_batch(cfg.vocab_size, batch=batch, seq=seq, target=target)
    runner = None
    if reference == "torch":
        from train.benchmark_torch import TrainRunner

        runner = TrainRunner(cfg, host, dtype=dtype, device=_torch_device())
    alternate = runner is not None and rounds > 1
    if runner is not None and not alternate:
        # PyTorch first, then freed: its allocator hands its cached GPU memory back, JAX's
        # keeps what it has taken (up to twice the step's need), and an 80 GiB GPU does not
        # hold both for gpt2-medium 16 x 1024 (PyTorch alone peaks at 47 GiB).
        runner.warm_up(warmup)
        runner.run(steps)
        runner.close()
        phase("reference")
    mesh = partitioning.make_mesh({"data": -1})
    rules = partitioning.DEFAULT_RULES
    tx = optax.adamw(1e-4, weight_decay=0.01)
    state, shardings = create_train_state(net, cfg, tx, mesh, rules, jax.random.key(0))
    data = {
        k: jax.device_put(v, partitioning.batch_sharding(mesh, v.ndim)) for k, v in host.items()
    }
    phase("init")
    step, _ = jit_steps(net, tx, lambda s: 1e-4, objective, shardings, mesh, rules, dropout=False)
    with partitioning.activate(mesh, rules):
        rng = jax.random.key(1)
        start = time.perf_counter()
        compiled = step.lower(state, data, rng).compile()
        compile_s = time.perf_counter() - start
        phase("compile")
        # Warm-up, again (up to WARMUP_TRIES times) while our steps still fault in fresh memory,
        # and with rounds in alternation with PyTorch's, as the rounds will run. On a CPU
        # our step's 3.4 GB (gpt2 8 x 256) landed in untouched memory after each of PyTorch's
        # first runs (850k page faults, 1-3 s of a 12 s step), and settled after the third.
        warmup_faults = []
        for _ in range(WARMUP_TRIES if warmup else 0):
            faults = _page_faults()
            state, metrics, _ = _timed_steps(compiled, state, data, rng, warmup)
            warmup_faults.append(_page_faults() - faults)
            if alternate:
                runner.warm_up(warmup)
            if warmup_faults[-1] < SETTLED_FAULTS:
                break
        phase("warmup")
        times, per_round = [], []
        tracker = CarbonTracker(carbon)
        round_faults = []
        for i in range(rounds):
            if i == 0:  # energy over our first round; codecarbon's start and stop timed apart
                tracker.start()
                phase("carbon")
            faults = _page_faults()
            try:
                state, metrics, round_times = _timed_steps(compiled, state, data, rng, steps)
                round_faults.append(_page_faults() - faults)
            finally:
                if i == 0:  # stopped even when a step fails (codecarbon's thread with it)
                    phase("timed")
                    tracker.stop()
                    phase("carbon")
            times += round_times
            per_round.append(statistics.median(round_times))
            if alternate:
                runner.run(steps)
        phase("timed")
        if profile:
            with jax.profiler.trace(profile, create_perfetto_trace=True):
                state, metrics = compiled(state, data, rng)
                jax.block_until_ready(state)
            phase("profile")
    step_s = statistics.median(times)
    flops = train_flops_per_step(cfg, batch, seq, target if enc_dec else None)
    peak, peak_source = device_peak(dtype)
    tokens = batch * (seq + (target if enc_dec else 0))
    memory, memory_source = _peak_memory(compiled)
    fused = _fused_attention_calls(compiled)
    footprint = tracker.result()
    result = {
        "model": model,
        "overrides": overrides or {},
        "family": cfg.family,
        "objective": objective,
        "batch": batch,
        "seq": seq,
        "target_seq": target if enc_dec else None,
        "dtype": dtype,
        "attention_kernel": kernel,
        "cudnn_attention_calls": fused,
        "remat": remat,
        "scan_layers": scan_layers,
        "steps": steps,
        "warmup": warmup,
        "rounds": rounds,
        "warmup_page_faults": warmup_faults,  # per warm-up run of ours (see WARMUP_TRIES)
        "page_faults_per_round": round_faults,  # of our timed steps: memory touched anew
        "params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params)),
        "step_time_s": step_s,
        "step_times_s": times,
        "step_time_spread_s": [min(times), max(times)],
        "tokens_per_step": tokens,
        "tokens_per_s": tokens / step_s,
        "flops_per_step": flops,
        "tflops_per_s": flops / step_s / 1e12,
        "peak_flops": peak,
        "peak_source": peak_source,
        "mfu": flops / step_s / peak,
        "compile_s": compile_s,
        "peak_memory_bytes": memory,
        "peak_memory_source": memory_source,
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        # where the run's wall time went: reference (PyTorch, when timed first), init (model,
        # optimizer state, batch), compile, warmup, carbon (codecarbon's start and stop), timed
        # (with PyTorch's rounds when they alternate), profile, report (memory analysis,
        # environment, trace reading)
        "phases_s": phases,
        "final_loss": float(metrics["loss"]),
        "energy_kwh": footprint["energy_kwh"],
        "emissions_kg_co2eq": footprint["emissions_kg_co2eq"],
        "carbon": footprint,
        "environment": environment(),
    }
    if profile:
        result["profile"] = {"dir": str(profile), "top_ops": profile_ops(profile, compiled)}
    phase("report")
    del state, compiled, data
    if alternate:
        runner.close()
    if runner is not None:
        result["reference"] = ref = runner.result()
        if alternate:
            ref_rounds = [statistics.median(r) for r in runner.rounds]
            result["speedup_per_round"] = [p / o for o, p in zip(per_round, ref_rounds)]
            result["speedup_vs_reference"] = statistics.median(result["speedup_per_round"])
        else:
            result["speedup_vs_reference"] = result["tokens_per_s"] / ref["tokens_per_s"]
    return result


def _torch_device() -> str:
    """Where the PyTorch reference runs: on the GPU when JAX runs on one."""
    return "cuda" if jax.devices()[0].platform == "gpu" else "cpu"


def _fused_attention_calls(compiled) -> int | None:
    """How many cuDNN fused-attention calls (forward and backward) the compiled step makes, on a
    GPU (None elsewhere): evidence that kernel "auto" really reached cuDNN."""
    if jax.devices()[0].platform != "gpu":
        return None
    return len(re.findall(r'custom_call_target="__cudnn\$fmha', compiled.as_text()))


def profile_ops(trace_dir: str, compiled, top: int = 20) -> list[dict]:
    """The `top` XLA ops of a profiled step by total time, each with its HLO shape and the JAX
    operation it came from (the `op_name` metadata of `compiled.as_text()`).

    On a CPU the trace's op events are named after HLO instructions. On a GPU only the device's
    own trace processes count (the host threads hold launches). Their kernels name the
    instruction in `args["hlo_op"]`, except inside a CUDA graph, where `hlo_op` is the command
    buffer and the kernel itself is named after its fusion with "." and "-" turned into "_"
    ("loop_add_fusion_48" for %loop_add_fusion.48). Library kernels with no instruction of their
    own there (cuDNN attention, cuBLAS) are listed under their kernel name, with no shape.
    """
    # the newest trace: a reused directory keeps earlier runs' traces beside it
    newest = max(Path(trace_dir).rglob("perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
    trace = json.load(gzip.open(newest))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    lines = {  # instruction name -> its HLO line
        m.group(1): m.group(0)
        for m in re.finditer(r"^\s*(?:ROOT )?%([\w.\-]+) = .*$", compiled.as_text(), re.M)
    }
    kernel_names = {re.sub(r"[.\-]", "_", name): name for name in lines}
    processes = {
        e.get("pid"): str(e.get("args", {}).get("name", ""))
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    devices = {pid for pid, name in processes.items() if "/device:GPU" in name}
    totals, counts = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") != "X" or (devices and e.get("pid") not in devices):
            continue
        hlo_op, kernel = (e.get("args") or {}).get("hlo_op"), str(e.get("name"))
        if hlo_op in lines and not hlo_op.startswith("command_buffer"):
            name = hlo_op
        elif kernel in lines or kernel in kernel_names:
            name = kernel_names.get(kernel, kernel)
        elif devices and not kernel.startswith("Memcpy"):
            name = kernel[:60]  # a library kernel inside a command buffer
        else:
            continue  # host events, copies
        totals[name] += e.get("dur", 0)
        counts[name] += 1
    ops = []
    for name, micros in totals.most_common(top):
        line = lines.get(name, "")
        shape = re.search(r"= (\S+) ", line)
        source = re.search(r'op_name="([^"]+)"', line)
        ops.append(
            {
                "op": name,
                "ms": micros / 1e3,
                "calls": counts[name],
                "shape": shape.group(1) if shape else None,
                "source": source.group(1) if source else None,
            }
        )
    return ops


def decode_benchmark(
    model: str,
    batch: int,
    *,
    prompt_len: int = 32,
    new_tokens: int = 64,
    dtype: str = "f32",
    repeats: int = 3,
    overrides: dict | None = None,
    reference: str | None = None,
) -> dict:
    """Greedy cached generation (train/decode.generate): median seconds of `repeats` calls after
    a compiling call; with reference="torch" also transformers' `generate` on the same weights."""
    import flax.linen as nn

    from models.summary import dummy_inputs
    from train.decode import generate

    cfg = benchmark_config(model, dtype, **(overrides or {}))
    net = models.build(cfg)
    init = jax.jit(lambda r: nn.meta.unbox(net.init(r, **dummy_inputs(cfg))["params"]))
    params = init(jax.random.key(0))
    prompt = np.random.default_rng(0).integers(1, cfg.vocab_size, (batch, prompt_len))
    run = lambda: generate(net, params, prompt, max_new_tokens=new_tokens)  # noqa: E731
    start = time.perf_counter()
    tokens = run()
    first_s = time.perf_counter() - start
    times = []
    with CarbonTracker() as tracker:
        for _ in range(repeats):
            start = time.perf_counter()
            tokens = run()
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    footprint = tracker.result()
    result = {
        "model": model,
        "overrides": overrides or {},
        "dtype": dtype,
        "batch": batch,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "seconds": seconds,
        "times_s": times,
        "tokens_per_s": batch * new_tokens / seconds,
        "first_call_s": first_s,  # compile + one run
        "energy_kwh": footprint["energy_kwh"],
        "emissions_kg_co2eq": footprint["emissions_kg_co2eq"],
        "carbon": footprint,
    }
    if reference == "torch":
        from train.benchmark_torch import decode_benchmark as torch_decode

        ref = torch_decode(
            cfg.replace(dtype="float32"),
            prompt,
            new_tokens,
            params=params,
            repeats=repeats,
            device=_torch_device(),
        )
        theirs = ref.pop("tokens")
        ref["token_agreement"] = float(np.mean(theirs == tokens))  # same weights, both greedy
        result["reference"] = ref
        result["speedup_vs_reference"] = result["tokens_per_s"] / ref["tokens_per_s"]
    return result


class SuiteError(UserError):
    """A standard suite asked for on a machine it is not sized for."""


def suite_dir(name: str) -> Path:
    """Where a suite's report lives: docs/benchmarks/ for cpu, docs/benchmarks/NAME/ otherwise."""
    return DOCS if name == "cpu" else DOCS / name


def run_suite(name: str, out_dir: Path | None = None, *, reference: str | None = "torch") -> dict:
    """Runs a standard suite and writes results.json, README.md and PNG plots to `out_dir`
    (`suite_dir(name)` by default), rewriting them after every row so that an interrupted run
    keeps what it measured."""
    suite = SUITES[name]
    needs, backend = suite.get("platform"), jax.default_backend()
    if needs and needs != backend:
        raise SuiteError(
            f"suite {name!r} is sized for one {needs.upper()} but JAX runs on {backend}; "
            f"run it on a {needs.upper()} machine, or use --suite cpu here"
        )
    out_dir = suite_dir(name) if out_dir is None else Path(out_dir)
    results = {
        "suite": name,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": f"python -m train.benchmark --suite {name}",
        "environment": environment(),
        "train": [],
        "decode": [],
    }
    for model, batch, seq, target in suite["train"]:
        for dtype in suite["dtypes"]:
            skip = _reference_skipped(reference, dtype, backend)
            r = benchmark(
                model,
                batch,
                seq,
                target_seq=target,
                steps=suite["steps"],
                warmup=suite["warmup"],
                rounds=suite.get("rounds", 1),
                dtype=dtype,
                reference=None if skip else reference,
            )
            r.pop("environment")
            if skip:
                r["reference_skipped"] = skip
                if skip not in results.setdefault("notes", []):
                    results["notes"].append(skip)
            results["train"].append(r)
            print(_train_line(r), flush=True)
            write_report(results, out_dir)
    d = suite["decode"]
    for batch in d["batches"]:
        r = decode_benchmark(
            d["model"],
            batch,
            prompt_len=d["prompt_len"],
            new_tokens=d["new_tokens"],
            dtype=d.get("dtype", "f32"),
            reference=reference,
        )
        results["decode"].append(r)
        print(_decode_line(r), flush=True)
        write_report(results, out_dir)
    results["environment"]["load_average_end"] = os.getloadavg()
    write_report(results, out_dir)
    return results


def cpu_has_bf16_instructions() -> bool:
    """Whether this x86 CPU multiplies bf16 natively (AVX-512 BF16 or AMX), from /proc/cpuinfo."""
    return bool({"avx512_bf16", "amx_bf16"} & set((_cpuinfo("flags") or "").split()))


def _reference_skipped(reference: str | None, dtype: str, backend: str) -> str | None:
    """Why a suite row leaves out the PyTorch reference, or None when it times it."""
    if reference == "torch" and dtype == "bf16" and backend == "cpu":
        if not cpu_has_bf16_instructions():
            return (
                "PyTorch bf16 not timed: this CPU has no bf16 instructions (avx512_bf16, "
                "amx_bf16), and PyTorch's autocast backward then runs on one core; on a 2-core "
                "EPYC one gpt2 bf16 row did not finish in 34 minutes (cpu-profile.md)."
            )
    return None


def write_report(results: dict, out_dir: Path) -> None:
    """results.json, README.md (tables + environment) and train.png / decode.png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=_jsonable))
    (out_dir / "README.md").write_text(render_markdown(results))
    _plot(results, out_dir)


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def _fmt(x, spec: str, empty: str = "-") -> str:
    return empty if x is None else format(x, spec)


def render_markdown(results: dict) -> str:
    env = results["environment"]
    notes = SUITES.get(results["suite"], {}).get("notes")
    lines = [
        f"# Benchmarks: suite `{results['suite']}`",
        "",
        f"Generated by `{results['command']}` on {results['date']}; raw numbers in "
        "[results.json](results.json). Do not edit by hand.",
        "",
        "Training: the real jitted train step (forward, backward, AdamW), synthetic tokens, each "
        "step launched while the previous one runs on a GPU or TPU (as in training) and waited "
        "for on a CPU, median of the timed steps "
        "(min-max in brackets). PyTorch, timed the same way: the Hugging Face class of the same "
        "shape, random init, fused AdamW, f32 or `torch.autocast(bfloat16)` with f32 weights, in "
        "the same process and on the same device, right before ours, or alternating with ours "
        "in rounds where a row gives a range after its ratio: the ratio is then the median of the "
        "rounds' ratios (each PyTorch's median step time in the round over ours), the range "
        "theirs. MFU = analytic FLOPs "
        "(train/flops.py, causal attention at half) / step time / peak, the peak being the "
        "published dense figure on a GPU or TPU and a 2048^3 matmul measured here on a CPU "
        "(f32, or bf16 inputs with f32 accumulation); see the last lines. Energy: train/carbon.py "
        "over the timed steps (see docs/carbon.md)."
        + (f" Analysis: [{notes}]({notes})." if notes else ""),
        "",
        "| model | batch x seq | dtype | ours tokens/s | PyTorch tokens/s | ours / PyTorch | MFU "
        "| compile s | peak memory GiB | energy Wh | g CO2eq |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["train"]:
        ref = r.get("reference") or {}
        shape = f"{r['batch']} x {r['seq']}" + (
            f" -> {r['target_seq']}" if r.get("target_seq") else ""
        )
        spread = r["step_time_spread_s"]
        no_ref = "not timed" if r.get("reference_skipped") else "-"
        lo, hi = r["tokens_per_step"] / spread[1], r["tokens_per_step"] / spread[0]
        ratio = _fmt(r.get("speedup_vs_reference"), ".2f")
        if r.get("speedup_per_round"):
            per = r["speedup_per_round"]
            ratio += f" [{min(per):.2f}-{max(per):.2f}]"
        lines.append(
            f"| {r['model']} | {shape} | {r['dtype']} | {r['tokens_per_s']:,.0f} "
            f"[{lo:,.0f}-{hi:,.0f}] | {_fmt(ref.get('tokens_per_s'), ',.0f', no_ref)} | "
            f"{ratio} | {r['mfu']:.1%} | {r['compile_s']:.1f} | "
            f"{_fmt(_gib(r['peak_memory_bytes']), '.2f')} | "
            f"{_fmt(_scale(r['energy_kwh'], 1e3), '.3f')} | "
            f"{_fmt(_scale(r['emissions_kg_co2eq'], 1e3), '.3f')} |"
        )
    if results.get("decode"):
        lines += [
            "",
            "Decoding: greedy, KV cache, EOS suppressed so that every row makes all its tokens; "
            "ours is train/decode.generate (one jitted scan), PyTorch is `generate(do_sample="
            "False, use_cache=True)` on the same weights (agreement = fraction of equal tokens).",
            "",
            "| model | batch | prompt + new | dtype | ours tokens/s | PyTorch tokens/s "
            "| ours / PyTorch | agreement | ours first call s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in results["decode"]:
            ref = r.get("reference") or {}
            lines.append(
                f"| {r['model']} | {r['batch']} | {r['prompt_len']} + {r['new_tokens']} | "
                f"{r['dtype']} | {r['tokens_per_s']:,.1f} | {_fmt(ref.get('tokens_per_s'), ',.1f')}"
                f" | {_fmt(r.get('speedup_vs_reference'), '.2f')} | "
                f"{_fmt(ref.get('token_agreement'), '.0%')} | {r['first_call_s']:.1f} |"
            )
    lines += ["", "![training throughput](train.png)", ""]
    if results.get("decode"):
        lines += ["![decoding throughput](decode.png)", ""]
    lines += ["## Environment", "", "| key | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in env.items()]
    peaks = {r["dtype"]: (r["peak_flops"], r["peak_source"]) for r in results["train"]}
    lines += [""] + [
        f"Peak {dtype}: {p / 1e9:,.0f} GFLOP/s ({src})." for dtype, (p, src) in peaks.items()
    ]
    lines += [f"\n{note}" for note in results.get("notes", [])]
    return "\n".join(lines) + "\n"


def _gib(x):
    return None if x is None else x / 2**30


def _scale(x, factor):
    return None if x is None else x * factor


def _plot(results: dict, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def bars(rows, labels, path, title, ylabel):
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4))
        x = np.arange(len(rows))
        ours = [r["tokens_per_s"] for r in rows]
        theirs = [(r.get("reference") or {}).get("tokens_per_s", 0.0) for r in rows]
        ax.bar(x - 0.2, ours, 0.4, label="Triptych (JAX)")
        if any(theirs):
            ax.bar(x + 0.2, theirs, 0.4, label="Hugging Face PyTorch")
        ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    env = results["environment"]
    if env["platform"] == "cpu":
        where = f"{env['cpu_count']}x cpu ({env.get('cpu_model') or env['device_kind']})"
    else:
        where = f"{env['device_count']}x {env['device_kind']}"
    train = results["train"]
    bars(
        train,
        [f"{r['model']}\n{r['batch']}x{r['seq']} {r['dtype']}" for r in train],
        out_dir / "train.png",
        f"Training step throughput, {where}",
        "tokens/s",
    )
    if results.get("decode"):
        dec = results["decode"]
        bars(
            dec,
            [f"{r['model']} batch {r['batch']}\n{r['prompt_len']}+{r['new_tokens']}" for r in dec],
            out_dir / "decode.png",
            f"Greedy decoding with KV cache, {where}",
            "new tokens/s",
        )


def _train_line(r: dict) -> str:
    mem = r["peak_memory_bytes"]
    line = (
        f"{r['model']} batch {r['batch']} seq {r['seq']} {r['dtype']} on "
        f"{jax.device_count()}x {jax.devices()[0].device_kind}: "
        f"{r['step_time_s'] * 1e3:.1f} ms/step, {r['tokens_per_s']:,.0f} tokens/s, "
        f"{r['tflops_per_s']:.3f} TFLOP/s, MFU {r['mfu']:.1%} "
        f"(peak {r['peak_flops'] / 1e12:.3f} TFLOP/s, {r['peak_source']}), "
        f"compile {r['compile_s']:.1f}s" + (f", peak memory {mem / 2**30:.2f} GiB" if mem else "")
    )
    if r.get("phases_s"):
        line += (
            f", {sum(r['phases_s'].values()):.0f} s in all ("
            + ", ".join(f"{k} {v:.1f}" for k, v in r["phases_s"].items())
            + ")"
        )
    if r.get("energy_kwh") is not None:
        line += (
            f", {r['energy_kwh'] * 1e3:.4f} Wh / {r['emissions_kg_co2eq'] * 1e3:.4f} g CO2eq "
            f"({r['carbon']['method']})"
        )
    if "reference" in r:
        line += (
            f"; PyTorch {r['reference']['tokens_per_s']:,.0f} tokens/s "
            f"-> ours/PyTorch {r['speedup_vs_reference']:.2f}x"
        )
        if r.get("speedup_per_round"):
            line += " (rounds: " + ", ".join(f"{x:.2f}" for x in r["speedup_per_round"]) + ")"
    return line


def _decode_line(r: dict) -> str:
    line = (
        f"decode {r['model']} batch {r['batch']} prompt {r['prompt_len']} + {r['new_tokens']} "
        f"new ({r['dtype']}): {r['seconds']:.2f}s, {r['tokens_per_s']:,.1f} tokens/s"
    )
    if "reference" in r:
        ref = r["reference"]
        line += (
            f"; PyTorch generate {ref['seconds']:.2f}s, {ref['tokens_per_s']:,.1f} tokens/s -> "
            f"ours/PyTorch {r['speedup_vs_reference']:.2f}x (agreement "
            f"{ref['token_agreement']:.0%})"
        )
    return line


def _override(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    if not key or not _:
        raise argparse.ArgumentTypeError(f"--set takes FIELD=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


@one_line_errors
def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m train.benchmark", description=__doc__.split("\n")[0])
    p.add_argument("--suite", choices=sorted(SUITES), help="run a standard suite, write docs")
    p.add_argument(
        "--out",
        default=None,
        help="suite output directory (default docs/benchmarks/ for cpu, docs/benchmarks/NAME/)",
    )
    p.add_argument("--model")
    p.add_argument("--batch", type=int)
    p.add_argument("--seq", type=int)
    p.add_argument("--target-seq", type=int, default=None, help="decoder length (enc-dec)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--dtype", choices=("f32", "bf16"), default="bf16")
    p.add_argument("--kernel", default="auto", help="attention kernel (models/attention.py)")
    p.add_argument("--remat", default="none")
    p.add_argument("--scan-layers", action="store_true")
    p.add_argument(
        "--set",
        type=_override,
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="ModelConfig override, e.g. --set num_layers=2 (repeatable)",
    )
    p.add_argument("--reference", choices=("torch",), default=None, help="also time PyTorch")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with --reference: alternate --steps of ours and of PyTorch this many times",
    )
    p.add_argument(
        "--decode",
        action="store_true",
        help="also time greedy cached decoding at batch 1 and 16 (--prompt-len, --new-tokens)",
    )
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--country", default=None, help="carbon.country_iso_code (default USA)")
    p.add_argument("--json", default=None, help="write the result here")
    p.add_argument(
        "--profile", default=None, metavar="DIR", help="profile one more step: trace + top ops"
    )
    args = p.parse_args(argv)
    if args.steps < 1 or args.rounds < 1:
        p.error(f"--steps and --rounds must be at least 1 (got {args.steps} and {args.rounds})")
    if args.suite or args.reference:
        # PyTorch shares the GPU: JAX takes memory as it needs it rather than 75% at start
        # (no effect once JAX has started, as when main() is called from a test).
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if args.suite:
        # and no more than half of it: a suite runs PyTorch after ours from the second row on,
        # and JAX's allocator keeps what an earlier row took
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
    carbon = {"country_iso_code": args.country} if args.country else None
    if args.suite:
        run_suite(args.suite, args.out, reference=args.reference or "torch")
        return 0
    if args.model is None or args.batch is None or args.seq is None:
        p.error("--model, --batch and --seq are required without --suite")
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
        overrides=dict(args.set),
        reference=args.reference,
        carbon=carbon,
        profile=args.profile,
        rounds=args.rounds,
    )
    print(_train_line(result), flush=True)
    for op in result.get("profile", {}).get("top_ops", []):
        print(f"{op['ms']:9.1f} ms {op['calls']:4d}x  {op['op']:34s} {op['source'] or ''}")
    if args.decode:
        result["decode"] = []
        for batch in (1, 16):
            r = decode_benchmark(
                args.model,
                batch,
                prompt_len=args.prompt_len,
                new_tokens=args.new_tokens,
                overrides=dict(args.set),
                reference=args.reference,
            )
            result["decode"].append(r)
            print(_decode_line(r), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=_jsonable)
    return 0


if __name__ == "__main__":
    allocator.reexec_with_tcmalloc()  # XLA:CPU steps without page faults (train/allocator.py)
    sys.exit(main())
