"""BART denoising pretraining: text infilling (Poisson(3) spans -> one <mask>) and sentence
permutation.

    python -m train --config configs/bart_denoise.py --workdir runs/bart
    python -m train --config configs/bart_denoise.py:smoke --workdir /tmp/bart-smoke
"""

from configs.common import base_config, model_section, smoke, unknown_variant

VARIANTS = ("smoke", "base")


def get_config(arg: str | None = None):
    c = base_config()
    c.steps = 2000
    c.model = model_section("bart-base", d_model=256, num_heads=4, d_ff=1024, num_layers=3)
    c.data.objective = "denoise"
    c.data.mask_ratio = 0.3
    c.data.poisson_lambda = 3.0
    c.data.permute_sentences = True
    c.tokenizer.kind = "bpe"
    c.tokenizer.family = "bart"
    c.optimizer.learning_rate = 5e-4
    if arg == "smoke":
        c = smoke(c)
        c.model = model_section("bart-tiny")
    elif arg == "base":
        c.model = model_section("bart-base")
        c.tokenizer.vocab_size = 50265
        c.seq_len = 512
        c.batch_size = 256
        c.steps = 500_000
        c.optimizer.learning_rate = 4e-4
        c.optimizer.warmup_steps = 10_000
        c.optimizer.schedule = "linear"
    elif arg:
        raise unknown_variant("bart_denoise", arg, VARIANTS)
    return c
