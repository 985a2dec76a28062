"""Trained models as task tools: load a checkpoint directory, predict, and score a split.

    m = load("runs/sst2")                      # a workdir, a converted directory or an HF directory
    m.classify(["a gripping, funny film"])     # [{"label": "1", "score": 0.98}]
    task_metrics(m, "classification", split="validation")   # {"accuracy": ..., "f1": ...}

Tasks and what they need:

  fill-mask        an encoder with an MLM head          top-k tokens for each mask token
  text-generation  a decoder with an LM head            the prompt and its continuation
  classification   head=classification                  label and probability
  ner              head=token_classification            entity spans over whitespace words
  translation      an encoder-decoder with an LM head   the decoded target text
  summarization    an encoder-decoder with an LM head   the decoded summary

Task metrics (`scoring.task_metrics`, used by the training loop's periodic eval and `python -m
train.evaluate`): classification -> accuracy and F1, ner -> entity precision/recall/F1 over IOB2
spans, translation -> sacreBLEU, summarization -> ROUGE-1/2/L; the language-model tasks have their
loss and perplexity from the eval step. Decoding settings come from the run's `decode` section:
beams (1 = greedy or sampling), length_penalty, max_new_tokens, temperature, top_k, top_p,
batch_size.

The package: `inference` (LoadedModel, the tasks' code), `loading` (load) and `scoring`
(task_metrics).
"""

from train.tasks.inference import DECODE_DEFAULTS, TASKS, LoadedModel, TaskError, decode_config
from train.tasks.loading import load
from train.tasks.scoring import TASK_METRICS, task_metrics

__all__ = [
    "DECODE_DEFAULTS",
    "TASKS",
    "TASK_METRICS",
    "LoadedModel",
    "TaskError",
    "decode_config",
    "load",
    "task_metrics",
]
