"""Per-objective row builders: tokenize an example into an element, fill a row from a stream.

Each builder has `element(example)` (run lazily inside the grain `MapDataset`), `row(stream, rng)`
returning a dict of per-row numpy arrays (or None when a finite stream ends), and `empty()`, the
all-padding row. The keys each builder's rows carry are listed in its objective's record
(`data.objectives`): ids and masks int32, weights float32, labels -100 where a label is ignored
(padding rows, sub-tokens after the first).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np

from data import transforms as ob
from data.errors import DataError
from data.packing import RowStream, causal_row, pack_causal, pad_to, take_tokens
from data.tokenizers import Tokenizer

_SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")


class Rows:
    """Base row builder: holds the tokenizer, lengths and the truncation count."""

    per_example = False  # one element per row (padded) rather than packed/chunked rows

    def __init__(self, tokenizer: Tokenizer, seq_len: int, cfg):
        self.tok = tokenizer
        self.seq_len = seq_len
        self.cfg = cfg
        self.truncated = 0
        self.seen = 0

    def _require(self, role: str) -> int:
        found = self.tok.id_of(role)
        if found is None:
            raise DataError(
                f"tokenizer ({self.tok.family}) has no {role} token, needed by "
                f"objective {type(self).__name__}"
            )
        return found

    def _count(self, too_long: bool) -> None:
        self.seen += 1
        if too_long:
            self.truncated += 1
            if self.truncated & (self.truncated - 1) == 0:  # 1, 2, 4, 8, ...
                logging.warning(
                    "data: truncated %d of %d sequences so far to fit %d tokens",
                    self.truncated,
                    self.seen,
                    self.seq_len,
                )

    def element(self, example: dict) -> Any:
        """Tokenizes one canonical example into what `row` consumes."""
        raise NotImplementedError

    def elements(self, examples: list[dict]) -> list:
        """Tokenizes many examples (subclasses batch the tokenizer call)."""
        return [self.element(example) for example in examples]

    def empty(self) -> dict[str, np.ndarray]:
        """The all-padding row (for finished finite streams)."""
        raise NotImplementedError


class CausalRows(Rows):
    """GPT: documents as BOS ids EOS, packed with segments (or padded, `pack=False`)."""

    def __init__(self, tokenizer, seq_len, cfg):
        super().__init__(tokenizer, seq_len, cfg)
        self.per_example = not cfg.get("pack", True)
        self._bos = [i for i in (tokenizer.bos_id,) if i is not None]
        self._eos = [self._require("eos")]

    def element(self, example):
        return self.elements([example])[0]

    def elements(self, examples):
        encoded = self.tok.encode_batch_lists([e["text"] for e in examples])
        bos, eos = self._bos, self._eos  # list concatenation: a tenth of np.r_'s time
        return [np.array(bos + ids + eos, np.int32) for ids in encoded]

    def row(self, stream: RowStream, rng):
        del rng
        if not self.per_example:
            return pack_causal(stream, self.seq_len)
        doc = stream.next_element()
        if doc is None:
            return None
        self._count(doc.size > self.seq_len)
        n = min(doc.size, self.seq_len)
        segments = pad_to(np.ones(n, np.int32), self.seq_len)
        return causal_row(
            pad_to(doc, self.seq_len), segments, pad_to(np.arange(n, dtype=np.int32), self.seq_len)
        )

    def empty(self):
        zeros = np.zeros(self.seq_len, np.int32)
        return causal_row(zeros, zeros, zeros)


class MaskedRows(Rows):
    """BERT: [CLS] + chunk of concatenated documents (each ending in [SEP]), dynamically masked."""

    def __init__(self, tokenizer, seq_len, cfg):
        super().__init__(tokenizer, seq_len, cfg)
        self._cls, self._sep = self._require("cls"), self._require("sep")
        self._mask, self._pad = self._require("mask"), self._require("pad")
        special = np.asarray(tokenizer.special_ids)
        self._special = special
        self._random_ids = np.setdiff1d(np.arange(tokenizer.vocab_size), special).astype(np.int32)
        self._rate = float(cfg.get("mlm_probability", 0.15))
        self._whole_word = bool(cfg.get("whole_word_mask", False))

    def element(self, example):
        return self.elements([example])[0]

    def elements(self, examples):
        encoded = self.tok.encode_batch_with_words([e["text"] for e in examples])
        sep, start = np.array([self._sep], np.int32), np.ones(1, bool)
        return [
            {"ids": np.concatenate((ids, sep)), "word_start": np.concatenate((starts, start))}
            for ids, starts in encoded
        ]

    def row(self, stream, rng):
        chunk = take_tokens(stream, self.seq_len - 1)
        if chunk is None:
            return None
        ids = pad_to(np.r_[self._cls, chunk["ids"]].astype(np.int32), self.seq_len, self._pad)
        n = chunk["ids"].size + 1
        special = np.isin(ids, self._special) | (np.arange(self.seq_len) >= n)
        starts = pad_to(np.r_[True, chunk["word_start"]], self.seq_len, True)
        inputs, chosen = ob.mask_tokens(
            ids,
            rng,
            mask_id=self._mask,
            random_ids=self._random_ids,
            special=special,
            rate=self._rate,
            word_starts=starts if self._whole_word else None,
        )
        return {
            "input_ids": inputs,
            "attention_mask": (np.arange(self.seq_len) < n).astype(np.int32),
            "targets": ids,
            "weights": chosen.astype(np.float32),
        }

    def empty(self):
        zeros = np.zeros(self.seq_len, np.int32)
        return {
            "input_ids": zeros,
            "attention_mask": zeros,
            "targets": zeros,
            "weights": zeros.astype(np.float32),
        }


class Seq2SeqRows(Rows):
    """Source/target pairs (translation, summarization) with an optional task prefix."""

    per_example = True

    def __init__(self, tokenizer, seq_len, cfg):
        super().__init__(tokenizer, seq_len, cfg)
        self.target_len = int(cfg.get("target_length") or seq_len)
        self._eos = self._require("eos")
        self._pad = tokenizer.pad_id or 0
        self._prefix = cfg.get("task_prefix") or ""

    def element(self, example):
        source = self.tok.encode(self._prefix + example["source"])
        target = self.tok.encode(example["target"])
        self._count(source.size + 1 > self.seq_len or target.size + 1 > self.target_len)
        return (
            np.r_[source[: self.seq_len - 1], self._eos].astype(np.int32),
            np.r_[target[: self.target_len - 1], self._eos].astype(np.int32),
        )

    def row(self, stream, rng):
        del rng
        pair = stream.next_element()
        return None if pair is None else self.encode_pair(*pair)

    def encode_pair(self, source: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
        """Pads one (inputs, targets) pair into the seq2seq row format."""
        source, target = source[: self.seq_len], target[: self.target_len]
        targets = pad_to(target, self.target_len, self._pad)
        decoder_mask = (np.arange(self.target_len) < target.size).astype(np.int32)
        return {
            "input_ids": pad_to(source, self.seq_len, self._pad),
            "attention_mask": (np.arange(self.seq_len) < source.size).astype(np.int32),
            "decoder_input_ids": ob.shift_right(targets, self.tok.decoder_start_id),
            "decoder_attention_mask": decoder_mask,
            "targets": targets,
            "weights": decoder_mask.astype(np.float32),
        }

    def empty(self):
        return self.encode_pair(np.zeros(0, np.int32), np.zeros(0, np.int32))


class SpanRows(Seq2SeqRows):
    """T5 span corruption over chunks of `random_spans_helper(seq_len, ...)` raw tokens."""

    per_example = False

    def __init__(self, tokenizer, seq_len, cfg):
        super().__init__(tokenizer, seq_len, cfg)
        self._density = float(cfg.get("noise_density", 0.15))
        self._mean_span = float(cfg.get("mean_noise_span_length", 3.0))
        self.raw_len, self.target_len = ob.random_spans_helper(
            seq_len, self._density, self._mean_span
        )
        # a longer data.target_length pads the targets (e.g. to a multiple of 2 x mesh.context)
        self.target_len = max(self.target_len, int(cfg.get("target_length") or 0))
        spans = max(1, int(round(round(self.raw_len * self._density) / self._mean_span)))
        self._sentinels = tokenizer.sentinel_ids(spans)

    def element(self, example):
        return self.elements([example])[0]

    def elements(self, examples):
        return [{"ids": ids} for ids in self.tok.encode_batch([e["text"] for e in examples])]

    def row(self, stream, rng):
        chunk = take_tokens(stream, self.raw_len)
        if chunk is None:
            return None
        inputs, targets = ob.span_corrupt(
            chunk["ids"],
            rng,
            sentinel_ids=self._sentinels,
            eos_id=self._eos,
            noise_density=self._density,
            mean_noise_span_length=self._mean_span,
        )
        return self.encode_pair(inputs, targets)


class DenoiseRows(Seq2SeqRows):
    """BART: target = BOS chunk EOS; input = sentence-permuted, span-infilled target."""

    per_example = False

    def __init__(self, tokenizer, seq_len, cfg):
        super().__init__(tokenizer, seq_len, cfg)
        self.target_len = seq_len
        self._bos = [i for i in (tokenizer.bos_id,) if i is not None]
        self._mask = self._require("mask")
        self._ratio = float(cfg.get("mask_ratio", 0.3))
        self._lambda = float(cfg.get("poisson_lambda", 3.0))
        self._permute = bool(cfg.get("permute_sentences", True))
        vocab = tokenizer.backend.get_vocab(with_added_tokens=True)
        self._sentence_end = np.zeros(tokenizer.vocab_size, bool)
        self._sentence_end[[i for t, i in vocab.items() if _SENTENCE_END.search(t)]] = True

    def element(self, example):
        return self.elements([example])[0]

    def elements(self, examples):
        eos = np.array([self._eos], np.int32)
        return [
            {"ids": np.concatenate((ids, eos))}
            for ids in self.tok.encode_batch([e["text"] for e in examples])
        ]

    def row(self, stream, rng):
        chunk = take_tokens(stream, self.seq_len - len(self._bos) - 1)
        if chunk is None:
            return None
        body = chunk["ids"]
        noisy = (
            ob.permute_sentences(body, self._sentence_end[body], rng)
            if (self._permute and body.size)
            else body
        )
        noisy = ob.text_infill(
            noisy, rng, mask_id=self._mask, mask_ratio=self._ratio, poisson_lambda=self._lambda
        )
        inputs = np.r_[self._bos, noisy, self._eos].astype(np.int32)
        self._count(inputs.size > self.seq_len)
        return self.encode_pair(inputs, np.r_[self._bos, body, self._eos].astype(np.int32))


def special_frame(tok: Tokenizer) -> tuple[list[int], list[int], list[int]]:
    """(begin, middle, end) special ids around one or two segments for the family."""
    cls, sep, eos = tok.cls_id, tok.sep_id, tok.eos_id
    if cls is not None and sep is not None:
        middle = [sep, sep] if tok.family == "bart" else [sep]
        return [cls], middle, [sep]
    if eos is None:
        raise DataError(f"tokenizer ({tok.family}) has neither [CLS]/[SEP] nor EOS")
    return [], [eos], [eos]


class ClassifyRows(Rows):
    """Sequence (pair) classification: framed ids, token types, one label per row."""

    per_example = True

    def __init__(self, tokenizer, seq_len, cfg):
        super().__init__(tokenizer, seq_len, cfg)
        self._begin, self._middle, self._end = special_frame(tokenizer)
        self._pad = tokenizer.pad_id or 0

    def element(self, example):
        a = self.tok.encode(example["text"])
        b = self.tok.encode(example["text_pair"]) if "text_pair" in example else None
        room = (
            self.seq_len
            - len(self._begin)
            - len(self._end)
            - (len(self._middle) if b is not None else 0)
        )
        self._count(a.size + (0 if b is None else b.size) > room)
        a, b = ob.truncate_pair(a, b, room)
        ids, types = ob.pair_ids(a, b, begin=self._begin, middle=self._middle, end=self._end)
        return ids, types, int(example["label"])

    def row(self, stream, rng):
        del rng
        element = stream.next_element()
        if element is None:
            return None
        ids, types, label = element
        return {
            "input_ids": pad_to(ids, self.seq_len, self._pad),
            "attention_mask": (np.arange(self.seq_len) < ids.size).astype(np.int32),
            "token_type_ids": pad_to(types, self.seq_len),
            "labels": np.int32(label),
        }

    def empty(self):
        zeros = np.zeros(self.seq_len, np.int32)
        return {
            "input_ids": zeros,
            "attention_mask": zeros,
            "token_type_ids": zeros,
            "labels": np.int32(ob.IGNORE),
        }


class TagRows(Rows):
    """Token classification: words split to sub-tokens; the tag sits on each first sub-token."""

    per_example = True

    def __init__(self, tokenizer, seq_len, cfg):
        super().__init__(tokenizer, seq_len, cfg)
        self._begin, _, self._end = special_frame(tokenizer)
        self._pad = tokenizer.pad_id or 0

    def element(self, example):
        tokens, tags = example["tokens"], example["tags"]
        n = min(len(tokens), len(tags))
        ids, word_index = (
            self.tok.encode_words(tokens[:n])
            if n
            else (np.zeros(0, np.int32), np.zeros(0, np.int32))
        )
        room = self.seq_len - len(self._begin) - len(self._end)
        self._count(ids.size > room)
        ids = np.r_[self._begin, ids[:room], self._end].astype(np.int32)
        word_index = np.r_[
            [-1] * len(self._begin), word_index[:room], [-1] * len(self._end)
        ].astype(np.int32)
        return ids, ob.first_subtoken_labels(word_index, tags[:n])

    def row(self, stream, rng):
        del rng
        element = stream.next_element()
        if element is None:
            return None
        ids, labels = element
        labels = pad_to(labels, self.seq_len, ob.IGNORE)
        return {
            "input_ids": pad_to(ids, self.seq_len, self._pad),
            "attention_mask": (np.arange(self.seq_len) < ids.size).astype(np.int32),
            "labels": labels,
            "weights": (labels != ob.IGNORE).astype(np.float32),
        }

    def empty(self):
        zeros = np.zeros(self.seq_len, np.int32)
        return {
            "input_ids": zeros,
            "attention_mask": zeros,
            "labels": np.full(self.seq_len, ob.IGNORE, np.int32),
            "weights": zeros.astype(np.float32),
        }
