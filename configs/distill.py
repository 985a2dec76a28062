"""Knowledge distillation: a smaller student trained against a frozen teacher (DistilBERT's
recipe; train/distill.py). The run's model is the student; `model.name` '' takes the teacher's
architecture with the `model` fields set here (fewer layers), and the student starts from the
teacher layers that `distill.student_layers` names.

    # task-specific, on SST-2: the teacher is a fine-tuned classifier (a finetune_cls.py run)
    SST2_DIR=path/to/sst2 python -m train --config configs/finetune_cls.py:local --workdir runs/sst2
    SST2_DIR=path/to/sst2 python -m train --config configs/distill.py:sst2 \\
        --config.distill.teacher=runs/sst2 --workdir runs/sst2-student
    python -m train --config configs/distill.py:smoke --config.distill.teacher=RUN --workdir W
    # general distillation with masked LM (the embedded corpus), from all-MiniLM-L6-v2's body:
    python -m train --config configs/distill.py:mlm --workdir runs/mlm-student
    # an encoder-decoder: the Multi30k translation model with 2 of its 3 decoder layers
    MULTI30K_DIR=path/to/multi30k python -m train --config configs/distill.py:translate \\
        --config.distill.teacher=runs/multi30k --workdir runs/multi30k-student

The students: 3 of all-MiniLM-L6-v2's 6 layers (0, 2, 4; DistilBERT kept every other layer of
BERT's 12), and for translation the encoder copied whole and decoder layers 0 and 2 of 3
(DistilBART's "shrink and fine-tune"). all-MiniLM-L6-v2 has no masked-LM head, so `:mlm`
teaches through the hidden states alone (`alpha_kd` 0). `:smoke`, `:sst2` and `:translate` need
`distill.teacher`.
"""

from configs import finetune_cls, translate
from configs.common import base_config, minilm_dir, model_section, unknown_variant

VARIANTS = ("smoke", "sst2", "mlm", "translate")


def _classifier(arg: str):
    """Task-specific distillation on SST-2, read as finetune_cls.py:local / :smoke read it."""
    c = finetune_cls.get_config("smoke" if arg == "smoke" else "local")
    c.init_from = ""  # the student starts from the teacher's layers
    c.model = model_section(
        "", head="classification", num_labels=2, num_layers=3, dtype=c.model.dtype
    )
    c.distill.student_layers = (0, 2, 4)
    return c


def _mlm():
    c = base_config()
    c.model = model_section("", head="mlm", num_layers=3)
    c.data.objective = "mlm"
    c.data.whole_word_mask = True
    c.distill.teacher = minilm_dir()
    c.distill.student_layers = (0, 2, 4)
    c.distill.alpha_kd = 0.0  # the teacher has no MLM head: it teaches through hidden states
    c.distill.alpha_task = 0.5
    c.distill.alpha_hidden = 0.5
    c.seq_len = 128
    c.batch_size = 16
    c.steps = 600
    c.log_every_steps = 10
    c.eval_every_steps = 100
    c.eval_batches = 16
    c.checkpoint_every_steps = 100
    c.optimizer.learning_rate = 1e-4
    c.optimizer.warmup_steps = 60
    c.optimizer.schedule = "linear"
    return c


def _translation():
    c = translate.get_config("multi30k")
    c.model = model_section("", num_decoder_layers=2, dtype=c.model.get("dtype"))
    c.distill.student_decoder_layers = (0, 2)  # the encoder is copied whole
    # "Shrink and fine-tune": the student starts from the trained teacher's weights, so 600 steps
    # (about 2.6 epochs) at half the teacher's peak rate, after a short warm-up; evaluated (BLEU,
    # beam 4) and saved at the end.
    c.steps = 600
    c.eval_every_steps = 600
    c.checkpoint_every_steps = 600
    c.optimizer.learning_rate = 5e-4
    c.optimizer.warmup_steps = 30
    return c


def get_config(arg: str | None = None):
    if arg in (None, "sst2", "smoke"):
        c = _classifier(arg or "sst2")
    elif arg == "mlm":
        c = _mlm()
    elif arg == "translate":
        c = _translation()
    else:
        raise unknown_variant("distill", arg, VARIANTS)
    return c
