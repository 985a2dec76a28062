"""Translation, English -> German: the 2017 Transformer trained from scratch on parallel text.

    # WMT'14 through TFDS (needs a network the first time), transformer-base:
    python -m train --config configs/translate.py --workdir runs/wmt
    # Multi30k from local files (aligned train.en/train.de, val.en/val.de), a small model:
    MULTI30K_DIR=path/to/multi30k python -m train --config configs/translate.py:multi30k \\
        --workdir runs/m30k
    python -m train --config configs/translate.py:smoke --workdir /tmp/tr-smoke

Every eval decodes the validation sources (beam search, `decode` section) and reports sacreBLEU
as eval_bleu; the best-BLEU checkpoint is kept. `:multi30k` and `:smoke` read $MULTI30K_DIR
(default: ../shared/data/multi30k beside the checkout). Then:

    python -m train.evaluate --workdir runs/m30k --split validation
    python -m train.predict --workdir runs/m30k --task translation "A man rides a bike."
"""

import os
from pathlib import Path

from configs.common import base_config, model_section, smoke, unknown_variant


def multi30k_files() -> dict:
    root = Path(
        os.environ.get(
            "MULTI30K_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k"
        )
    )
    return {
        split: {"source": str(root / f"{name}.en"), "target": str(root / f"{name}.de")}
        for split, name in (("train", "train"), ("validation", "val"))
    }


VARIANTS = ("multi30k", "smoke")


def get_config(arg: str | None = None):
    c = base_config()
    c.task = "translation"
    c.best_metric = "eval_bleu"
    c.eval_task_examples = 1000
    c.steps = 100_000
    c.seq_len = 128
    c.batch_size = 128
    c.eval_every_steps = 5000
    c.checkpoint_every_steps = 5000
    c.model = model_section("transformer-base", max_positions=256)
    c.data.name = "wmt14_translate/de-en"
    c.data.fields = {"source": "en", "target": "de"}
    c.data.objective = "seq2seq"
    c.tokenizer.kind = "bpe"
    c.tokenizer.family = "transformer"
    c.tokenizer.vocab_size = 32000
    c.label_smoothing = 0.1
    c.optimizer.learning_rate = 7e-4
    c.optimizer.warmup_steps = 4000
    c.optimizer.schedule = "rsqrt"
    c.optimizer.b2 = 0.98
    c.optimizer.eps = 1e-9
    c.optimizer.weight_decay = 0.0
    c.decode.beams = 4
    c.decode.length_penalty = 0.6
    c.decode.max_new_tokens = 128
    if arg in ("multi30k", "smoke"):
        # A small Transformer (d=256, 3+3 layers) on 29k short sentence pairs: bf16 matmuls and
        # batches padded to multiples of 16 tokens keep a 2-core CPU busy with real tokens.
        c.data.name = ""
        c.data.fields = {}
        c.data.files = multi30k_files()
        c.data.trim_padding = 16
        c.model = model_section(
            "transformer-base",
            d_model=256,
            num_heads=4,
            d_ff=1024,
            num_layers=3,
            max_positions=128,
            dropout_rate=0.1,
            dtype="bfloat16",
        )
        c.tokenizer.vocab_size = 8000
        c.seq_len = 64
        c.batch_size = 128
        c.steps = 2000  # ~9 epochs
        c.eval_every_steps = 1000
        c.checkpoint_every_steps = 1000
        c.eval_batches = 8
        c.eval_task_examples = 0  # the 1,014 validation pairs
        c.optimizer.learning_rate = 1e-3
        c.optimizer.warmup_steps = 200
        c.optimizer.schedule = "cosine"
        c.optimizer.end_factor = 0.05
        c.decode.max_new_tokens = 64
        c.decode.batch_size = 128
    if arg == "smoke":
        c = smoke(c)
        c.model = model_section("transformer-tiny")
        c.data.trim_padding = 0
        c.eval_task_examples = 16
        c.decode.beams = 2
        c.decode.max_new_tokens = 8
    elif arg not in (None, "multi30k", "smoke"):
        raise unknown_variant("translate", arg, VARIANTS)
    return c
