"""Task metrics over a data split (`task_metrics`): what the training loop's periodic eval and
`python -m train.evaluate` report for a run's `task`."""

from __future__ import annotations

import ml_collections

from data import objectives, sources
from data.pipeline import make_pipeline
from data.transforms import IGNORE
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
    scores only the first examples of the split (in file order)."""
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
    cfg = ml_collections.ConfigDict(dict(data))
    cfg.shuffle, cfg.num_epochs, cfg.objective = False, 1, objectives.for_task(task).name
    it = make_pipeline(
        cfg, split=split, tokenizer=m.tokenizer, global_batch_size=batch_size, seq_len=m.seq_len
    )
    predictions, references, seen = [], [], 0
    names = m.tag_names or it.source.tag_names
    for batch in it:
        best = m.logits(batch).argmax(-1)
        labels = batch["labels"]
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
        seen = len(references)
        if max_examples > 0 and seen >= max_examples:
            break
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
