"""The entry point: a deterministic, resumable, per-host batch iterator for every objective.

    it = make_pipeline(cfg, split="train", tokenizer=tok, global_batch_size=64, seq_len=512,
                       seed=0, process_index=jax.process_index(),
                       process_count=jax.process_count())
    batch = next(it)          # dict of numpy arrays, leading dim global_batch_size // count
    state = it.get_state()    # JSON-serialisable; it.set_state(state) resumes exactly

How: the split's examples are put in order by a grain `MapDataset` of their indices (shuffled
with `seed`, reshuffled each epoch, repeated) and read and tokenized in batches (`Examples`,
`Rows.elements`). Row `r` of every global batch reads
elements `r, r + G, r + 2G, ...` (`data.packing.RowStream`); each host builds only its rows, so
a fixed seed gives the same global batches on any number of hosts, hosts read disjoint shards,
and the iterator state is one `[element, offset]` cursor per local row plus the step.
Randomness (masking, spans) comes from `np.random.default_rng([seed, row, step])`, also
independent of the host layout.

`cfg` is the `data` ConfigDict; `default_config()` lists every key. Besides the source keys of
`data.sources` (name, files, format, splits, fields, label_names, tag_names, text_mode,
table_format, token_column, tag_column, data_dir, download) it reads:

  objective      clm | mlm | span | denoise | seq2seq | classify | tag (default clm; the
                 records of data.objectives)
  pack           clm: pack documents with segment ids (True) or pad one per row (False)
  mlm_probability, whole_word_mask            mlm (0.15, False)
  noise_density, mean_noise_span_length       span (0.15, 3.0)
  mask_ratio, poisson_lambda, permute_sentences   denoise (0.3, 3.0, True)
  task_prefix    seq2seq: text put before every source, e.g. "translate English to German: "
  target_length  seq2seq: decoder length (default seq_len; span derives it from T5's formula
                 and pads up to target_length when that is longer)
  shuffle        shuffle the training split (default True for "train", False otherwise)
  num_epochs     None: "train" repeats forever, other splits run once; N >= 1: N epochs;
                 0: forever
  trim_padding   0 (off) or N: per-example objectives (classify, tag, seq2seq, clm with
                 pack=False) pad each batch only to the smallest multiple of N that holds its
                 longest row (at most seq_len), on the input and the target side separately.
                 Short-sentence tasks then spend little compute on padding, at the price of
                 one compilation per length bucket (seq_len / N per side). With several hosts
                 the hosts agree on each global batch's widths (`make_pipeline(agree=...)`).
  workers        N > 0: the train split's rows are read, tokenized and built in N grain worker
                 processes (data/workers.py), with the same batches and iterator state as
                 0 (in the process); -1 (the default): a quarter of the cores, at most 16
                 (`data.workers.default_workers`). Evaluation splits use none.
  prefetch       batches the training loop builds and places on the devices ahead of the
                 step that runs (default 2; 0: built when needed)

Local files are prepared to ArrayRecord under `data_dir` on first use; with several hosts on a
shared file system, let process 0 call `make_pipeline` (or `data.sources.load_source`) first.

Finite iteration (num_epochs set) ends when the last element is used. For per-example objectives
(seq2seq, classify, tag, clm with pack=False) every host stops at the same step; for packed and
chunked ones the hosts may disagree, so multi-host evaluation of those should take a fixed
number of batches from a repeating iterator.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import ml_collections
import numpy as np
from ml_collections.config_dict import placeholder

from data import objectives, sources
from data.errors import DataError
from data.rows import Rows
from data.tokenizers import Tokenizer, find_tokenizer, load_tokenizer, train_tokenizer
from data.workers import RowBuilder, WorkerRows, default_workers

STATE_VERSION = 1


def default_config() -> ml_collections.ConfigDict:
    """Returns the `data` config with every key and its default (the embedded pydoc corpus).

    Keys without a value are typed placeholders, so that the command line can set them."""
    return ml_collections.ConfigDict(
        {
            "name": sources.DEFAULT_NAME,
            "files": placeholder(dict),
            "format": "auto",
            "splits": {},
            "fields": {},
            "label_names": placeholder(tuple),
            "tag_names": placeholder(tuple),
            "text_mode": "lines",
            "table_format": "auto",
            "token_column": 0,
            "tag_column": -1,
            "data_dir": placeholder(str),
            "download": True,
            "objective": "clm",
            "pack": True,
            "mlm_probability": 0.15,
            "whole_word_mask": False,
            "noise_density": 0.15,
            "mean_noise_span_length": 3.0,
            "mask_ratio": 0.3,
            "poisson_lambda": 3.0,
            "permute_sentences": True,
            "task_prefix": "",
            "target_length": placeholder(int),
            "shuffle": placeholder(bool),
            "num_epochs": placeholder(int),
            "trim_padding": 0,
            "workers": -1,
            "prefetch": 2,
        }
    )


class Examples(Sequence):
    """A split's canonical examples in the run's order, read in batches.

    `order` is grain's `MapDataset` of source indices (range, shuffle, repeat); item `i` is the
    source's example `order[i]`. The source is read directly rather than through
    `MapDataset.source`, whose per-record read metrics cost a tenth of the pipeline's time on
    short documents; the order is the same.
    """

    def __init__(self, source: sources.Source, order: grain.MapDataset):
        self.source, self.order = source, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.source[self.order[index]]

    def _getitems(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return self.source._getitems(self.order._getitems(list(indices)))


class _Indices(grain.MapDataset):
    """`0 .. n-1` as a grain `MapDataset` whose batched read is one list (`MapDataset.range`
    reads index by index, through grain's per-element statistics)."""

    def __init__(self, n: int):
        super().__init__([])
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return int(index) % self._n  # shuffle hands on epoch * n + its index, as for sources

    def _getitems(self, indices: Sequence[int]) -> list[int]:
        return [int(i) % self._n for i in indices]


class BatchIterator(Iterator[dict[str, np.ndarray]]):
    """Per-host batches of a global batch; `get_state`/`set_state` resume exactly.

    Attributes:
      elements: the split's `Examples` in global order (shuffled, repeated).
      rows: the objective's row builder (its `truncated`/`seen` counts are logged).
      source: the split's `data.sources.Source` (label and tag names).
      step: batches produced so far.
    """

    def __init__(
        self,
        elements,
        rows: Rows,
        source,
        *,
        global_batch_size: int,
        process_index: int,
        process_count: int,
        seed: int,
        length: int | None,
        trim_padding: int = 0,
        workers: int = 0,
        agree=None,
    ):
        self.rows, self.source = rows, source
        self._trim = int(trim_padding) if rows.per_example else 0
        self._agree = agree if self._trim and process_count > 1 else None
        self._seed, self._length, self.elements = seed, length, elements
        self._global = global_batch_size
        self._layout = (process_index, process_count)
        per_host = global_batch_size // process_count
        first = process_index * per_host
        local = list(range(first, first + per_host))
        spec = dict(
            elements=elements,
            builder=rows,
            global_batch_size=global_batch_size,
            length=length,
            seed=seed,
        )
        self.workers = int(workers)
        self._rows = (
            WorkerRows(spec, local, workers) if workers > 0 else RowBuilder(**spec, rows=local)
        )
        self.step = 0

    def __next__(self) -> dict[str, np.ndarray]:
        if (
            self.rows.per_example
            and self._length is not None
            and (self.step * self._global >= self._length)
        ):
            raise StopIteration
        batch, ended = self._rows.build(self.step)
        if self._agree is not None:
            return self._agreed(batch, bool(ended.all()))
        if ended.all():
            raise StopIteration
        self.step += 1
        return trim_padding(batch, self._trim) if self._trim else batch

    def _agreed(self, batch: dict[str, np.ndarray], ended: bool) -> dict[str, np.ndarray]:
        """Several hosts trimming: each batch is cut to the widest host's widths, so every host
        puts the same shapes into the global batch; a host whose rows have ended sends rows of
        padding until every host's have."""
        mine = tuple(-1 for _ in _sides(batch)) if ended else trim_widths(batch, self._trim)
        widths = self._agree(mine)
        if widths[0] < 0:  # every host's rows have ended
            raise StopIteration
        self.step += 1
        return cut_to(batch, widths)

    def close(self) -> None:
        """Stops the worker processes, if any (also at exit)."""
        if isinstance(self._rows, WorkerRows):
            self._rows.close()

    def get_state(self) -> dict[str, Any]:
        """Returns the JSON-serialisable position: step and one cursor per local row."""
        return {
            "version": STATE_VERSION,
            "step": self.step,
            "seed": self._seed,
            "global_batch_size": self._global,
            "process_index": self._layout[0],
            "process_count": self._layout[1],
            "cursors": [list(c) for c in self._rows.cursors],
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores a position saved by `get_state` on the same host layout and batch size."""
        expected = {
            "version": STATE_VERSION,
            "seed": self._seed,
            "global_batch_size": self._global,
            "process_index": self._layout[0],
            "process_count": self._layout[1],
        }
        for key, value in expected.items():
            if state.get(key) != value:
                raise DataError(
                    f"data iterator state: {key} is {state.get(key)!r}, this iterator has {value!r}"
                )
        if len(state["cursors"]) != len(self._rows.cursors):
            raise DataError("data iterator state: wrong number of row cursors")
        if isinstance(self._rows, WorkerRows):
            self._rows.close()  # restarted from these cursors at the next batch
        self._rows.cursors = [list(c) for c in state["cursors"]]
        self.step = int(state["step"])


def bucket_length(used: int, multiple: int, limit: int) -> int:
    """The smallest multiple of `multiple` >= max(used, 1), capped at `limit`."""
    return min(limit, multiple * max(1, -(-int(used) // multiple)))


def _sides(batch: dict[str, np.ndarray]) -> list[tuple[tuple[str, ...], np.ndarray]]:
    """(the keys cut together, the mask that decides their width): the inputs side, and for
    encoder-decoders the targets side."""
    decoder = "decoder_attention_mask" in batch
    inputs, targets = objectives.ENCODER_INPUTS, objectives.LOSS_KEYS
    sides = [(inputs if decoder else (*inputs, *targets), batch["attention_mask"])]
    if decoder:
        sides.append(((*objectives.DECODER_INPUTS, *targets), batch["decoder_attention_mask"]))
    return sides


def trim_widths(batch: dict[str, np.ndarray], multiple: int) -> tuple[int, ...]:
    """Each side's width after cutting its trailing all-padding columns, rounded up to a
    multiple of `multiple` (`bucket_length`)."""
    widths = []
    for _, mask in _sides(batch):
        used = mask.shape[1] - np.argmax(mask[:, ::-1] != 0, axis=1)
        used = int(np.max(np.where(mask.any(axis=1), used, 0)))
        widths.append(bucket_length(used, multiple, mask.shape[1]))
    return tuple(widths)


def cut_to(batch: dict[str, np.ndarray], widths: Sequence[int]) -> dict[str, np.ndarray]:
    """`batch` with each side's columns cut to its width in `widths`."""
    out = dict(batch)
    for (keys, mask), width in zip(_sides(batch), widths):
        for key in keys:
            if key in out and out[key].ndim == 2 and out[key].shape[1] == mask.shape[1]:
                out[key] = out[key][:, :width]
    return out


def trim_padding(batch: dict[str, np.ndarray], multiple: int) -> dict[str, np.ndarray]:
    """Cuts the trailing all-padding columns of a batch of left-aligned rows down to a
    multiple of `multiple` (`bucket_length`), the inputs and the targets side separately."""
    return cut_to(batch, trim_widths(batch, multiple))


def make_pipeline(
    cfg: ml_collections.ConfigDict,
    *,
    split: str,
    tokenizer: Tokenizer,
    global_batch_size: int,
    seq_len: int,
    seed: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    objective: str | None = None,
    workers: int | None = None,
    agree=None,
) -> BatchIterator:
    """Builds the batch iterator of one split for this host.

    Args:
      cfg: the `data` ConfigDict (see the module docstring and `default_config`).
      split: "train", "validation", ... (mapped to TFDS splits by `cfg.splits`).
      tokenizer: the run's `Tokenizer`.
      global_batch_size: rows per global batch; must divide by `process_count`.
      seq_len: row length (encoder/input length; for span corruption, the inputs length).
      seed: shuffling and masking seed (0 <= seed < 2**32).
      process_index: this host's index (`jax.process_index()`).
      process_count: number of hosts (`jax.process_count()`).
      objective: overrides `cfg.objective`.
      workers: overrides `cfg.workers` (0: rows are built in this process; see data/workers.py).
      agree: with `trim_padding` and several hosts, the hosts' agreement on each batch's widths:
        a callable from this host's widths (a tuple, -1 when its rows have ended) to every
        host's elementwise maximum, the same on every host (`train.distributed.AgreedWidths`).

    Returns:
      A `BatchIterator` yielding dicts of numpy arrays with leading dimension
      `global_batch_size // process_count`.

    Raises:
      DataError: bad configuration or bad input data.
    """
    cfg = sources.as_dict(cfg)
    objective = objective or cfg.get("objective") or "clm"
    if global_batch_size % process_count or not 0 <= process_index < process_count:
        raise DataError(
            f"global batch {global_batch_size} does not split over {process_count} "
            f"hosts (process {process_index})"
        )
    if cfg.get("trim_padding") and process_count > 1 and agree is None:
        raise DataError(
            "data.trim_padding with several hosts needs the hosts to agree on each batch's "
            "length (make_pipeline(agree=train.distributed.AgreedWidths()), as the training "
            "loop does); or set data.trim_padding=0"
        )
    source = sources.load_source(cfg, split, objective)
    if len(source) == 0:
        raise DataError(f"{source.name}: split {split!r} has no examples")
    rows = objectives.get(objective).rows(tokenizer, seq_len, cfg)
    train = split == "train"
    shuffle = train if cfg.get("shuffle") is None else bool(cfg["shuffle"])
    epochs = cfg.get("num_epochs")
    epochs = (None if train else 1) if epochs is None else (int(epochs) or None)
    order = _Indices(len(source))
    if shuffle:
        order = order.shuffle(seed=seed)
    length = None if epochs is None else len(source) * int(epochs)
    return BatchIterator(
        Examples(source, order.repeat(epochs)),
        rows,
        source,
        global_batch_size=global_batch_size,
        process_index=process_index,
        process_count=process_count,
        seed=seed,
        length=length,
        trim_padding=int(cfg.get("trim_padding") or 0),
        workers=_workers(cfg, split, workers),
        agree=agree,
    )


def _workers(cfg, split: str, workers: int | None) -> int:
    """The worker processes of a pipeline: `workers`, else `data.workers` for the train split
    (-1: `data.workers.default_workers()`); evaluation splits are built in the process."""
    if workers is None:
        workers = cfg.get("workers", -1) if split == "train" else 0
    workers = default_workers() if workers is None or int(workers) < 0 else int(workers)
    return workers


def iter_texts(
    cfg: ml_collections.ConfigDict,
    split: str = "train",
    *,
    objective: str | None = None,
    limit: int | None = None,
) -> Iterator[str]:
    """Yields the raw texts of a split (for training a tokenizer on the run's dataset).

    Args:
      cfg: the `data` ConfigDict.
      split: which split.
      objective: overrides `cfg.objective` (it selects the text roles).
      limit: stop after this many examples.
    """
    source = sources.load_source(cfg, split, objective or cfg.get("objective") or "clm")
    count = len(source) if limit is None else min(limit, len(source))
    for index in range(count):
        example = source[index]
        for role in ("text", "text_pair", "source", "target"):
            if role in example:
                yield example[role]
        if "tokens" in example:
            yield " ".join(example["tokens"])


def pydoc_config(**overrides) -> ml_collections.ConfigDict:
    """The default corpus config (`pydoc_topics`: 75 train topics, 4 validation), with overrides."""
    cfg = default_config()
    cfg.update(overrides)
    return cfg


def run_tokenizer(config):
    """A run's tokenizer before it has a workdir's: `tokenizer.path`, the one that came with
    `init_from`, or one trained on the training split (`config` is the whole run config)."""
    import models

    path = config.tokenizer.path or find_tokenizer(config.get("init_from"))
    if path:
        return load_tokenizer(path)
    family = config.tokenizer.family or {"encoder": "bert", "decoder": "gpt"}.get(
        models.get_config(config.model.name).family, "t5"
    )
    logging.info(
        "training a %s tokenizer (vocab %d) on the training split",
        config.tokenizer.kind,
        config.tokenizer.vocab_size,
    )
    texts = iter_texts(config.data, "train", limit=config.tokenizer.train_examples)
    return train_tokenizer(
        texts,
        kind=config.tokenizer.kind,
        vocab_size=config.tokenizer.vocab_size,
        family=family,
        lowercase=config.tokenizer.lowercase,
    )
