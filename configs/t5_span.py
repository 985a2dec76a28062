"""T5 span-corruption pretraining (noise density 0.15, mean span 3, Adafactor, rsqrt decay).

python -m train --config configs/t5_span.py --workdir runs/t5
python -m train --config configs/t5_span.py:smoke --workdir /tmp/t5-smoke
"""

from configs.common import base_config, model_section, smoke, unknown_variant

VARIANTS = ("smoke", "small")


def get_config(arg: str | None = None):
    c = base_config()
    c.steps = 2000
    c.model = model_section("t5-small", d_model=256, num_heads=4, d_ff=1024, num_layers=4)
    c.data.objective = "span"
    c.data.noise_density = 0.15
    c.data.mean_noise_span_length = 3.0
    c.tokenizer.kind = "unigram"
    c.tokenizer.family = "t5"
    c.optimizer.name = "adafactor"
    c.optimizer.learning_rate = 1e-2
    c.optimizer.schedule = "rsqrt"
    c.optimizer.weight_decay = 0.0
    if arg == "smoke":
        c = smoke(c)
        c.model = model_section("t5-tiny")
    elif arg == "small":
        c.model = model_section("t5-small")
        c.tokenizer.vocab_size = 32000
        c.seq_len = 512
        c.batch_size = 128
        c.steps = 524_288
        c.optimizer.warmup_steps = 10_000
    elif arg:
        raise unknown_variant("t5_span", arg, VARIANTS)
    return c
