"""Test setup: 8 simulated CPU devices (before JAX starts) and shared helpers."""

import os

# LLVM at -O0: the suite is dominated by compiling tiny models, which this makes about 40% faster
# (XLA's own HLO passes, and so the numerics and the compiled program's structure, are unchanged).
os.environ.setdefault(
    "XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
