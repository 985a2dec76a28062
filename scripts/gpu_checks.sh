#!/bin/bash
# The checks that need one NVIDIA GPU, in one run of at most 9.5 minutes (a device session here
# has 15 minutes in all, the machine's start included; on an H100 the tests took 47 s and the
# suite just over 420 s):
#   1. the cuDNN attention tests (skipped on CPUs): values, gradients, the causal flag, padding;
#   2. `python -m train.benchmark --suite gpu` (the table in docs/benchmarks/gpu/, with PyTorch);
#   3. with XLA=1: gpt2-medium (16 x 1024, bf16) with XLA's attention instead of cuDNN's;
#   4. with PROFILE=1: one profiled gpt2-medium step (the kernels that took longest);
#   5. with FLAGS=1: gpt2-medium with XLA's cuDNN LayerNorm, then with cuBLASLt GEMM epilogues
#      (flags not yet measured here), and once without either as the baseline;
#   6. with REAL=1: gpt2 16 x 1024 fed by its real input pipeline (the bundled corpus, or
#      DATA_FILES=a text file) with 0 and with 8 data workers, next to synthetic tokens
#      (`python -m train.benchmark --data real`: the data-stall share, docs/benchmarks/input.md).
#   7. with FP8=1: gpt2-medium (16 x 1024) and a Llama-style 1B (Llama 3.2 1B's widths, 8 x 2048)
#      in bf16 and with model.fp8 side by side (OUT/fp8-*.json; docs/scaling.md "fp8 matmuls").
# SUITE=0 or TESTS=0 leave those parts out (e.g. `SUITE=0 TESTS=0 FLAGS=1`). The suite times
# PyTorch eager and under torch.compile (REFERENCE=torch,torch-compile; REFERENCE=torch leaves
# the compiled runs out when time is short: each compiles its model once, a minute or more). Each gpt2-medium
# run took 75-110 s of wall time on an H100 in session 9 (18-27 s of it compile); the result's
# phases_s says where the rest goes.
#
#   bash scripts/gpu_checks.sh [OUT]       # OUT: where logs and the suite go (default gpu-checks/)
#
# Run from the repository root with the project installed (pip install -e '.[test,hf]' and a CUDA
# jax: pip install -U 'jax[cuda12]'). Each part has its own time limit, so that a hang in one
# still leaves the others' results (the suite rewrites its report after every row); the elapsed
# time is printed before each. Copy OUT/gpu/ over docs/benchmarks/gpu/ to publish the suite.
set -u
OUT=${1:-${OUT:-gpu-checks}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=cuda PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
T0=$(date +%s)
step() { echo "[+$(($(date +%s) - T0))s] $*"; }

nvidia-smi --query-gpu=name,memory.total,driver_version,power.limit,clocks.max.sm \
  --format=csv,noheader >"$OUT/gpu.txt" || { step "no NVIDIA GPU here"; exit 3; }
cat "$OUT/gpu.txt"

if [ "${TESTS:-1}" != 0 ]; then
  step "cuDNN attention tests"
  timeout 90 python -m pytest -q -p no:cacheprovider tests/test_attention.py \
    -k "cudnn or causal_flag or do_not_depend" 2>&1 | tail -25 | tee "$OUT/pytest.log"
fi
if [ "${SUITE:-1}" != 0 ]; then
  step "suite gpu"
  timeout 470 python -m train.benchmark --suite gpu --out "$OUT/gpu" \
    --reference "${REFERENCE:-torch,torch-compile}" >"$OUT/suite.log" 2>&1
  grep -v '^\s*$\|^  ' "$OUT/suite.log" | tail -20
fi

if [ -n "${XLA:-}" ]; then
  step "gpt2-medium with XLA attention"
  timeout 120 python -m train.benchmark --model gpt2-medium --batch 16 --seq 1024 --steps 10 \
    --warmup 2 --kernel xla 2>&1 | tail -3 | tee "$OUT/xla-attention.log"
fi
if [ -n "${PROFILE:-}" ]; then
  step "profile gpt2-medium"
  timeout 120 python -m train.benchmark --model gpt2-medium --batch 16 --seq 1024 --steps 5 \
    --warmup 2 --profile /tmp/triptych-gpu-profile --json "$OUT/profile.json" 2>&1 | tail -24 |
    tee "$OUT/profile.log"
fi
if [ -n "${FLAGS:-}" ]; then
  i=0
  for flags in "" --xla_gpu_enable_cudnn_layer_norm=true --xla_gpu_enable_cublaslt=true; do
    step "gpt2-medium with XLA_FLAGS='$flags' (OUT/flags-$i.json)"
    XLA_FLAGS="$flags" timeout 130 python -m train.benchmark --model gpt2-medium --batch 16 \
      --seq 1024 --steps 10 --warmup 2 --json "$OUT/flags-$i.json" 2>&1 |
      tail -2 | tee -a "$OUT/flags.log"
    i=$((i + 1))
  done
fi
if [ -n "${REAL:-}" ]; then
  files=${DATA_FILES:+--config.data.files=$DATA_FILES}
  for workers in 0 8; do
    step "gpt2 16 x 1024 on its real pipeline, $workers workers (OUT/real-$workers.json)"
    timeout 150 python -m train.benchmark --data real --config configs/gpt_lm.py:gpt2 $files \
      --config.batch_size=16 --config.seq_len=1024 --config.data.workers=$workers --steps 20 \
      --rounds 2 --json "$OUT/real-$workers.json" 2>&1 | tail -1 | tee -a "$OUT/real.log"
  done
fi
if [ -n "${FP8:-}" ]; then
  llama_1b="--set d_model=2048 --set num_layers=16 --set num_heads=32 --set num_kv_heads=8"
  llama_1b="$llama_1b --set d_ff=8192 --set tie_embeddings=True"
  for run in "gpt2-medium --batch 16 --seq 1024" "llama3-8b --batch 8 --seq 2048 $llama_1b"; do
    for fp8 in False True; do
      name="fp8-${run%% *}-$fp8"
      step "$run, fp8=$fp8 (OUT/$name.json)"
      # shellcheck disable=SC2086
      timeout 150 python -m train.benchmark --model $run --steps 10 --warmup 2 \
        --scan-layers --set fp8=$fp8 --json "$OUT/$name.json" 2>&1 | tail -1 | tee -a "$OUT/fp8.log"
    done
  done
fi
step "done"
