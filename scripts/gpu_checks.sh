#!/bin/bash
# The checks that need one NVIDIA GPU, in one run of about 10 minutes:
#   1. the cuDNN attention tests (skipped on CPUs): values, gradients, the causal flag, padding;
#   2. `python -m train.benchmark --suite gpu` (the table in docs/benchmarks/gpu/, with PyTorch);
#   3. one profiled gpt2-medium step (16 x 1024, bf16): the kernels that took longest;
#   4. the same step with XLA's attention instead of cuDNN's.
#
#   bash scripts/gpu_checks.sh [OUT]       # OUT: where logs and the suite go (default gpu-checks/)
#
# Run from the repository root with the project installed (pip install -e '.[test,hf]' and a CUDA
# jax: pip install -U 'jax[cuda12]'). Each part has its own time limit, so that a hang in one
# still leaves the others' results; the elapsed time is printed before each. Copy OUT/gpu/ over
# docs/benchmarks/gpu/ to publish the suite.
set -u
OUT=${1:-${OUT:-gpu-checks}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=cuda PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
T0=$(date +%s)
step() { echo "[+$(($(date +%s) - T0))s] $*"; }

nvidia-smi --query-gpu=name,memory.total,driver_version,power.limit,clocks.max.sm \
  --format=csv,noheader | tee "$OUT/gpu.txt"
step "versions"
timeout 60 python -c "import jax, flax, torch, transformers; print('jax', jax.__version__, \
'flax', flax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__); \
print(jax.devices())" | tee -a "$OUT/gpu.txt" || { step "JAX does not see a GPU"; exit 3; }

step "cuDNN attention tests"
timeout 180 python -m pytest -q -p no:cacheprovider tests/test_attention.py \
  -k "cudnn or causal_flag or do_not_depend" 2>&1 | tail -25 | tee "$OUT/pytest.log"

step "suite gpu"
timeout 360 python -m train.benchmark --suite gpu --out "$OUT/gpu" 2>&1 | grep -v "^\s*$" |
  tail -40 | tee "$OUT/suite.log"

step "profile gpt2-medium"
timeout 120 python -m train.benchmark --model gpt2-medium --batch 16 --seq 1024 --steps 5 \
  --warmup 2 --profile /tmp/triptych-gpu-profile --json "$OUT/profile.json" 2>&1 | tail -24 |
  tee "$OUT/profile.log"

step "gpt2-medium with XLA attention"
timeout 90 python -m train.benchmark --model gpt2-medium --batch 16 --seq 1024 --steps 5 \
  --warmup 2 --kernel xla 2>&1 | tail -3 | tee -a "$OUT/profile.log"
step "done"
