"""Every command-line mistake ends in one `error:` line with exit code 2 and no traceback, and
every key of every config file can be set from the command line."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest

from configs import cli
from models.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SMOKE = ["--config", "configs/gpt_lm.py:smoke"]


def _run(module, *args, cwd=ROOT, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _assert_one_line(result, *needles):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:"), result.stderr[-2000:]
    for needle in needles:
        assert needle in last, (needle, last)


@pytest.fixture(scope="module")
def broken_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("configs") / "broken.py"
    path.write_text("from configs.common import base_config\n\nimport no_such_module\n")
    return path


TRAIN_CASES = {
    "missing config file": (["--config", "configs/nope.py"], ["configs/nope.py"]),
    "config that is not python": (["--config", "pyproject.toml"], ["not a Python config file"]),
    "empty config": (["--config="], ["--config needs a file"]),
    "unknown variant": (
        ["--config", "configs/gpt_lm.py:nosuch"],
        ["'nosuch'", "smoke, gpt2"],
    ),
    "unknown key": ([*SMOKE, "--config.nosuch=1"], ["--config.nosuch", "no such key"]),
    "misspelt key": ([*SMOKE, "--config.data.filez=x"], ["did you mean data.files"]),
    "key in the wrong section": ([*SMOKE, "--config.data.steps=3"], ["data.steps", "steps?"]),
    "not an int": ([*SMOKE, "--config.steps=ten"], ["--config.steps", "expected an int"]),
    "not a float": (
        [*SMOKE, "--config.optimizer.learning_rate=fast"],
        ["optimizer.learning_rate", "expected a float"],
    ),
    "not a bool": ([*SMOKE, "--config.dropout=maybe"], ["--config.dropout", "expected a bool"]),
    "not a dict": ([*SMOKE, "--config.data.splits=train"], ["data.splits", "expected a dict"]),
    "unknown objective": (
        [*SMOKE, "--config.data.objective=nosuch"],
        ["data.objective='nosuch'", "clm, mlm, span"],
    ),
    "unknown task": ([*SMOKE, "--config.task=qa"], ["task='qa'", "classification"]),
    "unknown optimizer": (
        [*SMOKE, "--config.optimizer.name=adam"],
        ["optimizer.name='adam'", "adamw, adafactor, sgd"],
    ),
    "unknown schedule": (
        [*SMOKE, "--config.optimizer.schedule=step"],
        ["optimizer.schedule='step'", "cosine, linear"],
    ),
    "unknown kernel": (
        [*SMOKE, "--config.model.attention_kernel=flash"],
        ["model.attention_kernel='flash'", "cudnn", "splash"],
    ),
    "unknown dtype": (
        [*SMOKE, "--config.model.dtype=bf16"],
        ["model.dtype='bf16'", "bfloat16"],
    ),
    "missing value": ([*SMOKE, "--config.steps"], ["--config.steps needs a value"]),
    "no such data file": (
        [*SMOKE, "--config.data.files=no_such_corpus.txt"],
        ["data.files", "no_such_corpus.txt"],
    ),
    "bad parallel pair": (
        [*SMOKE, "--config.data.files.train=a,b,c"],
        ["data.files.train", "SOURCE,TARGET"],
    ),
    "absl: unknown flag": ([*SMOKE, "--workdirr=/tmp/x"], ["workdirr", "--help"]),
    "absl: bad flag value": ([*SMOKE, "--num_processes=two"], ["num_processes"]),
    "stray argument": ([*SMOKE, "extra"], ["unexpected arguments", "extra"]),
}


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_train_cli_mistake_is_one_line(case, tmp_path):
    args, needles = TRAIN_CASES[case]
    result = _run("train", *args, "--workdir", str(tmp_path / "w"))
    _assert_one_line(result, *needles)
    assert not (tmp_path / "w").exists()  # nothing was started


def test_config_that_fails_to_import_names_its_path(broken_config, tmp_path):
    result = _run("train", "--config", str(broken_config), "--workdir", str(tmp_path / "w"))
    _assert_one_line(result, str(broken_config), "failed to import", "no_such_module")


@pytest.mark.parametrize(
    "module,args,needles",
    [
        ("models", ["infoo"], ["invalid choice: 'infoo'"]),
        ("models", ["info", "gpt5"], ["unknown architecture 'gpt5'"]),
        ("models", ["convert", "--from-hf", "/no/such/dir", "--to", "x"], ["/no/such/dir"]),
        ("train.evaluate", [], ["--workdir"]),
        ("train.evaluate", ["--workdir", "/no/such/run"], ["/no/such/run"]),
        ("train.predict", ["--workdir", "/no/such/run", "hello"], ["/no/such/run"]),
        ("train.benchmark", ["--model", "gpt2-tiny", "--batch", "x"], ["--batch", "'x'"]),
        ("train.benchmark", ["--suite", "nope"], ["--suite", "'nope'"]),
        ("launch.local", ["-n", "2"], ["no command given"]),
        ("launch.slurm", ["--nodes", "x"], ["--nodes"]),
        (
            "launch.slurm",
            ["--nodes", "2", *SMOKE, "--workdir", "/w", "--set", "stepz=3", "--dry-run"],
            ["--config.stepz", "did you mean steps"],
        ),
        (
            "launch.slurm",
            ["--nodes", "1", "--tasks-per-node", "3", *SMOKE, "--workdir", "/w", "--dry-run"],
            ["--tasks-per-node 3", "8 GPUs per node", "one of 1, 2, 4, 8"],
        ),
        (
            "launch.slurm",
            ["--nodes", "1", "--gres", "gpu:4", "--gpus-per-node", "8", *SMOKE, "--workdir", "/w"],
            ["--gres gpu:4 gives 4 GPUs", "--gpus-per-node says 8", "give one of the two"],
        ),
        (
            "launch.slurm",
            ["--nodes", "1", "--gres", "nvme:1", *SMOKE, "--workdir", "/w", "--dry-run"],
            ["--gres 'nvme:1'", "gpu:TYPE:N"],
        ),
        (
            "launch.slurm",
            ["--nodes", "1", "--time", "1:2:3:4", *SMOKE, "--workdir", "/w", "--dry-run"],
            ["--time '1:2:3:4'", "HH:MM:SS"],
        ),
        (
            "launch.slurm",
            ["--nodes", "1", "--time", "2", *SMOKE, "--workdir", "/w", "--dry-run"],
            ["--signal-before 120s is not shorter than --time 2 (120s)", "raise --time"],
        ),
        (
            "launch.tpu",
            ["--tpu", "t", "--zone", "z", *SMOKE, "--workdir", "/w", "--set", "steps"],
            ["--set 'steps'", "KEY=VALUE"],
        ),
        (
            "launch.gke",
            ["--hosts", "0", "--name", "n", "--image", "i", *SMOKE, "--workdir", "/w"],
            ["--hosts"],
        ),
        ("launch.plan", ["--devices", "2"], ["--config is required"]),
        ("launch.plan", [*SMOKE, "--devices", "2", "--config.stepz=1"], ["did you mean steps"]),
        ("launch.plan", [*SMOKE, "--devicez", "2"], ["devicez", "--help"]),
        ("launch.plan", [*SMOKE, "--devices", "2", "--mesh", "data=x"], ["--mesh", "'x'"]),
    ],
)
def test_every_cli_reports_mistakes_in_one_line(module, args, needles):
    _assert_one_line(_run(module, *args), *needles)


def test_help_points_to_the_key_documentation():
    result = _run("train", "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout + result.stderr
    assert "configs/common.py" in text and "--config.KEY=VALUE" in text


# --- every key of every config, set from the command line (in process) ------------------------


def _sample(key: str, kind: type, current, data_file: str):
    """A command-line text for `key` and the value it must set."""
    allowed = cli.choices().get(key)
    if key == "data.files":
        return data_file, {"train": data_file}
    if allowed:
        value = next((a for a in allowed if a != current and a != ""), allowed[0])
        return str(value), value
    if issubclass(kind, ml_collections.ConfigDict) or kind is dict:
        return '{"train": "train[:10%]"}', {"train": "train[:10%]"}
    if kind is bool:
        return ("false", False) if current else ("true", True)
    if kind is int:
        return "7", 7
    if kind is float:
        return "0.25", 0.25
    if kind in (tuple, list):
        return "a,b", kind(["a", "b"])
    if kind is str:
        return "some text", "some text"
    raise AssertionError(f"{key}: a key of type {kind} cannot be written on the command line")


def _every_config():
    for name in cli.config_names():
        module = importlib.import_module(f"configs.{name}")
        for variant in (None, *module.VARIANTS):
            yield f"{name}:{variant}" if variant else name


@pytest.mark.parametrize("spec", list(_every_config()))
def test_every_key_of_every_config_can_be_set(spec, tmp_path):
    data_file = str(tmp_path / "corpus.txt")
    Path(data_file).write_text("one line\n")
    keys = list(cli.keys(cli.load_config(spec)))
    assert len(keys) > 100 and {"data.files", "data.splits", "data.fields"} <= set(keys)
    for key in keys:
        config = cli.load_config(spec)
        parent = cli._get(config, key.rpartition(".")[0]) if "." in key else config
        leaf = key.rpartition(".")[2]
        text, expected = _sample(key, parent.get_type(leaf), parent[leaf], data_file)
        cli.apply_overrides(config, [(key, text)])
        value = cli._get(config, key)
        if isinstance(value, ml_collections.ConfigDict):
            value = value.to_dict()
        if key == "data.files":  # given without a validation split: one is held out
            assert config.data.splits.to_dict() == {
                "train": "train[:95%]",
                "validation": "train[95%:]",
            }
        assert value == expected, (spec, key, text, value)


def test_dict_entries_and_split_files_from_the_command_line(tmp_path):
    src, tgt = tmp_path / "a.en", tmp_path / "a.de"
    src.write_text("a\n")
    tgt.write_text("b\n")
    config = cli.load_config("translate:smoke")
    cli.apply_overrides(
        config,
        [
            ("data.files.validation", f"{src},{tgt}"),  # a child before its parent: any order
            ("data.files", f"{src},{tgt}"),
            ("data.fields.source", "en"),
            ("data.splits.test", "validation"),
        ],
    )
    pair = {"source": str(src), "target": str(tgt)}
    assert config.data.files.to_dict() == {"train": pair, "validation": pair}
    assert config.data.splits.to_dict() == {"test": "validation"}  # nothing held out
    assert config.data.fields.to_dict() == {"source": "en"}
    # one split replaces that split only: the config file's validation file stays
    config = cli.load_config("finetune_cls:local")
    validation = config.data.files["validation"]
    cli.apply_overrides(config, [("data.files.train", str(src))])
    assert config.data.files.to_dict() == {"train": str(src), "validation": validation}
    assert not config.data.splits  # nothing held out: there is a validation file
    # the config file's own splits are replaced by data.files=PATH
    config = cli.load_config("finetune_cls:local")
    cli.apply_overrides(config, [("data.files", str(src))])
    assert set(config.data.files) == {"train"} and set(config.data.splits) == {
        "train",
        "validation",
    }


def test_lists_from_the_command_line():
    config = cli.load_config("gpt_lm:smoke")
    for text, expected in [
        ("", ()),  # empty: none
        ("token_embed, head/", ("token_embed", "head/")),
        ('["a", "b"]', ("a", "b")),
        ("(encoder|decoder)/token_embed,head/", ("(encoder|decoder)/token_embed", "head/")),
    ]:
        cli.set_key(config, "optimizer.freeze", text)
        assert config.optimizer.freeze == expected, text


def test_launchers_leave_cluster_paths_to_the_cluster():
    from launch.common import train_argv

    argv = train_argv("configs/gpt_lm.py:smoke", "/w", ["data.files=/cluster/only/corpus.txt"])
    assert "--config.data.files=/cluster/only/corpus.txt" in argv
    with pytest.raises(UserError, match="did you mean data.files"):
        train_argv("configs/gpt_lm.py:smoke", "/w", ["data.filez=/cluster/only/corpus.txt"])


def test_overrides_reject_bad_values_by_key():
    config = cli.load_config("gpt_lm:smoke")
    for key, text, needle in [
        ("steps", "1.5", "expected an int"),
        ("data.fields", "[1]", "expected a dict"),
        ("optimizer", "3", "is a section"),
        ("steps.x", "3", "not a section"),
        ("data.fields.text.x", "y", "one name deep"),
    ]:
        with pytest.raises(UserError, match=needle):
            cli.set_key(config, key, text)


@pytest.mark.skipif(not (SHARED / "tiny_shakespeare").exists(), reason="needs ../shared/data")
def test_train_on_a_text_file_from_the_command_line(tmp_path):
    """`--config.data.files=PATH` alone: trains, evaluates on the split held out of the file,
    and writes summary.json."""
    corpus = tmp_path / "my_corpus.txt"
    corpus.write_text((SHARED / "tiny_shakespeare" / "input.txt").read_text()[:200_000])
    workdir = tmp_path / "run"
    result = _run(
        "train",
        *SMOKE,
        "--config.data.files=my_corpus.txt",  # relative to the working directory
        f"--config.data.data_dir={tmp_path / 'tfds'}",
        "--config.sample_tokens=0",
        "--workdir",
        str(workdir),
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the last 5% of" in result.stderr and "is the validation split" in result.stderr
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["eval"]["eval_loss"] < 10
    saved = json.loads((workdir / "config.json").read_text())
    data = saved["run"]["data"]
    assert data["files"] == {"train": str(corpus)}
    assert data["splits"] == {"train": "train[:95%]", "validation": "train[95%:]"}
    # the two splits are disjoint and cover the file's lines
    from data.sources import load_source

    cfg = ml_collections.ConfigDict(data)
    train, validation = (load_source(cfg, s, "clm") for s in ("train", "validation"))
    lines = [x for x in corpus.read_text().splitlines() if x.strip()]
    assert len(train) + len(validation) == len(lines) and 0 < len(validation) < len(train)
    assert validation[len(validation) - 1]["text"] == lines[-1]


def test_the_harness_without_lm_eval_says_which_extra_to_install(tmp_path):
    """`python -m train.harness` where lm-eval is not installed (blocked here by a
    sitecustomize that makes its import fail), and a training run that asks for harness tasks."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['lm_eval'] = None\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    for module, args in (
        ("train.harness", ["--model", "runs/x", "--tasks", "triptych_choice"]),
        (
            "train",
            [
                *SMOKE,
                "--config.eval_harness.tasks=triptych_choice",
                f"--workdir={tmp_path / 'run'}",
            ],
        ),  # fmt: skip
    ):
        result = subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        _assert_one_line(result, "lm-eval", "pip install -e '.[eval]'")
    assert not (tmp_path / "run").exists()
