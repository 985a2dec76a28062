"""Task metrics against hand counts and the reference implementations."""

import numpy as np
import pytest

from train import metrics


def test_accuracy_and_f1_by_hand():
    pred, gold = [1, 0, 1, 1, 0, 1], [1, 0, 0, 1, 1, 1]
    assert metrics.accuracy(pred, gold) == pytest.approx(4 / 6)
    # positive class 1: tp 3, fp 1, fn 1 -> 6 / 8
    assert metrics.f1(pred, gold) == pytest.approx(0.75)
    # class 0: tp 1, fp 1, fn 1 -> 0.5; macro (0.75 + 0.5) / 2
    assert metrics.f1(pred, gold, num_classes=2, positive=None) == pytest.approx(0.625)


def test_bleu_by_hand():
    assert metrics.bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(
        100.0
    )
    # p1..p4 = 6/7, 5/6, 4/5, 3/4; no brevity penalty: (3/7) ** (1/4)
    score = metrics.bleu(["the cat sat on the mat today"], ["the cat sat on the mat"])
    assert score == pytest.approx(100 * (3 / 7) ** 0.25, abs=1e-4)


def test_rouge_by_hand():
    r = metrics.rouge(["the cat sat"], ["the cat ate"])
    assert r["rouge1"] == pytest.approx(200 / 3, abs=1e-6)  # 2 of 3 unigrams both ways
    assert r["rouge2"] == pytest.approx(50.0)  # "the cat" of 2 bigrams
    assert r["rougeL"] == pytest.approx(200 / 3, abs=1e-6)


def test_iob2_spans():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "I-ORG", "O"]
    assert metrics.iob2_spans(tags) == {("PER", 0, 2), ("LOC", 3, 5), ("LOC", 5, 6), ("ORG", 6, 7)}


def test_entity_f1_matches_seqeval():
    seqeval = pytest.importorskip("seqeval.metrics")
    rng = np.random.default_rng(0)
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]
    refs = [[labels[i] for i in rng.integers(0, 9, rng.integers(1, 20))] for _ in range(300)]
    preds = [[t if rng.random() < 0.8 else labels[rng.integers(0, 9)] for t in s] for s in refs]
    ours = metrics.entity_f1(preds, refs)
    assert ours["f1"] == pytest.approx(seqeval.f1_score(refs, preds), abs=1e-9)
    assert ours["precision"] == pytest.approx(seqeval.precision_score(refs, preds), abs=1e-9)
    assert ours["recall"] == pytest.approx(seqeval.recall_score(refs, preds), abs=1e-9)
    assert 0.3 < ours["f1"] < 0.95
