"""Row streams and the three ways of filling a row: packing, concatenate-and-chunk, padding.

The global batch of step `t` has `global_batch_size` rows. Row `r` reads its own stream of the
global element sequence, elements `r, r + G, r + 2G, ...` (G = global batch size), through a
`RowStream` whose cursor is two integers (element number, tokens already used). That makes every
row independent of how rows are spread over hosts: host `p` of `n` builds rows
`[p * G/n, (p+1) * G/n)`, reads only their elements, and the union over hosts is exactly the
one-host global batch. The cursors are the checkpointable iterator state.

* `pack_causal`: packs whole documents into a row with `segment_ids` (1, 2, ...; 0 = padding) and
  per-segment `positions`; a document longer than the room left is split, the next piece
  repeating the last token so every next-token target is still learned once.
* `take_tokens`: the next `n` tokens of the concatenated documents (MLM, span corruption and
  denoising rows are full chunks, no padding except at the end of a finite stream).
* `RowStream.next_element`: one element per row, for padded task formats.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


class RowStream:
    """Elements `row, row + stride, ...` of an indexable sequence, with a resumable cursor.

    Attributes:
      row: the global row number.
      k: how many elements of this stream are fully consumed.
      offset: tokens of element `k` already consumed (for streams that split elements).
    """

    def __init__(
        self,
        elements: Sequence[Any],
        row: int,
        stride: int,
        length: int | None,
        read_ahead: int = 2,
        transform: Callable[[list], list] | None = None,
    ):
        self._elements = elements
        self._transform = transform
        self.row = row
        self._stride = stride
        self._length = length
        self.read_ahead = read_ahead
        self.k = 0
        self.offset = 0
        self._cache: dict[int, Any] = {}

    def current(self) -> Any | None:
        """The element at the cursor, or None when a finite stream is exhausted."""
        index = self.row + self.k * self._stride
        if self._length is not None and index >= self._length:
            return None
        if index not in self._cache:
            self.fill(read_many(self._elements, self.missing(), self._transform))
        return self._cache[index]

    def upcoming(self) -> list[int]:
        """Indices of the next `read_ahead` elements of this stream."""
        first = self.row + self.k * self._stride
        indices = [first + j * self._stride for j in range(self.read_ahead)]
        return [i for i in indices if self._length is None or i < self._length]

    def missing(self) -> list[int]:
        """Uncached upcoming indices, once any of the next `read_ahead / 2` is uncached."""
        upcoming = self.upcoming()
        if all(i in self._cache for i in upcoming[: max(1, self.read_ahead // 2)]):
            return []
        return [i for i in upcoming if i not in self._cache]

    def fill(self, elements: dict[int, Any]) -> None:
        """Adds read elements to the cache (a cache only: it is not part of the state)."""
        first = self.row + self.k * self._stride
        self._cache = {i: e for i, e in {**self._cache, **elements}.items() if i >= first}

    def advance(self) -> None:
        """Moves to the next element."""
        self.k += 1
        self.offset = 0

    def next_element(self) -> Any | None:
        """Returns the element at the cursor and advances, or None at the end."""
        element = self.current()
        if element is not None:
            self.advance()
        return element

    @property
    def cursor(self) -> list[int]:
        """`[k, offset]`, JSON-serialisable."""
        return [self.k, self.offset]

    @cursor.setter
    def cursor(self, value: Sequence[int]) -> None:
        self.k, self.offset = int(value[0]), int(value[1])


def read_many(
    elements: Sequence[Any], indices: list[int], transform: Callable[[list], list] | None = None
) -> dict[int, Any]:
    """Reads elements with grain's batched read (one ArrayRecord call, not one per element).

    `transform` maps the list of read elements (e.g. batch tokenization) before caching.
    """
    getitems = getattr(elements, "_getitems", None)
    values = list(getitems(indices) if getitems else [elements[i] for i in indices])
    return dict(zip(indices, transform(values) if transform else values))


def pack_causal(stream: RowStream, length: int, min_split: int | None = None) -> dict | None:
    """Packs documents (int32 id arrays) into one causal-LM row.

    Args:
      stream: a stream of documents, each already wrapped in BOS/EOS.
      length: the row length L.
      min_split: split a document that does not fit only if at least this much room is left
        (default min(32, L // 8)); otherwise the row ends with padding and the document starts
        the next row.

    Returns:
      A dict of (L,) arrays: input_ids, targets, weights, positions, segment_ids, attention_mask;
      or None if the stream is exhausted.
    """
    min_split = max(2, min(32, length // 8) if min_split is None else min_split)
    pieces, filled = [], 0
    while filled < length and (doc := stream.current()) is not None:
        rest, room = doc[stream.offset :], length - filled
        if rest.size <= room:
            take = rest.size
            stream.advance()
        elif filled == 0 or room >= min_split:
            take = room
            stream.offset += room - 1  # the next piece starts with this piece's last token
        else:
            break
        pieces.append(rest[:take])
        filled += take
    if not pieces:
        return None
    # The row's arrays in a few whole-row numpy calls, not three slice writes per document.
    sizes = np.fromiter(map(len, pieces), np.int64, len(pieces))
    starts = np.cumsum(sizes) - sizes
    ids, segments, positions = (np.zeros(length, np.int32) for _ in range(3))
    ids[:filled] = np.concatenate(pieces)
    segments[:filled] = np.repeat(np.arange(1, len(pieces) + 1, dtype=np.int32), sizes)
    positions[:filled] = np.arange(filled, dtype=np.int32) - np.repeat(starts, sizes)
    return causal_row(ids, segments, positions)


def causal_row(ids: np.ndarray, segments: np.ndarray, positions: np.ndarray) -> dict:
    """Next-token targets within each segment; the last token of a segment has weight 0."""
    same = np.r_[segments[1:] == segments[:-1], False] & (segments > 0)
    targets = np.where(same, np.r_[ids[1:], 0], 0).astype(np.int32)
    return {
        "input_ids": ids,
        "targets": targets,
        "weights": same.astype(np.float32),
        "positions": positions,
        "segment_ids": segments,
        "attention_mask": (segments > 0).astype(np.int32),
    }


def take_tokens(stream: RowStream, count: int) -> dict[str, np.ndarray] | None:
    """Returns the next `count` tokens of the concatenated stream (fewer only at its end).

    Elements are dicts of equal-length arrays (`ids` and optionally `word_start`); the result
    concatenates each key. Returns None when the stream is exhausted.
    """
    parts: list[dict[str, np.ndarray]] = []
    got = 0
    while got < count and (element := stream.current()) is not None:
        start = stream.offset
        take = min(count - got, element["ids"].size - start)
        parts.append({key: value[start : start + take] for key, value in element.items()})
        got += take
        if start + take >= element["ids"].size:
            stream.advance()
        else:
            stream.offset = start + take
    if not parts:
        return None
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def pad_to(array: np.ndarray, length: int, value: int | float = 0) -> np.ndarray:
    """Right-pads (or cuts) a 1-D array to `length`."""
    out = np.full(length, value, array.dtype)
    out[: min(length, array.size)] = array[:length]
    return out
