"""Requests as model rows: one forward pass answers every request that shares its input.

lm-eval's requests repeat themselves: a multiple-choice question sends its context once per
answer, and a causal pair whose continuation is one token long feeds the model the context alone.
Two causal requests whose `(context + continuation)[:-1]` is the same (after the left
truncation to max_length + 1 tokens) run the same input through the model; they differ only in
the last token scored and in where their continuation starts. So they share one row, which
returns the next-token log-probabilities along the row plus the log-probabilities of up to
`CANDIDATES` last tokens (the `hf` backend's "logits cache" for one-token continuations does the
same, lm-eval's Collator `group_by="contexts"`). Encoder-decoder requests share a row when they
are identical.

Rows are sorted longest first, as lm-eval's backends sort requests, so that a batch's rows
have similar lengths and little padding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

CANDIDATES = 8  # last tokens scored per causal row (a question's answers); more take a new row


@dataclasses.dataclass
class Row:
    """One model input and the requests it answers.

    Attributes:
      tokens: the causal input (context + continuation, truncated, without its last token) or
        the encoder input.
      target: the decoder's continuation (encoder-decoders), else empty.
      asks: (request index, continuation length, slot): where each request's answer is; the
        slot indexes `lasts` (causal).
      lasts: the candidate last tokens (causal).
    """

    tokens: list[int]
    target: list[int] = dataclasses.field(default_factory=list)
    asks: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)
    lasts: list[int] = dataclasses.field(default_factory=list)

    def ask(self, index: int, length: int, last: int | None = None) -> None:
        if last is not None and last not in self.lasts:
            self.lasts.append(last)
        slot = self.lasts.index(last) if last is not None else 0
        self.asks.append((index, length, slot))


def causal_rows(pairs: Sequence[tuple[list[int], list[int]]], max_length: int) -> list[Row]:
    """(context, continuation) token pairs -> rows, each request in exactly one."""
    open_rows: dict[tuple[int, ...], Row] = {}
    rows = []
    for index, (context, continuation) in enumerate(pairs):
        window = (context + continuation)[-(max_length + 1) :]
        key = tuple(window[:-1])
        row = open_rows.get(key)
        if row is None or (window[-1] not in row.lasts and len(row.lasts) == CANDIDATES):
            row = open_rows[key] = Row(list(key))
            rows.append(row)
        row.ask(index, len(continuation), window[-1])
    return sorted(rows, key=lambda r: -len(r.tokens))


def seq2seq_rows(pairs: Sequence[tuple[list[int], list[int]]], max_length: int) -> list[Row]:
    """(context, continuation) -> rows of encoder input and decoder target; identical
    requests share one."""
    by_pair: dict[tuple, Row] = {}
    for index, (context, continuation) in enumerate(pairs):
        source, target = context[-max_length:], continuation[-max_length:]
        row = by_pair.setdefault((tuple(source), tuple(target)), Row(source, target))
        row.ask(index, len(target))
    return sorted(by_pair.values(), key=lambda r: -len(r.tokens) - len(r.target))
