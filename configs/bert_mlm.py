"""Masked-LM pretraining of a BERT encoder (dynamic 15% masking, 80/10/10).

python -m train --config configs/bert_mlm.py --workdir runs/bert
python -m train --config configs/bert_mlm.py:smoke --workdir /tmp/bert-smoke
"""

from configs.common import base_config, model_section, smoke, unknown_variant

VARIANTS = ("smoke", "base")


def get_config(arg: str | None = None):
    c = base_config()
    c.steps = 2000
    c.model = model_section(
        "bert-base-uncased", head="mlm", d_model=256, num_heads=4, d_ff=1024, num_layers=4
    )
    c.data.objective = "mlm"
    c.data.whole_word_mask = True
    c.tokenizer.kind = "wordpiece"
    c.tokenizer.lowercase = True
    c.optimizer.learning_rate = 5e-4
    if arg == "smoke":
        c = smoke(c)
        c.model = model_section("bert-tiny", head="mlm")
    elif arg == "base":
        c.model = model_section("bert-base-uncased", head="mlm")
        c.tokenizer.vocab_size = 30522
        c.seq_len = 512
        c.batch_size = 256
        c.steps = 1_000_000
        c.optimizer.learning_rate = 1e-4
        c.optimizer.warmup_steps = 10_000
        c.optimizer.schedule = "linear"
    elif arg:
        raise unknown_variant("bert_mlm", arg, VARIANTS)
    return c
