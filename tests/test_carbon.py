"""Energy and CO2 accounting (train/carbon.py): offline codecarbon figures and the TPU estimate."""

import math
import time

import pytest

from train.carbon import CarbonTracker, grid_intensity_kg_per_kwh, tpu_estimate

pytest.importorskip("codecarbon")


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        x += 1


def test_cpu_tracker_offline_finite_and_labelled():
    with CarbonTracker({"country_iso_code": "FRA", "measure_power_secs": 1}) as tracker:
        _busy(1.0)
    r = tracker.result()
    for key in ("energy_kwh", "emissions_kg_co2eq", "cpu_energy_kwh", "ram_energy_kwh"):
        assert math.isfinite(r[key]) and r[key] >= 0, key
    assert r["energy_kwh"] > 0
    assert r["country"] == "FRA"
    assert r["method"].startswith("codecarbon")
    assert r["duration_s"] >= 1.0
    # emissions are energy x the country's intensity from the same offline table
    assert r["emissions_kg_co2eq"] == pytest.approx(
        r["energy_kwh"] * grid_intensity_kg_per_kwh("FRA"), rel=1e-6
    )
    if r["estimate"]:  # no RAPL here: the TDP estimate, said so
        assert "TDP" in r["notes"]
    assert tracker.result() is r  # stopping twice is harmless


def test_grid_intensity_depends_on_country():
    usa, fra = grid_intensity_kg_per_kwh("USA"), grid_intensity_kg_per_kwh("FRA")
    assert 0.0 < fra < usa < 1.5


def test_tpu_estimate_arithmetic():
    # 4 chips x 192 W x 0.5 x PUE 1.1 for one hour = 0.4224 kWh; x 0.4 kg/kWh = 0.16896 kg
    r = tpu_estimate(
        seconds=3600, chips=4, chip_tdp_w=192, utilization=0.5, pue=1.1, intensity_kg_per_kwh=0.4
    )
    assert r["energy_kwh"] == pytest.approx(0.4224)
    assert r["emissions_kg_co2eq"] == pytest.approx(0.16896)


def test_tpu_path_is_an_estimate(monkeypatch):
    import train.carbon as carbon

    monkeypatch.setattr(carbon, "_device_info", lambda: ("tpu", "TPU v4", 8))
    with CarbonTracker({"pue": 1.1, "utilization": 0.5}) as tracker:
        time.sleep(0.05)
    r = tracker.result()
    assert r["method"] == "estimate:tpu_tdp" and r["estimate"] is True
    assert r["chip_tdp_w"] == 192.0
    expected = tpu_estimate(
        seconds=r["duration_s"],
        chips=8,
        chip_tdp_w=192.0,
        utilization=0.5,
        pue=1.1,
        intensity_kg_per_kwh=grid_intensity_kg_per_kwh("USA"),
    )
    assert r["energy_kwh"] == pytest.approx(expected["energy_kwh"])
    assert r["emissions_kg_co2eq"] == pytest.approx(expected["emissions_kg_co2eq"])


def test_disabled_and_bad_keys():
    with CarbonTracker({"enabled": False}) as tracker:
        pass
    assert tracker.result()["method"] == "disabled"
    assert tracker.result()["energy_kwh"] is None
    with pytest.raises(ValueError, match="country"):
        CarbonTracker({"contry_iso_code": "FRA"})
