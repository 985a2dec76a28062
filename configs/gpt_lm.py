"""Causal language modelling with a GPT-2-style decoder.

python -m train                                   # this config: a small GPT on the bundled
                                                  # CPython docs corpus, ~3 min on 2 cores
python -m train --config configs/gpt_lm.py:smoke  # seconds
python -m train --config configs/gpt_lm.py:gpt2 --config.data.name=lm1b   # real GPT-2 size
"""

from configs.common import base_config, model_section, smoke, unknown_variant

VARIANTS = ("smoke", "gpt2")


def get_config(arg: str | None = None):
    c = base_config()
    c.steps = 300
    c.batch_size = 16
    c.seq_len = 128
    c.log_every_steps = 20
    c.eval_every_steps = 100
    c.checkpoint_every_steps = 100
    c.sample_tokens = 48
    c.sample_prompt = "The"
    c.model = model_section(
        "gpt2",
        d_model=256,
        num_heads=4,
        d_ff=1024,
        num_layers=4,
        max_positions=256,
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
        dtype="bfloat16",  # bf16 matmuls with f32 accumulation; parameters stay f32
    )
    c.data.objective = "clm"
    c.optimizer.learning_rate = 2e-3
    c.optimizer.warmup_steps = 30
    if arg == "smoke":
        c = smoke(c)
        c.model = model_section("gpt2-tiny")
    elif arg == "gpt2":
        c.model = model_section("gpt2")
        c.tokenizer.vocab_size = 50257
        c.seq_len = 1024
        c.batch_size = 64
        c.steps = 100_000
        c.optimizer.learning_rate = 6e-4
        c.optimizer.warmup_steps = 2000
    elif arg:
        raise unknown_variant("gpt_lm", arg, VARIANTS)
    return c
