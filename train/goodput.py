"""Where a run's wall time goes: `time_breakdown_s` and `goodput`, in summary.json and each log.

The keys, after MaxText's goodput categories:

  step        time the host spends launching train steps and blocked on their results
  data_wait   time blocked on the next batch (built and placed by train/feed.py)
  checkpoint  time in checkpoint saves (the blocking part; Orbax finishes async saves later)
  compile     the first train step of the segment: its compilation and its one step
  eval        periodic evaluation (loss and task metrics, their compilation included)
  restore     from the start of the segment to its first step: setup, restoring a checkpoint
  lost        steps run again after a restart, up to the furthest step an earlier segment
              logged (their launch and wait time, counted here instead of under `step`)
  other       the rest: logging, the progress bar, anything not measured above

`goodput` = step / wall time. How `step` is measured under asynchronous dispatch: on a GPU or TPU
the host launches step t+1 while step t runs and reads metrics only at log and checkpoint steps,
so the launch calls plus the time blocked reading those metrics is the device time the host
waited for; on a CPU each step is waited for (train.step.waits_for_each_step). Where ours
differs from MaxText: MaxText counts its first step as productive and reports compilation from
the XLA compile events; we count the whole first step as `compile`, and we have no separate
`tpu_init` (it is part of `restore`).
"""

from __future__ import annotations

import contextlib
import time

KEYS = ("step", "data_wait", "checkpoint", "compile", "eval", "restore", "lost", "other")


class Clock:
    """Splits one segment's wall time into KEYS."""

    def __init__(self, start: float | None = None):
        self.start = time.perf_counter() if start is None else start
        self.totals = dict.fromkeys(KEYS, 0.0)
        self._window = dict(self.totals)

    @contextlib.contextmanager
    def timing(self, key: str):
        """Adds the time spent inside the `with` block to `key`."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.totals[key] += time.perf_counter() - began

    def mark(self, key: str, since: float) -> None:
        """Adds the time from `since` to now to `key`."""
        self.totals[key] += time.perf_counter() - since

    def breakdown(self) -> tuple[dict[str, float], float]:
        """(time_breakdown_s, wall time) of the segment so far; `other` is what no key explains."""
        wall = time.perf_counter() - self.start
        totals = dict(self.totals)
        totals["other"] = max(0.0, wall - sum(v for k, v in totals.items() if k != "other"))
        return totals, wall

    def window(self) -> dict[str, float]:
        """The shares of each key since the last call (the log window), as `time/KEY` metrics,
        and `goodput` over the segment so far."""
        totals, wall = self.breakdown()
        spent = {k: totals[k] - self._window.get(k, 0.0) for k in KEYS}
        self._window = totals
        window_wall = max(sum(spent.values()), 1e-9)
        out = {f"time/{k}": v / window_wall for k, v in spent.items()}
        out["goodput"] = totals["step"] / max(wall, 1e-9)
        return out


def summary(clock: Clock) -> dict:
    """The summary.json fields of a segment: time_breakdown_s, wall_time_s, goodput."""
    totals, wall = clock.breakdown()
    return {"time_breakdown_s": totals, "wall_time_s": wall, "goodput": totals["step"] / wall}


def segment_record(clock: Clock, first_step: int, step: int, tokens: int, footprint=None) -> dict:
    """One segment of a run (from a start or restart to its end or its latest checkpoint)."""
    totals, wall = clock.breakdown()
    footprint = footprint or {}
    return {
        "first_step": int(first_step),
        "last_step": int(step),
        "wall_time_s": wall,
        "time_breakdown_s": totals,
        "tokens": int(tokens),
        "energy_kwh": footprint.get("energy_kwh"),
        "emissions_kg_co2eq": footprint.get("emissions_kg_co2eq"),
    }


class Ledger:
    """The run's earlier segments, saved with every checkpoint, so that totals survive restarts.

    A segment that was killed is known up to its last checkpoint; the log windows it wrote
    after that (metrics.jsonl's `segment_wall_s`) extend its wall time, and that tail counts as
    `lost`: its steps are done again. A killed segment's energy is unknown (None), since the
    carbon tracker reports only when it stops; a segment that ended (its steps done, or
    preempted) logged its energy and emissions as its last metrics.jsonl record, and those
    enter the ledger when the next segment starts.
    """

    def __init__(self, segments: list[dict] | None = None):
        self.segments = [dict(s) for s in segments or []]

    @classmethod
    def resume(cls, saved: dict | None, logged: list[dict]) -> Ledger:
        """The ledger of the restored checkpoint, its last segment extended by what that segment
        logged after the checkpoint (`logged`: metrics.jsonl's records)."""
        ledger = cls((saved or {}).get("segments"))
        if ledger.segments:
            last = ledger.segments[-1]
            index = len(ledger.segments) - 1
            mine = [r for r in logged if r.get("segment") == index]
            walls = [r["segment_wall_s"] for r in mine if "segment_wall_s" in r]
            tail = max(walls, default=0.0) - last["wall_time_s"]
            ended = [r for r in mine if "carbon/energy_kwh" in r]
            if tail > 0:
                last["wall_time_s"] += tail
                last["time_breakdown_s"] = {**last["time_breakdown_s"]}
                last["time_breakdown_s"]["lost"] += tail
                last["energy_kwh"] = last["emissions_kg_co2eq"] = None
            elif ended:  # it ended at this checkpoint and measured itself
                last["energy_kwh"] = ended[-1]["carbon/energy_kwh"]
                last["emissions_kg_co2eq"] = ended[-1]["carbon/emissions_kg_co2eq"]
        return ledger

    @property
    def index(self) -> int:
        """The number of the segment now running."""
        return len(self.segments)

    def saved(self, current: dict) -> dict:
        """What a checkpoint stores: the earlier segments and the current one so far."""
        return {"segments": [*self.segments, current]}

    def totals(self, current: dict) -> dict:
        """Whole-run figures over every segment, the current one included."""
        segments = [*self.segments, current]
        wall = sum(s["wall_time_s"] for s in segments)
        parts = {k: sum(s["time_breakdown_s"][k] for s in segments) for k in KEYS}

        def known(key):
            values = [s[key] for s in segments if s.get(key) is not None]
            return sum(values) if values else None

        return {
            "segments": len(segments),
            "wall_time_s": wall,
            "time_breakdown_s": parts,
            "goodput": parts["step"] / max(wall, 1e-9),
            "tokens": sum(s["tokens"] for s in segments),
            "energy_kwh": known("energy_kwh"),
            "emissions_kg_co2eq": known("emissions_kg_co2eq"),
            "segments_without_energy": sum(s.get("energy_kwh") is None for s in segments),
        }
