"""A restarted run loads its compiled programs from JAX's persistent compilation cache under
the workdir (train/compilation.py), and the programs it loads compute what fresh ones do."""

import json

from test_train_cli import _losses, _train

FLAGS = [
    "--config.optimizer.decay_steps=12",  # the same schedule, so the same programs, at 8 and 12
    "--config.log_every_steps=1",
    "--config.sample_tokens=0",
]
CACHED = ["--config.compilation_cache.min_compile_secs=0"]  # small programs are written too


def _cache(workdir) -> dict:
    return json.loads((workdir / "summary.json").read_text())["compilation_cache"]


def test_a_resumed_run_compiles_nothing_anew(tmp_path):
    workdir = tmp_path / "run"
    first = _train(workdir, *FLAGS, *CACHED, "--config.steps=8")
    assert first.returncode == 0, first.stderr[-2000:]
    cold = _cache(workdir)
    assert cold["dir"] == str(workdir / "compilation_cache")
    assert cold["compiled"] > 0 and any((workdir / "compilation_cache").iterdir())

    resumed = _train(workdir, *FLAGS, *CACHED, "--config.steps=12")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step 8" in resumed.stderr
    warm = _cache(workdir)
    assert warm["programs"] > 0 and warm["compiled"] == 0 and warm["loaded"] == warm["programs"]
    assert f"{warm['loaded']} of {warm['programs']} programs loaded" in resumed.stderr

    # without a cache, the same 12 steps give the same losses bit for bit
    fresh = tmp_path / "fresh"
    off = _train(fresh, *FLAGS, "--config.compilation_cache.dir=off", "--config.steps=12")
    assert off.returncode == 0, off.stderr[-2000:]
    assert "compilation_cache" not in json.loads((fresh / "summary.json").read_text())
    assert not (fresh / "compilation_cache").exists()
    assert _losses(workdir) == _losses(fresh)
