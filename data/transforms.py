"""Token-id transforms behind the objectives, in numpy, deterministic given a `np.random.Generator`.

* `mask_tokens`: BERT dynamic masking: exactly `round(rate * candidates)` positions chosen
  (optionally whole words), each replaced by [MASK] 80%, a random token 10%, kept 10%.
* `random_spans_helper`, `random_spans_noise_mask`, `span_corrupt`: T5 span corruption, the same
  length arithmetic and noise mask as T5's `preprocessors.py` (inputs_length 512 at density 0.15
  with mean span 3 reads 568 raw tokens and yields 114 target tokens); `reconstruct_spans`
  undoes it.
* `text_infill`, `permute_sentences`: BART denoising (Poisson(3) spans replaced by one <mask>
  each; sentences shuffled).
* `shift_right`, `pair_ids`, `first_subtoken_labels`: task formats for seq2seq, (pair)
  classification and token classification.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IGNORE = -100


def mask_tokens(
    ids: np.ndarray,
    rng: np.random.Generator,
    *,
    mask_id: int,
    random_ids: np.ndarray,
    special: np.ndarray,
    rate: float = 0.15,
    word_starts: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """BERT-style dynamic masking.

    Args:
      ids: (L,) token ids.
      rng: the generator (seeded per row and step by the pipeline).
      mask_id: the [MASK] id.
      random_ids: ids a "random token" replacement draws from (the non-special vocabulary).
      special: boolean (L,) of positions never chosen (CLS, SEP, PAD, ...).
      rate: fraction of the non-special positions chosen for prediction.
      word_starts: optional boolean (L,) marking the first sub-token of each word; when given,
        whole words are chosen (all their sub-tokens together).

    Returns:
      `(inputs, chosen)`: the corrupted (L,) ids and the boolean (L,) of chosen positions (the
      loss weights; the targets are the original `ids`).
    """
    candidates = np.flatnonzero(~special)
    chosen = np.zeros(ids.shape, bool)
    if candidates.size == 0:
        return ids.copy(), chosen
    budget = max(1, int(round(rate * candidates.size)))
    if word_starts is None:
        chosen[rng.permutation(candidates)[:budget]] = True
    else:
        chosen[_whole_word_choice(candidates, word_starts, budget, rng)] = True
    inputs = ids.copy()
    where = np.flatnonzero(chosen)
    draw = rng.random(where.size)
    inputs[where[draw < 0.8]] = mask_id
    replaced = where[(draw >= 0.8) & (draw < 0.9)]
    inputs[replaced] = random_ids[rng.integers(0, random_ids.size, replaced.size)]
    return inputs, chosen


def _whole_word_choice(candidates, word_starts, budget, rng) -> np.ndarray:
    starts = word_starts[candidates] | np.r_[True, np.diff(candidates) != 1]
    words = np.split(candidates, np.flatnonzero(starts)[1:])
    picked, total = [], 0
    for index in rng.permutation(len(words)):
        word = words[index]
        if total + word.size > budget:
            continue
        picked.append(word)
        total += word.size
        if total == budget:
            break
    return np.concatenate(picked) if picked else np.zeros(0, np.int64)


def random_spans_helper(
    inputs_length: int,
    noise_density: float,
    mean_noise_span_length: float,
    extra_tokens_per_span_inputs: int = 1,
    extra_tokens_per_span_targets: int = 1,
) -> tuple[int, int]:
    """T5's length arithmetic: the raw token count that span-corrupts to `inputs_length`.

    Inputs hold the non-noise tokens, one sentinel per noise span and EOS; targets hold the noise
    tokens, one sentinel per span and EOS.

    Args:
      inputs_length: the encoder length wanted (e.g. 512).
      noise_density: fraction of raw tokens that are noise (e.g. 0.15).
      mean_noise_span_length: mean noise span length (e.g. 3).
      extra_tokens_per_span_inputs: sentinels per span in the inputs.
      extra_tokens_per_span_targets: sentinels per span in the targets.

    Returns:
      `(tokens_length, targets_length)`, e.g. (568, 114) for (512, 0.15, 3).
    """

    def lengths(tokens_length: int) -> tuple[int, int]:
        num_noise = int(round(tokens_length * noise_density))
        num_spans = int(round(num_noise / mean_noise_span_length))
        return (
            tokens_length - num_noise + num_spans * extra_tokens_per_span_inputs + 1,
            num_noise + num_spans * extra_tokens_per_span_targets + 1,
        )

    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    inputs, targets = lengths(tokens_length)
    if noise_density == 0.5 and targets > inputs:  # T5: keep targets at the round inputs length
        tokens_length -= 1
        targets -= 1
    return tokens_length, targets


def random_spans_noise_mask(
    length: int, noise_density: float, mean_noise_span_length: float, rng: np.random.Generator
) -> np.ndarray:
    """T5's noise mask: alternating non-noise/noise spans, starting with non-noise.

    Returns:
      A boolean (length,) array, True at noise tokens; `round(length * noise_density)` of them in
      `round(num_noise / mean_noise_span_length)` spans.
    """
    original = length
    length = max(length, 2)
    num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    num_spans = max(int(round(num_noise / mean_noise_span_length)), 1)
    noise_lengths = _random_segmentation(num_noise, num_spans, rng)
    keep_lengths = _random_segmentation(length - num_noise, num_spans, rng)
    interleaved = np.stack([keep_lengths, noise_lengths], axis=1).reshape(-1)
    starts = np.cumsum(interleaved)[:-1]
    span_start = np.zeros(length, np.int64)
    span_start[starts] = 1
    return (np.cumsum(span_start) % 2 == 1)[:original]


def _random_segmentation(num_items: int, num_segments: int, rng) -> np.ndarray:
    """Splits `num_items` into `num_segments` non-empty parts uniformly at random."""
    first = np.zeros(num_items, np.int64)
    first[rng.permutation(np.arange(1, num_items))[: num_segments - 1]] = 1
    segment = np.cumsum(first)
    return np.bincount(segment, minlength=num_segments)


def span_corrupt(
    tokens: np.ndarray,
    rng: np.random.Generator,
    *,
    sentinel_ids: np.ndarray,
    eos_id: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
    """T5 span corruption with unique sentinels.

    Args:
      tokens: (N,) raw token ids (no EOS).
      rng: the generator.
      sentinel_ids: ids of <extra_id_0>, <extra_id_1>, ... (used in that order).
      eos_id: appended to inputs and targets.
      noise_density: fraction of tokens masked.
      mean_noise_span_length: mean masked span length.

    Returns:
      `(inputs, targets)`: inputs = kept tokens with one sentinel per noise span + EOS; targets =
      each sentinel followed by the tokens it replaced + EOS.
    """
    noise = random_spans_noise_mask(tokens.size, noise_density, mean_noise_span_length, rng)
    return (
        _replace_spans(tokens, noise, sentinel_ids, eos_id),
        _replace_spans(tokens, ~noise, sentinel_ids, eos_id),
    )


def _replace_spans(tokens, noise, sentinel_ids, eos_id) -> np.ndarray:
    previous = np.r_[False, noise[:-1]]
    first = noise & ~previous
    span_index = np.cumsum(first) - 1
    if first.sum() > sentinel_ids.size:
        raise ValueError(f"{int(first.sum())} noise spans but only {sentinel_ids.size} sentinels")
    out = np.where(first, sentinel_ids[np.maximum(span_index, 0)], tokens)
    out = out[~(noise & previous)]
    return np.r_[out, eos_id].astype(np.int32)


def reconstruct_spans(
    inputs: np.ndarray, targets: np.ndarray, sentinel_ids: np.ndarray, eos_id: int
) -> np.ndarray:
    """Inverts `span_corrupt`: replaces each input sentinel by the target span it names.

    Args:
      inputs: span-corrupted inputs ending in EOS (padding after it is ignored).
      targets: the matching targets ending in EOS.
      sentinel_ids: the sentinel ids `span_corrupt` used.
      eos_id: the EOS id.

    Returns:
      The original raw tokens.
    """
    inputs, targets = _until_eos(inputs, eos_id), _until_eos(targets, eos_id)
    cuts = np.flatnonzero(np.isin(targets, sentinel_ids))
    spans = {int(targets[a]): targets[a + 1 : b] for a, b in zip(cuts, [*cuts[1:], targets.size])}
    pieces = [spans.get(int(t), np.asarray([t])) for t in inputs]
    return np.concatenate(pieces).astype(np.int32) if pieces else np.zeros(0, np.int32)


def _until_eos(ids: np.ndarray, eos_id: int) -> np.ndarray:
    ends = np.flatnonzero(ids == eos_id)
    return ids[: ends[-1]] if ends.size else ids


def text_infill(
    ids: np.ndarray,
    rng: np.random.Generator,
    *,
    mask_id: int,
    mask_ratio: float = 0.3,
    poisson_lambda: float = 3.0,
) -> np.ndarray:
    """BART text infilling: spans with Poisson(lambda) lengths, each replaced by one mask.

    About `mask_ratio` of the tokens are covered; a zero-length span inserts a mask.

    Returns:
      The corrupted ids (usually shorter than `ids`).
    """
    n = ids.size
    budget = int(np.ceil(mask_ratio * n))
    if n == 0 or budget == 0:
        return ids.copy()
    lengths = []
    while sum(lengths) < budget:
        lengths.append(int(rng.poisson(poisson_lambda)))
    lengths[-1] -= sum(lengths) - budget
    starts = np.sort(rng.choice(n, size=min(len(lengths), n), replace=False))
    out, cursor = [], 0
    for start, length in zip(starts, rng.permutation(lengths)[: starts.size]):
        if start < cursor:
            continue
        out.extend(ids[cursor:start])
        out.append(mask_id)
        cursor = start + length
    out.extend(ids[cursor:])
    return np.asarray(out, np.int32)


def permute_sentences(
    ids: np.ndarray, sentence_end: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """BART sentence permutation: splits after each `sentence_end` token and shuffles sentences."""
    cuts = np.flatnonzero(sentence_end[:-1]) + 1
    sentences = np.split(ids, cuts)
    order = rng.permutation(len(sentences))
    return np.concatenate([sentences[i] for i in order]).astype(np.int32)


def shift_right(targets: np.ndarray, start_id: int) -> np.ndarray:
    """Decoder inputs: `[start] + targets[:-1]` along the last axis."""
    return np.concatenate(
        [np.full(targets.shape[:-1] + (1,), start_id, targets.dtype), targets[..., :-1]], axis=-1
    )


def truncate_pair(a: np.ndarray, b: np.ndarray | None, budget: int) -> tuple:
    """Longest-first truncation of one or two id arrays to `budget` tokens in total."""
    if b is None:
        return a[:budget], None
    while a.size + b.size > budget:
        if a.size >= b.size:
            a = a[:-1]
        else:
            b = b[:-1]
    return a, b


def pair_ids(
    a: np.ndarray,
    b: np.ndarray | None,
    *,
    begin: Sequence[int],
    middle: Sequence[int],
    end: Sequence[int],
) -> tuple[np.ndarray, np.ndarray]:
    """Joins one or two segments with family special tokens.

    BERT: begin=[CLS], middle=[SEP], end=[SEP]; BART: <s>, </s></s>, </s>; T5/GPT: -, </s>, </s>.

    Returns:
      `(ids, token_type_ids)`; type 1 covers the second segment and its closing tokens.
    """
    first = np.r_[begin, a, (middle if b is not None else end)].astype(np.int32)
    if b is None:
        return first, np.zeros(first.size, np.int32)
    second = np.r_[b, end].astype(np.int32)
    return np.r_[first, second], np.r_[np.zeros(first.size), np.ones(second.size)].astype(np.int32)


def first_subtoken_labels(word_index: np.ndarray, tags: Sequence[int]) -> np.ndarray:
    """Token-classification labels: the word's tag at its first sub-token, IGNORE elsewhere.

    Args:
      word_index: (L,) word number of each token (-1 for special tokens).
      tags: one tag id per word.

    Returns:
      (L,) int32 labels.
    """
    labels = np.full(word_index.shape, IGNORE, np.int32)
    previous = np.r_[-1, word_index[:-1]]
    first = (word_index >= 0) & (word_index != previous)
    tags = np.asarray(tags, np.int32)
    labels[first] = tags[word_index[first]]
    return labels
