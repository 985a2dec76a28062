"""The machine a benchmark ran on: versions, device, flags, and what its CPU can do."""

from __future__ import annotations

import os
import platform

import jax
import optax

from train import allocator


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
        "cpu_model": cpu_model(),
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


def cpu_model() -> str | None:
    """The CPU's model name (/proc/cpuinfo on Linux, else `platform`), or None."""
    return _cpuinfo("model name") or platform.processor() or None


def cpu_has_bf16_instructions() -> bool:
    """Whether this x86 CPU multiplies bf16 natively (AVX-512 BF16 or AMX), from /proc/cpuinfo."""
    return bool({"avx512_bf16", "amx_bf16"} & set((_cpuinfo("flags") or "").split()))
