"""Objective transforms: masking statistics, T5 span arithmetic and round trip, BART noise."""

import numpy as np
import pytest

from data import transforms as ob

VOCAB = 1000
SPECIAL = np.arange(5)  # 0..4 play [PAD] [UNK] [CLS] [SEP] [MASK]
MASK = 4
RANDOM_IDS = np.arange(5, VOCAB, dtype=np.int32)


def _masking_counts(word_starts_fn=None, rows=40, length=512):
    chosen = masked = random = kept = total = 0
    for row in range(rows):
        rng = np.random.default_rng([7, row])
        ids = rng.integers(5, VOCAB, length).astype(np.int32)
        ids[0], ids[-1] = 2, 3
        special = np.isin(ids, SPECIAL)
        starts = word_starts_fn(rng, length) if word_starts_fn else None
        inputs, pick = ob.mask_tokens(
            ids, rng, mask_id=MASK, random_ids=RANDOM_IDS, special=special, word_starts=starts
        )
        assert not pick[special].any()
        assert (inputs[~pick] == ids[~pick]).all()
        total += (~special).sum()
        chosen += pick.sum()
        masked += (inputs[pick] == MASK).sum()
        same = inputs[pick] == ids[pick]
        kept += same.sum()
        random += (~same & (inputs[pick] != MASK)).sum()
    return total, chosen, masked, random, kept


def test_mlm_masking_statistics_over_20k_tokens():
    total, chosen, masked, random, kept = _masking_counts()
    assert total > 20_000
    assert abs(chosen / total - 0.15) < 0.01
    assert abs(masked / chosen - 0.8) < 0.02
    # A random replacement can draw the original id (1 in 995): it then counts as kept.
    assert abs(random / chosen - 0.1) < 0.02
    assert abs(kept / chosen - 0.1) < 0.02


def test_whole_word_masking_takes_whole_words():
    def starts(rng, length):
        s = rng.random(length) < 0.4
        s[0] = True
        return s

    rng = np.random.default_rng(3)
    ids = rng.integers(5, VOCAB, 400).astype(np.int32)
    word_starts = starts(rng, 400)
    _, pick = ob.mask_tokens(
        ids,
        rng,
        mask_id=MASK,
        random_ids=RANDOM_IDS,
        special=np.zeros(400, bool),
        word_starts=word_starts,
    )
    words = np.cumsum(word_starts)
    for word in np.unique(words[pick]):
        assert pick[words == word].all(), f"word {word} only partly chosen"
    assert abs(pick.sum() - 60) <= 3
    total, chosen, *_ = _masking_counts(starts)
    assert abs(chosen / total - 0.15) < 0.01


@pytest.mark.parametrize(
    "inputs_length,density,span,expected",
    [
        (512, 0.15, 3.0, (568, 114)),
        (626, 0.15, 3.0, (694, 140)),
        (1024, 0.5, 3.0, (1534, 1024)),  # T5's density-0.5 rule trims one token
    ],
)
def test_random_spans_helper_matches_t5(inputs_length, density, span, expected):
    assert ob.random_spans_helper(inputs_length, density, span) == expected


def test_span_corruption_lengths_order_and_round_trip():
    sentinels = np.arange(32099, 31999, -1, dtype=np.int32)  # T5: <extra_id_0> = 32099
    tokens = np.random.default_rng(0).integers(3, 32000, 568).astype(np.int32)
    for seed in range(5):
        noise = ob.random_spans_noise_mask(568, 0.15, 3.0, np.random.default_rng(seed))
        assert noise.sum() == 85 and not noise[0]
        assert (np.diff(noise.astype(int)) == 1).sum() == 28  # 28 noise spans
        inputs, targets = ob.span_corrupt(
            tokens, np.random.default_rng(seed), sentinel_ids=sentinels, eos_id=1
        )
        assert inputs.size == 512 and targets.size == 114
        assert inputs[-1] == 1 and targets[-1] == 1
        used_in = inputs[np.isin(inputs, sentinels)]
        used_out = targets[np.isin(targets, sentinels)]
        np.testing.assert_array_equal(used_in, sentinels[:28])
        np.testing.assert_array_equal(used_out, sentinels[:28])
        assert targets[0] == sentinels[0]
        np.testing.assert_array_equal(ob.reconstruct_spans(inputs, targets, sentinels, 1), tokens)


def test_span_reconstruction_detects_a_wrong_target():
    sentinels = np.arange(900, 800, -1, dtype=np.int32)
    tokens = np.arange(10, 110, dtype=np.int32)
    inputs, targets = ob.span_corrupt(
        tokens, np.random.default_rng(1), sentinel_ids=sentinels, eos_id=1
    )
    targets = targets.copy()
    targets[1] += 1
    assert not np.array_equal(ob.reconstruct_spans(inputs, targets, sentinels, 1), tokens)


def test_text_infilling_replaces_each_span_by_one_mask():
    ids = np.arange(10, 1010, dtype=np.int32)
    out = ob.text_infill(ids, np.random.default_rng(0), mask_id=4, mask_ratio=0.3)
    kept = out[out != 4]
    assert np.all(np.diff(kept) > 0), "surviving tokens keep their order"
    removed = ids.size - kept.size
    assert 0.2 * ids.size < removed <= 0.3 * ids.size
    assert removed / max(1, (out == 4).sum()) > 2  # Poisson(3) spans, not single tokens


def test_sentence_permutation_keeps_sentences_whole():
    ids = np.arange(1, 31, dtype=np.int32)
    ends = ids % 5 == 0
    out = ob.permute_sentences(ids, ends, np.random.default_rng(2))
    assert sorted(out.tolist()) == ids.tolist() and not np.array_equal(out, ids)
    sentences = [tuple(s) for s in np.split(out, np.flatnonzero(out % 5 == 0)[:-1] + 1)]
    assert sorted(sentences) == [tuple(range(i, i + 5)) for i in range(1, 31, 5)]


def test_first_subtoken_labels_and_pairs():
    labels = ob.first_subtoken_labels(np.array([-1, 0, 1, 1, 2, 2, 2, -1]), [7, 8, 9])
    np.testing.assert_array_equal(labels, [-100, 7, 8, -100, 9, -100, -100, -100])
    ids, types = ob.pair_ids(np.array([5, 6]), np.array([7]), begin=[101], middle=[102], end=[102])
    np.testing.assert_array_equal(ids, [101, 5, 6, 102, 7, 102])
    np.testing.assert_array_equal(types, [0, 0, 0, 0, 1, 1])
    a, b = ob.truncate_pair(np.arange(10), np.arange(4), 8)
    assert (a.size, b.size) == (4, 4)
