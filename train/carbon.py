"""Energy (kWh) and emissions (kg CO2eq) of a run, behind one small interface.

    with CarbonTracker(config.get("carbon")) as tracker:
        ...  # train or benchmark
    tracker.result()  # {"energy_kwh", "emissions_kg_co2eq", "method", "country", ...}

Where the numbers come from (`method` says which, and `estimate` says whether power was read):

- CPUs and NVIDIA GPUs: codecarbon's `OfflineEmissionsTracker` (no network) for this process.
  Power is *measured* where the hardware exposes it (Intel RAPL for CPUs, NVML for GPUs). On VMs
  without RAPL, codecarbon falls back to its *estimate*: the CPU's TDP (from its table, or 4 W per
  thread for an unknown model) scaled by this process's CPU load ("codecarbon:cpu_load"), plus a
  RAM estimate. Emissions = energy x PUE x the country's grid intensity from codecarbon's bundled
  energy-mix table.
- TPUs, whose power codecarbon cannot read: energy = chips x chip TDP x utilisation x PUE x hours,
  emissions = energy x the same country grid intensity ("estimate:tpu_tdp"). The TDP is a
  published figure where there is one (`train.hardware.CHIPS`) or `carbon.chip_tdp_w`; utilisation
  defaults to 1.0, an upper bound.

Config keys (a ConfigDict/dict section `carbon`, all optional): `enabled` (True),
`country_iso_code` ("USA"), `pue` (1.0), `chip_tdp_w` (TPU override), `utilization` (TPU, 1.0),
`measure_power_secs` (15).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from models.errors import UserError
from train import hardware

log = logging.getLogger(__name__)

DEFAULTS = {
    "enabled": True,
    "country_iso_code": "USA",
    "pue": 1.0,
    "chip_tdp_w": None,
    "utilization": 1.0,
    "measure_power_secs": 15.0,
}

# Per-chip power comes from train.hardware.CHIPS (TPU v4: 192 W). Google publishes no per-chip TDP
# for later generations; set carbon.chip_tdp_w for them (the result then says the TDP was given).
_ASSUMED_TPU_TDP_W = 200.0  # when neither the table nor the config has a figure; labelled

_MODES = {
    "intel_rapl": ("codecarbon:rapl", False),
    "apple_powermetrics": ("codecarbon:powermetrics", False),
    "windows_emi": ("codecarbon:emi", False),
    "intel_power_gadget": ("codecarbon:power_gadget", False),
    "cpu_load": ("codecarbon:cpu_load", True),  # TDP x process CPU load
    "constant": ("codecarbon:constant", True),  # TDP x 50%
}


def _settings(config) -> dict[str, Any]:
    out = dict(DEFAULTS)
    if config is None:
        return out
    items = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    unknown = set(items) - set(DEFAULTS)
    if unknown:
        raise UserError(
            f"unknown carbon config key(s) {sorted(unknown)}; keys are: {', '.join(DEFAULTS)}"
        )
    out.update({k: v for k, v in items.items() if v is not None})
    return out


def grid_intensity_kg_per_kwh(country_iso_code: str) -> float:
    """The country's grid carbon intensity (kg CO2eq/kWh) from codecarbon's offline energy-mix
    table (the world average for a country it does not know)."""
    from codecarbon.core.emissions import Emissions
    from codecarbon.core.units import Energy
    from codecarbon.external.geography import GeoMetadata
    from codecarbon.input import DataSource

    geo = GeoMetadata(country_iso_code=country_iso_code)
    return Emissions(DataSource()).get_country_emissions(Energy(kWh=1.0), geo)


def tpu_estimate(
    *,
    seconds: float,
    chips: int,
    chip_tdp_w: float,
    utilization: float,
    pue: float,
    intensity_kg_per_kwh: float,
) -> dict[str, float]:
    """energy_kwh = chips x TDP x utilisation x PUE x hours; emissions = energy x intensity."""
    energy = chips * chip_tdp_w * utilization * pue * seconds / 3600.0 / 1000.0
    return {"energy_kwh": energy, "emissions_kg_co2eq": energy * intensity_kg_per_kwh}


def _device_info() -> tuple[str, str, int]:
    import jax

    dev = jax.devices()[0]
    return dev.platform, dev.device_kind, jax.device_count()


class CarbonTracker:
    """Context manager recording the energy and emissions of the code inside it.

    Args:
      config: the `carbon` config section (ConfigDict, dict or None for the defaults).
      platform: override of the JAX platform ("cpu", "gpu", "tpu"); detected when None.
    """

    def __init__(self, config=None, *, platform: str | None = None):
        self.settings = _settings(config)
        self._platform = platform
        self._tracker = None
        self._start = None
        self._result: dict[str, Any] | None = None

    def __enter__(self) -> CarbonTracker:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        s = self.settings
        platform, kind, chips = _device_info()
        self._platform = self._platform or platform
        self._kind, self._chips = kind, chips
        self._start = time.perf_counter()
        if not s["enabled"] or self._platform == "tpu":
            return
        try:
            from codecarbon import OfflineEmissionsTracker
        except ImportError:
            log.warning("codecarbon is not installed: no energy or CO2 figures for this run")
            return
        except Exception as e:  # installed but broken (e.g. a dependency of the wrong version)
            log.warning("codecarbon failed to import (%r): no energy or CO2 figures", e)
            return
        logging.getLogger("codecarbon").setLevel(logging.ERROR)  # its init chatter
        try:
            self._tracker = OfflineEmissionsTracker(
                country_iso_code=s["country_iso_code"],
                pue=float(s["pue"]),
                measure_power_secs=float(s["measure_power_secs"]),
                tracking_mode="process",  # this process only (shared machines)
                output_methods=[],  # nothing written to disk: the caller keeps the figures
                log_level="error",
                allow_multiple_runs=True,  # parallel tests / several runs on one host
            )
            self._tracker.start()
        except Exception as e:  # codecarbon cannot read this machine at all
            log.warning("codecarbon failed to start (%s): no energy or CO2 figures", e)
            self._tracker = None

    def stop(self) -> dict[str, Any]:
        if self._result is not None:
            return self._result
        if self._start is None:
            raise RuntimeError("CarbonTracker.stop() before start()")
        seconds = time.perf_counter() - self._start
        s = self.settings
        base = {
            "country": s["country_iso_code"],
            "pue": float(s["pue"]),
            "duration_s": seconds,
            "platform": self._platform,
            "device_kind": self._kind,
            "devices": self._chips,
        }
        if not s["enabled"]:
            self._result = dict(base, energy_kwh=None, emissions_kg_co2eq=None, method="disabled")
        elif self._platform == "tpu":
            self._result = dict(base, **self._tpu(seconds))
        elif self._tracker is None:
            self._result = dict(
                base, energy_kwh=None, emissions_kg_co2eq=None, method="unavailable"
            )
        else:
            self._result = dict(base, **self._codecarbon())
        return self._result

    def result(self) -> dict[str, Any]:
        """The figures of the finished block (stops the tracker if it is still running)."""
        return self.stop()

    def _codecarbon(self) -> dict[str, Any]:
        tracker = self._tracker
        tracker.stop()
        data = tracker.final_emissions_data
        modes = [getattr(h, "_mode", None) for h in getattr(tracker, "_hardware", [])]
        cpu_mode = next((m for m in modes if m in _MODES), None)
        method, estimate = _MODES.get(cpu_mode, ("codecarbon", True))
        gpu = float(data.gpu_energy) > 0
        if gpu:
            method += "+nvml"
        tdp = _cpu_tdp(tracker)
        notes = "power measured"
        if estimate:
            notes = (
                f"CPU power not readable here (no RAPL): codecarbon's estimate, CPU TDP "
                f"{tdp} W ({data.cpu_model}; 4 W per thread when the model is not in its table) "
                "x this process's CPU load, plus a RAM estimate"
            )
        return {
            "energy_kwh": _finite(data.energy_consumed),
            "emissions_kg_co2eq": _finite(data.emissions),
            "method": method,
            "estimate": estimate,
            "notes": notes,
            "cpu_energy_kwh": _finite(data.cpu_energy),
            "gpu_energy_kwh": _finite(data.gpu_energy),
            "ram_energy_kwh": _finite(data.ram_energy),
            "cpu_power_w": _finite(data.cpu_power),
            "cpu_tdp_w": tdp,
            "cpu_model": data.cpu_model,
            "grid_intensity_kg_per_kwh": _intensity(data),
            "codecarbon": data.codecarbon_version,
        }

    def _tpu(self, seconds: float) -> dict[str, Any]:
        s = self.settings
        tdp, source = s["chip_tdp_w"], "carbon.chip_tdp_w"
        if tdp is None:
            tdp = getattr(hardware.chip_of(self._kind), "tdp_w", None)
            source = f"published ({self._kind})"
        if tdp is None:
            tdp, source = _ASSUMED_TPU_TDP_W, f"assumed; no published TDP for {self._kind}"
        intensity = grid_intensity_kg_per_kwh(s["country_iso_code"])
        figures = tpu_estimate(
            seconds=seconds,
            chips=self._chips,
            chip_tdp_w=float(tdp),
            utilization=float(s["utilization"]),
            pue=float(s["pue"]),
            intensity_kg_per_kwh=intensity,
        )
        return dict(
            figures,
            method="estimate:tpu_tdp",
            estimate=True,
            notes=(
                f"{self._chips} chips x {tdp:g} W ({source}) x utilisation "
                f"{float(s['utilization']):g} x PUE {float(s['pue']):g} x time; "
                "codecarbon cannot read TPU power"
            ),
            chip_tdp_w=float(tdp),
            utilization=float(s["utilization"]),
            grid_intensity_kg_per_kwh=intensity,
        )


def _cpu_tdp(tracker) -> float | None:
    for h in getattr(tracker, "_hardware", []):
        if getattr(h, "_mode", None) in _MODES and getattr(h, "_tdp", None) is not None:
            return float(h._tdp)
    return None


def _intensity(data) -> float | None:
    if data.energy_consumed and data.energy_consumed > 0:
        return float(data.emissions) / float(data.energy_consumed)
    return None


def _finite(x) -> float:
    x = float(x)
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"codecarbon returned {x}")
    return x


def calculator_estimate(facts: dict[str, Any]) -> dict[str, Any]:
    """The ML CO2 Impact calculator's figure for a run (Lacoste et al. 2019,
    https://mlco2.github.io/impact): devices x the hardware's published power x hours x PUE x
    the region's grid intensity. The power is the chip's TDP from train.hardware.CHIPS (or
    `carbon.chip_tdp_w`), or for a CPU run the CPU TDP codecarbon looked up; None where no
    power is known."""
    run, carbon = facts.get("run") or {}, facts.get("carbon") or {}
    settings = _settings(run.get("carbon"))
    hours = float((facts.get("totals") or {}).get("wall_time_s") or 0.0) / 3600.0
    count = int(carbon.get("devices") or 1)
    if carbon.get("platform") == "cpu":
        watts, what, count = carbon.get("cpu_tdp_w"), "CPU TDP (codecarbon's table)", 1
    else:
        chip = hardware.chip_of(carbon.get("device_kind") or "")
        watts = settings["chip_tdp_w"] or (chip.tdp_w if chip else None)
        what = f"{carbon.get('device_kind')} TDP"
    if watts is None:
        return {"energy_kwh": None, "emissions_kg_co2eq": None, "how": "no published power"}
    intensity = grid_intensity_kg_per_kwh(settings["country_iso_code"])
    energy = count * float(watts) * hours * float(settings["pue"]) / 1000.0
    return {
        "energy_kwh": energy,
        "emissions_kg_co2eq": energy * intensity,
        "how": (
            f"{count} x {float(watts):g} W ({what}) x {hours:.3g} h x PUE "
            f"{float(settings['pue']):g} x {intensity:.3g} kg/kWh ({settings['country_iso_code']})"
        ),
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m train.carbon --workdir DIR`: the run's measured footprint beside the ML CO2
    Impact calculator's estimate."""
    from models.errors import ArgumentParser, one_line_errors
    from train import card

    @one_line_errors
    def run(argv):
        parser = ArgumentParser(
            prog="python -m train.carbon", description=main.__doc__.split(":")[0]
        )
        parser.add_argument("--workdir", required=True, help="a training workdir (local or gs://)")
        args = parser.parse_args(argv)
        facts = card.workdir_facts(args.workdir)
        totals, carbon = facts.get("totals") or {}, facts.get("carbon") or {}
        estimate = calculator_estimate(facts)

        def cell(x, scale=1.0):
            return f"{x * scale:>12.4g}" if x is not None else f"{'-':>12}"

        print(
            f"{args.workdir}: step {facts['step']}, {totals.get('segments', 1)} segment(s), "
            f"{float(totals.get('wall_time_s') or 0) / 3600:.3g} h"
        )
        print(f"{'':34}{'energy kWh':>12}{'g CO2eq':>12}  how")
        measured = f"measured ({carbon.get('method', 'not measured')})"
        print(
            f"{measured:34}{cell(totals.get('energy_kwh'))}"
            f"{cell(totals.get('emissions_kg_co2eq'), 1000.0)}  {carbon.get('notes', '')}"
        )
        print(
            f"{'ML CO2 Impact estimate':34}{cell(estimate['energy_kwh'])}"
            f"{cell(estimate['emissions_kg_co2eq'], 1000.0)}  {estimate['how']}"
        )
        return 0

    return run(argv)


if __name__ == "__main__":
    import sys

    sys.exit(main())
