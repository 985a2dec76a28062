"""Test setup: 8 simulated CPU devices (before JAX starts), the `hf` marker's skip, helpers."""

import importlib.util
import os

import pytest

# LLVM at -O0: the suite is dominated by compiling tiny models, which this makes about 40% faster.
# XLA's own HLO passes, and so the compiled program's structure, are unchanged.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def pytest_collection_modifyitems(config, items):
    """Tests marked `hf` need torch and transformers (the [hf] extra): without them they are
    skipped, with the reason, rather than each test guarding its own imports."""
    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        skip = pytest.mark.skip(reason=f"needs {' and '.join(missing)}: pip install -e '.[hf]'")
        for item in items:
            if "hf" in item.keywords:
                item.add_marker(skip)
