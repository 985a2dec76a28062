"""`python -m train` with pipeline stages on 8 simulated CPU devices: a 4-layer smoke GPT split
into 2 or 4 stages gives the losses of the batch split over `mesh.data`; a SIGKILLed pipelined
run resumes exactly; its checkpoint restores on a data-only mesh and a data-only checkpoint on
stages; bad stage settings are one line, with the checkpoints untouched."""

import json
import shutil

import numpy as np
import pytest
from test_context_cli import _train
from test_train_cli import _digest, _killed_after_checkpoint, _losses

# the smoke GPT with 4 stacked layers, and a batch that 4 data shards x 4 microbatches divide
MODEL = [
    "--config.model.num_layers=4",
    "--config.model.scan_layers=True",
    "--config.batch_size=16",
]
STEPS = range(1, 11)


def _same(losses, reference, rtol=1e-4):
    assert sorted(losses) == list(STEPS)
    np.testing.assert_allclose([losses[s] for s in STEPS], [reference[s] for s in STEPS], rtol=rtol)


@pytest.fixture(scope="module")
def data_run(tmp_path_factory):
    """The reference: the batch split 8 ways, a checkpoint every step."""
    workdir = tmp_path_factory.mktemp("pipeline") / "data"
    every = ["--config.checkpoint_every_steps=1", "--config.keep_checkpoints=10"]
    _train("gpt_lm.py:smoke", workdir, *MODEL, "--config.mesh.data=8", *every)
    return workdir, _losses(workdir)


@pytest.mark.parametrize("stage,micro,repeats", [(2, 4, 1), (4, 8, 1), (2, 4, 2)])
def test_stages_give_the_losses_of_the_batch_split(tmp_path, data_run, stage, micro, repeats):
    split = ["--config.mesh.data=-1", f"--config.mesh.stage={stage}"]
    split += [f"--config.pipeline.microbatches={micro}", f"--config.pipeline.repeats={repeats}"]
    _train("gpt_lm.py:smoke", tmp_path / "stages", *MODEL, *split)
    _same(_losses(tmp_path / "stages"), data_run[1])


@pytest.mark.slow
def test_a_killed_pipelined_run_resumes_exactly_and_moves_between_meshes(tmp_path, data_run):
    stages = ["--config.mesh.data=4", "--config.mesh.stage=2", "--config.pipeline.microbatches=4"]
    every = ["--config.checkpoint_every_steps=1"]
    _train("gpt_lm.py:smoke", tmp_path / "full", *MODEL, *stages, *every)
    full = _losses(tmp_path / "full")
    _killed_after_checkpoint(
        tmp_path / "killed",
        (),
        step=4,
        start=lambda: _train(
            "gpt_lm.py:smoke", tmp_path / "killed", *MODEL, *stages, *every, wait=False
        ),
    )
    shutil.copytree(tmp_path / "killed", tmp_path / "moved")
    # resumed on the same mesh: the same losses, bit for bit
    _train("gpt_lm.py:smoke", tmp_path / "killed", *MODEL, *stages, *every)
    resumed = _losses(tmp_path / "killed")
    assert [resumed[s] for s in STEPS] == [full[s] for s in STEPS]
    # the stage=2 checkpoint resumed on data=8, and a data=8 checkpoint on stage=4
    _train("gpt_lm.py:smoke", tmp_path / "moved", *MODEL, "--config.mesh.data=8")
    _same(_losses(tmp_path / "moved"), full)
    reverse = tmp_path / "reverse"
    shutil.copytree(data_run[0], reverse)
    for step in range(5, 11):  # back to step 4 of the data=8 run
        shutil.rmtree(reverse / "checkpoints" / str(step), ignore_errors=True)
    lines = (reverse / "metrics.jsonl").read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["step"] <= 4]
    (reverse / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    four = ["--config.mesh.data=-1", "--config.mesh.stage=4", "--config.pipeline.microbatches=8"]
    _train("gpt_lm.py:smoke", reverse, *MODEL, *four)
    _same(_losses(reverse), data_run[1])


def test_bad_stage_settings_are_one_line_and_keep_the_checkpoints(tmp_path, data_run):
    workdir = tmp_path / "run"
    shutil.copytree(data_run[0], workdir)
    before = _digest(workdir / "checkpoints")
    stage = ["--config.mesh.data=-1", "--config.mesh.stage=2"]
    for flags, needle in (
        ([*stage, "--config.pipeline.repeats=4"], "num_layers=4 is not divisible by mesh.stage=2"),
        ([*stage, "--config.pipeline.microbatches=3"], "microbatches=3 is not a multiple"),
        ([*stage, "--config.pipeline.microbatches=8"], "not divisible by 4 batch shards x 8"),
        (["--config.pipeline.repeats=2"], "needs pipeline stages"),
    ):
        result = _train("gpt_lm.py:smoke", workdir, *MODEL, *flags, check=False)
        assert result.returncode == 2, result.stderr[-3000:]
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error:") and needle in last, last
        assert "Traceback" not in result.stderr
        assert _digest(workdir / "checkpoints") == before
