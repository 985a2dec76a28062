"""Training and decoding benchmarks: tokens/s, MFU, compile time, peak memory, energy and CO2,
optionally side by side with the Hugging Face PyTorch model of the same shape.

    python -m train.benchmark --model gpt2 --batch 8 --seq 256 --steps 10 --dtype bf16 \\
        [--reference torch|torch-compile|torch,torch-compile [--rounds R]] [--decode] \\
        [--data real --config CONFIG [--config.KEY=VALUE ...]] [--json out.json]
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
times cached greedy generation (train/decode.py) against transformers' `generate`.
`--reference torch-compile` times PyTorch under `torch.compile` (its first warm-up step
compiles), the way nanoGPT-style users run it; `torch,torch-compile` times both, and the suites
do. With PyTorch in the same process on a GPU, JAX allocates as it goes
(XLA_PYTHON_CLIENT_PREALLOCATE=false) instead of taking most of the memory up front, and in a
suite takes at most half of it (XLA_PYTHON_CLIENT_MEM_FRACTION=0.5).

The package, module by module:

    machine.py      environment(): versions, device, flags, the CPU's bf16 instructions
    timing.py       benchmark() and decode_benchmark(): the phases of a run and its result dict
    trace.py        profile_ops(): the slowest XLA ops of a profiled step's trace
    specs.py        SUITES: the standard suites' rows
    suites.py       run_suite(): a standard suite's run and its report's location
    report.py       results.json, README.md and the plots of a suite; the printed summaries
    cli.py          the flags and main(); __main__.py restarts under tcmalloc, then runs it
"""

from train.benchmark.cli import main
from train.benchmark.machine import cpu_has_bf16_instructions, environment
from train.benchmark.report import render_markdown, write_report
from train.benchmark.suites import DOCS, SUITES, SuiteError, run_suite, suite_dir
from train.benchmark.timing import (
    SETTLED_FAULTS,
    WARMUP_TRIES,
    benchmark,
    benchmark_config,
    decode_benchmark,
    device_peak,  # train/hardware.py's, the one table of peaks the loop and the planner read
)
from train.benchmark.trace import profile_ops

__all__ = [
    "DOCS",
    "SETTLED_FAULTS",
    "SUITES",
    "WARMUP_TRIES",
    "SuiteError",
    "benchmark",
    "benchmark_config",
    "cpu_has_bf16_instructions",
    "decode_benchmark",
    "device_peak",
    "environment",
    "main",
    "profile_ops",
    "render_markdown",
    "run_suite",
    "suite_dir",
    "write_report",
]
