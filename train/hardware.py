"""The accelerators Triptych knows: one table of published per-chip figures, read by the training
loop and the benchmark (MFU), the planner (memory and roofline) and carbon accounting (TDP).

Adding a chip is one `Chip` row here (and its line in tests/test_hardware.py). A device JAX
reports is matched to its row by `device_kinds`, substrings of `jax.Device.device_kind`
("NVIDIA H100 80GB HBM3", "TPU v5 lite", ...); a CPU, or a chip not in the table, has its peak
measured instead (`measured_matmul_peak`).
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp

from models.errors import UserError


@dataclasses.dataclass(frozen=True)
class Chip:
    """Published dense (no sparsity) figures of one accelerator chip.

    Attributes:
      name: the product, as the datasheet names it.
      device_kinds: substrings of `jax.Device.device_kind` that identify it.
      peak_bf16: FLOP/s with bf16 inputs.
      peak_f32: FLOP/s of float32 matmuls as XLA runs them (TF32 on NVIDIA GPUs; TPUs run
        float32 matmuls as bf16 passes by default).
      hbm_bytes: memory per chip.
      hbm_bandwidth: bytes/s.
      link_bandwidth: bytes/s per chip, one direction (NVLink / ICI).
      tdp_w: thermal design power in watts, where the vendor publishes one for the chip alone:
        the power of the ML CO2 Impact estimate (`python -m train.carbon`), and of TPU runs,
        whose power codecarbon cannot read (NVIDIA GPUs are measured through NVML).
    """

    name: str
    device_kinds: tuple[str, ...]
    peak_bf16: float
    peak_f32: float
    hbm_bytes: float
    hbm_bandwidth: float
    link_bandwidth: float
    tdp_w: float | None = None

    def peak(self, dtype: str) -> float:
        """The dense peak for a compute dtype ("bf16", "bfloat16", "float16", "f32", ...)."""
        return self.peak_bf16 if is_16bit(dtype) else self.peak_f32


# Keys are the planner's `--chip` names.
CHIPS = {
    # NVIDIA H100 SXM5 datasheet: 989.4 TFLOP/s BF16 and 494.7 TFLOP/s TF32 dense (half the
    # "with sparsity" numbers), 80 GB HBM3 at 3.35 TB/s, NVLink 4 900 GB/s bidirectional.
    # https://www.nvidia.com/en-us/data-center/h100/ (max TDP "up to 700 W" for the SXM part)
    "h100": Chip(
        "NVIDIA H100 SXM 80GB", ("H100",), 989.4e12, 494.7e12, 80e9, 3.35e12, 450e9, 700.0
    ),
    # NVIDIA H200 SXM datasheet: same compute as H100, 141 GB HBM3e at 4.8 TB/s, NVLink 900 GB/s,
    # max TDP up to 700 W. https://www.nvidia.com/en-us/data-center/h200/
    "h200": Chip(
        "NVIDIA H200 SXM 141GB", ("H200",), 989.4e12, 494.7e12, 141e9, 4.8e12, 450e9, 700.0
    ),
    # NVIDIA A100 SXM 80GB datasheet: 312 TFLOP/s BF16, 156 TFLOP/s TF32, 2,039 GB/s HBM2e,
    # NVLink 3 600 GB/s bidirectional, max TDP 400 W. https://www.nvidia.com/en-us/data-center/a100/
    "a100": Chip("NVIDIA A100 SXM 80GB", ("A100",), 312e12, 156e12, 80e9, 2.039e12, 300e9, 400.0),
    # Cloud TPU v4: 275 TFLOP/s bf16, 32 GiB HBM2 at 1,200 GB/s; ICI ~2,400 Gbps per chip.
    # https://cloud.google.com/tpu/docs/v4. Power 192 W maximum (mean 170 W): Jouppi et al.,
    # "TPU v4: An Optically Reconfigurable Supercomputer" (ISCA 2023); Google publishes none for
    # later generations.
    "v4": Chip("Cloud TPU v4", ("TPU v4",), 275e12, 275e12, 32 * 2**30, 1.2e12, 150e9, 192.0),
    # Cloud TPU v5e: 197 TFLOP/s bf16, 16 GB HBM2 at 819 GB/s, ICI 1,600 Gbps per chip.
    # https://cloud.google.com/tpu/docs/v5e
    "v5e": Chip("Cloud TPU v5e", ("TPU v5 lite", "TPU v5e"), 197e12, 197e12, 16e9, 819e9, 100e9),
    # Cloud TPU v5p: 459 TFLOP/s bf16, 95 GB HBM2e at 2,765 GB/s, ICI 1,200 GB/s bidirectional.
    # https://cloud.google.com/tpu/docs/v5p
    "v5p": Chip("Cloud TPU v5p", ("TPU v5p",), 459e12, 459e12, 95e9, 2.765e12, 600e9),
    # Cloud TPU v6e (Trillium): 918 TFLOP/s bf16, 32 GB HBM at 1,640 GB/s, ICI 3,584 Gbps.
    # https://cloud.google.com/tpu/docs/v6e
    "v6e": Chip("Cloud TPU v6e", ("TPU v6 lite", "TPU v6e"), 918e12, 918e12, 32e9, 1.64e12, 224e9),
}


def is_16bit(dtype: str) -> bool:
    return dtype in ("bf16", "bfloat16", "f16", "float16")


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a compute dtype (2 for the 16-bit ones, else 4)."""
    return 2 if is_16bit(dtype) else 4


