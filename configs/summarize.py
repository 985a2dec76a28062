"""Abstractive summarization with an encoder-decoder (CNN/DailyMail, XSum).

    # fine-tune a pretrained T5 or BART from a Hugging Face directory on CNN/DailyMail (TFDS):
    python -m train --config configs/summarize.py --config.init_from=path/to/t5-small \\
        --workdir runs/cnndm
    python -m train --config configs/summarize.py:xsum --config.init_from=path/to/bart-base \\
        --workdir runs/xsum
    # offline smoke run: the embedded pydoc topics, each text summarised into its title
    python -m train --config configs/summarize.py:smoke --workdir /tmp/sum-smoke

Without `init_from` the model (t5-small) trains from scratch with a tokenizer trained on the
data. Every eval decodes `eval_task_examples` validation articles with beam search and reports
ROUGE-1/2/L (rouge-score, stemming on) as eval_rouge1/2/L; the best-ROUGE-L checkpoint is kept.
Then:

    python -m train.evaluate --workdir runs/cnndm --split test
    python -m train.predict --workdir runs/cnndm --task summarization "$(cat article.txt)"
"""

from configs.common import base_config, model_section, smoke, unknown_variant

VARIANTS = ("xsum", "smoke")


def get_config(arg: str | None = None):
    c = base_config()
    c.task = "summarization"
    c.best_metric = "eval_rougeL"
    c.init_from = ""  # e.g. a Hugging Face t5-small or bart-base directory
    c.model = model_section("t5-small")
    c.data.name = "cnn_dailymail"
    c.data.objective = "seq2seq"
    c.data.task_prefix = "summarize: "  # T5's prefix; set '' for BART
    c.data.target_length = 128
    c.seq_len = 512
    c.batch_size = 32
    c.steps = 20_000
    c.eval_every_steps = 2000
    c.checkpoint_every_steps = 2000
    c.eval_task_examples = 500
    c.tokenizer.kind = "unigram"
    c.tokenizer.vocab_size = 32000
    c.optimizer.name = "adafactor"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 500
    c.optimizer.schedule = "constant"
    c.optimizer.weight_decay = 0.0
    c.decode.beams = 4
    c.decode.length_penalty = 0.6
    c.decode.max_new_tokens = 128
    c.decode.batch_size = 16
    if arg == "xsum":
        c.data.name = "xsum"
        c.data.target_length = 64
        c.decode.max_new_tokens = 64
    elif arg == "smoke":
        c.data.name = "pydoc_topics"
        c.data.fields = {"source": "text", "target": "title"}
        c.data.task_prefix = ""
        c = smoke(c)
        c.model = model_section("t5-tiny")
        c.optimizer.name = "adamw"
        c.optimizer.learning_rate = 1e-3
        c.data.target_length = 16
        c.eval_task_examples = 4
        c.decode.beams = 2
        c.decode.max_new_tokens = 8
    elif arg is not None:
        raise unknown_variant("summarize", arg, VARIANTS)
    return c
