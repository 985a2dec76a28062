"""Task metrics on decoded predictions: the field's definitions, through the field's libraries.

accuracy, f1          sequence classification (binary F1 of the positive class, or macro F1)
entity_f1             NER: exact-match entity spans from IOB2 tags (CoNLL's definition)
bleu                  corpus BLEU with sacrebleu's default 13a tokenisation
rouge                 ROUGE-1/2/L F-measures with rouge-score (stemming on, as in the papers)
perplexity            exp of the mean token cross entropy
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    p, y = np.asarray(predictions), np.asarray(labels)
    return float(np.mean(p == y)) if len(y) else 0.0


def f1(
    predictions: Sequence[int],
    labels: Sequence[int],
    num_classes: int | None = None,
    positive: int | None = 1,
) -> float:
    """Binary F1 of class `positive`, or macro F1 over classes when `positive` is None."""
    p, y = np.asarray(predictions), np.asarray(labels)
    classes = (
        [positive] if positive is not None else range(num_classes or int(max(p.max(), y.max())) + 1)
    )
    scores = []
    for c in classes:
        tp = np.sum((p == c) & (y == c))
        fp, fn = np.sum((p == c) & (y != c)), np.sum((p != c) & (y == c))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(scores))


def iob2_spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """Entity spans (type, start, end exclusive) of an IOB2 sequence. An I- tag that does not
    continue an entity of its type starts a new one (the CoNLL evaluation script's reading)."""
    spans, start, kind = set(), None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, label = tag.partition("-")
        continues = prefix == "I" and kind == label
        if start is not None and not continues:
            spans.add((kind, start, i))
            start, kind = None, None
        if prefix == "B" or (prefix == "I" and not continues):
            start, kind = i, label
    return spans


def entity_f1(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> dict:
    """Micro precision / recall / F1 over exact entity spans, summed over sentences."""
    tp = n_pred = n_ref = 0
    for pred, ref in zip(predictions, references, strict=True):
        p, r = iob2_spans(pred), iob2_spans(ref)
        tp, n_pred, n_ref = tp + len(p & r), n_pred + len(p), n_ref + len(r)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_ref if n_ref else 0.0
    f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f}


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0-100), one reference per hypothesis."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures (0-100)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for pred, ref in zip(predictions, references, strict=True):
        for key, score in scorer.score(ref, pred).items():
            totals[key] += score.fmeasure
    n = max(len(predictions), 1)
    return {k: 100.0 * v / n for k, v in totals.items()}


def perplexity(mean_cross_entropy: float) -> float:
    return math.exp(min(mean_cross_entropy, 50.0))