def chip_of(device_kind: str) -> Chip | None:
    """The table's row for a `jax.Device.device_kind`, or None (a CPU, an unknown chip)."""
    kind = device_kind.lower()
    for chip in CHIPS.values():
        if any(k.lower() in kind for k in chip.device_kinds):
            return chip
    return None


@functools.cache
def measured_matmul_peak(dtype: str, n: int = 2048, reps: int = 5) -> float:
    """Best-of-`reps` FLOP/s of an n x n x n matmul on the default device (f32 accumulation)."""
    in_dtype = jnp.bfloat16 if is_16bit(dtype) else jnp.float32
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
    """(peak FLOP/s of all devices for compute `dtype`, where the figure came from)."""
    kind = jax.devices()[0].device_kind
    chip = chip_of(kind)
    if chip is not None:
        return chip.peak(dtype) * jax.device_count(), f"published ({kind})"
    label = "bf16" if is_16bit(dtype) else "f32"
    peak = measured_matmul_peak(label) * jax.device_count()
    return peak, f"measured {label} 2048^3 matmul ({kind})"


# fp8 tensor cores (cuBLASLt's fp8 GEMMs, which XLA rewrites flax's fp8 dots into): Ada (8.9),
# Hopper (9.0) and later.
FP8_MIN_CAPABILITY = (8, 9)


class Fp8Error(UserError):
    """model.fp8 on a device whose matmuls cannot take fp8 inputs."""


def check_fp8(dtype: str, device=None) -> None:
    """Refuses training with `model.fp8` where flax's fp8 matmuls cannot run: compute `dtype`
    float16, or a GPU below compute capability 8.9 (no fp8 tensor cores) or a TPU (the op's
    e4m3fn/e5m2 dots are NVIDIA's fp8 GEMMs). On a CPU they are emulated: slow, but the same
    numbers, for tests. (Inference has no fp8 state and runs in `dtype` anywhere.)"""
    if dtype == "float16":  # flax casts each scale to the compute dtype before dividing by it
        raise Fp8Error(
            "model.fp8 with model.dtype=float16: float16 cannot hold fp8's scaling factors "
            "(amax/57344 underflows to 0 and the gradients turn NaN); set model.dtype=bfloat16 "
            "or float32"
        )
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        return
    fix = "run without --config.model.fp8 (model.dtype=bfloat16 is the fast path there)"
    where = f"{device.device_kind} ({device.platform})"
    if device.platform in ("gpu", "cuda"):
        capability = str(getattr(device, "compute_capability", ""))
        try:
            version = tuple(int(p) for p in capability.split("."))
        except ValueError:
            version = ()
        if version >= FP8_MIN_CAPABILITY:
            return
        where = f"{device.device_kind} (compute capability {capability or 'unknown'})"
    raise Fp8Error(
        f"model.fp8 needs fp8 matmuls: an NVIDIA GPU of compute capability 8.9 or later "
        f"(Ada, Hopper) or a CPU (emulated), not {where}; {fix}"
    )
