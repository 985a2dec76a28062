"""train/goodput.py: every run splits its wall time into step, data_wait, checkpoint, compile,
eval, restore, lost and other, and reports goodput = step / wall time."""

import json
import time

import pytest

from train import goodput


def _smoke(tmp_path, **changes):
    from configs import gpt_lm
    from train.loop import train_and_evaluate

    config = gpt_lm.get_config("smoke")
    config.data.prefetch = changes.pop("prefetch", config.data.prefetch)
    config.update(changes)
    return train_and_evaluate(config, tmp_path)


def test_the_breakdown_sums_to_the_wall_time_and_explains_it(tmp_path):
    summary = _smoke(tmp_path)
    parts, wall = summary["time_breakdown_s"], summary["wall_time_s"]
    assert tuple(parts) == goodput.KEYS
    assert sum(parts.values()) == pytest.approx(wall, rel=1e-9)
    assert parts["other"] < 0.05 * wall, parts
    assert parts["compile"] > 0 and parts["eval"] > 0 and parts["restore"] > 0
    assert parts["lost"] == 0.0  # a new workdir redoes nothing
    assert summary["goodput"] == pytest.approx(parts["step"] / wall)
    logged = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in logged if "loss" in r]
    assert windows and all(
        f"time/{k}" in r and "goodput" in r for r in windows for k in goodput.KEYS
    )
    assert sum(windows[-1][f"time/{k}"] for k in goodput.KEYS) == pytest.approx(1.0)


def test_a_slow_pipeline_shows_as_data_wait(tmp_path, monkeypatch):
    from data import pipeline

    plain = pipeline.BatchIterator.__next__

    def slow(self):
        time.sleep(0.5)  # a test-only delay per batch
        return plain(self)

    monkeypatch.setattr(pipeline.BatchIterator, "__next__", slow)
    # without prefetch (the feed would build batches while the first step compiles)
    summary = _smoke(tmp_path, eval_every_steps=0, sample_tokens=0, prefetch=0)
    parts = summary["time_breakdown_s"]
    loop = parts["data_wait"] + parts["step"] + parts["other"]
    # 7 steps after the first wait for their batch; the steps themselves take milliseconds
    assert parts["data_wait"] > 0.8 * loop and parts["data_wait"] > 7 * 0.5 * 0.8, parts


def test_clock_shares_and_other():
    clock = goodput.Clock(start=time.perf_counter())
    with clock.timing("step"):
        time.sleep(0.05)
    with clock.timing("data_wait"):
        time.sleep(0.02)
    time.sleep(0.02)
    parts, wall = clock.breakdown()
    assert parts["step"] >= 0.05 and parts["data_wait"] >= 0.02 and parts["other"] >= 0.015
    assert sum(parts.values()) == pytest.approx(wall)
    shares = clock.window()
    assert shares["time/step"] > shares["time/data_wait"] > 0
    assert sum(shares[f"time/{k}"] for k in goodput.KEYS) == pytest.approx(1.0)
