"""The 2017 Transformer trained on parallel text (English -> German).

    # WMT'14 through TFDS (needs a network the first time):
    python -m train --config configs/transformer_translate.py --workdir runs/wmt
    # Multi30k from local files (aligned train.en/train.de, val.en/val.de):
    MULTI30K_DIR=path/to/multi30k python -m train \\
        --config configs/transformer_translate.py:multi30k --workdir runs/m30k
    python -m train --config configs/transformer_translate.py:smoke --workdir /tmp/tr-smoke

`:multi30k` and `:smoke` read $MULTI30K_DIR (default: ../shared/data/multi30k beside the
checkout).
"""

import os
from pathlib import Path

from configs.common import base_config, model_section, smoke


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


def get_config(arg: str | None = None):
    c = base_config()
    c.steps = 20_000
    c.seq_len = 64
    c.batch_size = 64
    c.model = model_section("transformer-base", max_positions=256)
    c.data.name = "wmt14_translate/de-en"
    c.data.fields = {"source": "en", "target": "de"}
    c.data.objective = "seq2seq"
    c.tokenizer.kind = "bpe"
    c.tokenizer.family = "transformer"
    c.tokenizer.vocab_size = 8000
    c.label_smoothing = 0.1
    c.optimizer.learning_rate = 7e-4
    c.optimizer.warmup_steps = 4000
    c.optimizer.schedule = "rsqrt"
    c.optimizer.b2 = 0.98
    c.optimizer.eps = 1e-9
    c.optimizer.weight_decay = 0.0
    if arg in ("multi30k", "smoke"):
        c.data.name = ""
        c.data.fields = {}
        c.data.files = multi30k_files()
        c.model = model_section(
            "transformer-base",
            d_model=256,
            num_heads=4,
            d_ff=1024,
            num_layers=3,
            max_positions=256,
            dropout_rate=0.1,
        )
    if arg == "smoke":
        c = smoke(c)
        c.model = model_section("transformer-tiny")
    elif arg not in (None, "multi30k", "smoke"):
        raise ValueError(
            f"unknown variant {arg!r} of transformer_translate; choose smoke or multi30k"
        )
    return c
