"""The one chip table: every row is complete and found by its device kinds, and the loop, the
benchmark, the planner and carbon accounting all read it."""

import jax
import pytest

from train import hardware
from train.hardware import CHIPS, chip_of


@pytest.mark.parametrize("key", sorted(CHIPS))
def test_every_chip_is_complete_and_found_by_its_device_kinds(key):
    chip = CHIPS[key]
    assert chip.peak_bf16 >= chip.peak_f32 > 0
    assert chip.hbm_bytes > 1e9 and chip.hbm_bandwidth > 1e11 and chip.link_bandwidth > 1e10
    assert chip.device_kinds
    for kind in chip.device_kinds:
        assert chip_of(kind) is chip
        assert chip_of(f"NVIDIA {kind} 80GB HBM3") is chip  # device_kind strings carry more


def test_device_kinds_as_jax_reports_them():
    assert chip_of("NVIDIA H100 80GB HBM3") is CHIPS["h100"]
    assert chip_of("NVIDIA H200") is CHIPS["h200"]
    assert chip_of("NVIDIA A100-SXM4-80GB") is CHIPS["a100"]
    assert chip_of("TPU v5 lite") is CHIPS["v5e"] and chip_of("TPU v5p") is CHIPS["v5p"]
    assert chip_of("TPU v6 lite") is CHIPS["v6e"] and chip_of("TPU v4") is CHIPS["v4"]
    assert chip_of("cpu") is None and chip_of("NVIDIA GeForce RTX 4090") is None


def test_peaks_by_compute_dtype():
    h100 = CHIPS["h100"]
    assert h100.peak("bf16") == h100.peak("bfloat16") == h100.peak("float16") == 989.4e12
    assert h100.peak("f32") == h100.peak("float32") == 494.7e12


def test_the_loop_benchmark_planner_and_carbon_read_the_one_table():
    from launch import plan
    from train import benchmark, carbon, loop

    assert plan.CHIPS is CHIPS
    assert benchmark.device_peak is hardware.device_peak is loop.device_peak
    tracker = carbon.CarbonTracker({"enabled": False})
    tracker._chips = 4
    tracker._kind = "TPU v4"  # the table's published TDP
    assert tracker._tpu(3600)["chip_tdp_w"] == CHIPS["v4"].tdp_w == 192.0
    tracker._kind = "TPU v5 lite"  # a row without one: the labelled assumption
    assert "assumed" in tracker._tpu(3600)["notes"]


def test_cpu_peak_is_measured_for_the_compute_dtype():
    assert jax.devices()[0].platform == "cpu"
    peak, source = hardware.device_peak("bfloat16")
    assert peak > 0 and source.startswith("measured bf16")
    peak32, source32 = hardware.device_peak("float32")
    assert peak32 > 0 and source32.startswith("measured f32")
