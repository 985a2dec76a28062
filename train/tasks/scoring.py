"""Task metrics over a data split (`task_metrics`): what the training loop's periodic eval and
`python -m train.evaluate` report for a run's `task`."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from data import objectives, sources
from data.pipeline import make_pipeline
from data.transforms import IGNORE
from train import distributed
from train import metrics as task_scores
from train.tasks.inference import LoadedModel

# the run's `task` -> the metric names it adds to evaluation (prefixed eval_ in the loop)
TASK_METRICS = {
    "classification": ("accuracy", "f1"),
    "ner": ("entity_precision", "entity_recall", "entity_f1"),
    "translation": ("bleu",),
    "summarization": ("rouge1", "rouge2", "rougeL"),
}


def task_metrics(
    m: LoadedModel,
    task: str,
    *,
    data: ml_collections.ConfigDict,
    split: str,
    batch_size: int,
    max_examples: int = 0,
) -> dict[str, float]:
    """Scores `m` on a split with the task's metric (see TASK_METRICS); `max_examples` > 0
    scores only the first examples of the split (in file order).

    With several hosts (`m.place` set), every host calls this in step: each reads and runs its
    rows of every global batch (and decodes its share of every chunk), the predictions are
    gathered, and each host scores all of them, so the result is the one host's result.
    """
    if task not in TASK_METRICS:
        return {}
    m.require(task)
    if task in ("translation", "summarization"):
        source = sources.load_source(data, split, objectives.for_task(task).name)
        count = len(source) if max_examples <= 0 else min(max_examples, len(source))
        examples = source._getitems(range(count))
        hypotheses = m.seq2seq([e["source"] for e in examples], task)
        references = [e["target"] for e in examples]
        if task == "translation":
            return {"bleu": task_scores.bleu(hypotheses, references)}
        return task_scores.rouge(hypotheses, references)
    predictions, references = _label_predictions(m, task, data, split, batch_size, max_examples)
    if task == "classification":
        classes = m.model_config.num_labels
        return {
            "accuracy": task_scores.accuracy(predictions, references),
            "f1": task_scores.f1(
                predictions, references, num_classes=classes, positive=1 if classes == 2 else None
            ),
        }
    scores = task_scores.entity_f1(predictions, references)
    return {f"entity_{k}": v for k, v in scores.items()}


def _label_predictions(m: LoadedModel, task: str, data, split: str, batch_size: int, limit: int):
    """(predicted, reference) class ids (classification) or tag-name lists (ner) of the split's
    examples, in file order, up to `limit` examples (0 = all)."""
    cfg = ml_collections.ConfigDict(dict(data))
    cfg.shuffle, cfg.num_epochs, cfg.objective = False, 1, objectives.for_task(task).name
    hosts = jax.process_count() if m.place is not None else 1
    it = make_pipeline(
        cfg,
        split=split,
        tokenizer=m.tokenizer,
        global_batch_size=batch_size,
        seq_len=m.seq_len,
        process_index=jax.process_index() if hosts > 1 else 0,
        process_count=hosts,
        agree=distributed.width_agreement(cfg) if hosts > 1 else None,
    )
    predictions, references = [], []
    names = m.tag_names or it.source.tag_names
    while (batch := distributed.next_in_step(it, batch_size // hosts)) is not None:
        best = m.logits(batch).argmax(-1)  # every host's rows, in global order
        labels = batch["labels"]
        if hosts > 1:
            labels = np.asarray(multihost_utils.process_allgather(labels, tiled=True))
        for row in range(labels.shape[0]):
            if task == "classification":
                if labels[row] >= 0:
                    predictions.append(int(best[row]))
                    references.append(int(labels[row]))
            else:
                keep = labels[row] != IGNORE
                if keep.any():
                    predictions.append([names[int(t)] for t in best[row][keep]])
                    references.append([names[int(t)] for t in labels[row][keep]])
        if limit > 0 and len(references) >= limit:
            break
    return predictions, references
