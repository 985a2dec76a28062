"""Rows built step by step, in the process or in grain worker processes.

A host's rows are independent: row `r` of step `t` depends only on its own `RowStream` cursor and
on `np.random.default_rng([seed, r, t])`. So `data.workers = N` splits the host's rows over N
grain worker processes (`IterDataset.mp_prefetch`): worker `i` builds rows `i, i + N, ...` of every
step, reading, tokenizing and packing them itself, and sends each step's rows back with their
cursors. The parent assembles the batch in row order and owns the cursors of the batches it has
handed out, so the batches are those of `workers = 0` for any N, and a checkpoint's iterator
state is the consumed position whatever N wrote or reads it. grain's own slicing of a dataset
over workers would not keep that: packing is stateful, and its docs warn that the output then
changes with `num_workers`.

Each worker sizes the tokenizer's thread pool (`RAYON_NUM_THREADS`) to its share of the cores.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from absl import flags

from data.errors import DataError
from data.packing import RowStream, read_many
from models.errors import UserError


def default_workers() -> int:
    """`data.workers = -1`: a quarter of the host's cores, at most 16 (0 on a 2- or 3-core host,
    where the train step itself needs the cores; the sizing is in docs/benchmarks/input.md)."""
    return min(16, (os.cpu_count() or 1) // 4)


class RowBuilder:
    """Builds the given rows of every global batch, one step at a time."""

    def __init__(
        self, elements, builder, rows: Sequence[int], global_batch_size: int, length, seed
    ):
        self.builder, self.seed = builder, seed
        self.elements = elements
        self.streams = [
            RowStream(elements, r, global_batch_size, length, transform=builder.elements)
            for r in rows
        ]

    def build(self, step: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The rows of `step` stacked per key, and which of them ended (a finished finite
        stream gives the all-padding row)."""
        self._refill()
        built = []
        for stream in self.streams:
            rng = np.random.default_rng([self.seed, stream.row, step])
            before = stream.k
            built.append(self.builder.row(stream, rng))
            # Read about four steps ahead: short documents are consumed by the hundred.
            stream.read_ahead = int(np.clip(4 * (stream.k - before), 2, 1024))
        ended = np.array([row is None for row in built], bool)
        if ended.any():
            built = [self.builder.empty() if row is None else row for row in built]
        return {key: np.stack([row[key] for row in built]) for key in built[0]}, ended

    def _refill(self) -> None:
        """Reads ahead for all rows in one batched call; batched reads are ~10x faster."""
        wanted = [(stream, stream.missing()) for stream in self.streams]
        indices = [i for _, missing in wanted for i in missing]
        if indices:
            read = read_many(self.elements, indices, self.builder.elements)
            for stream, missing in wanted:
                stream.fill({i: read[i] for i in missing})

    @property
    def cursors(self) -> list[list[int]]:
        return [stream.cursor for stream in self.streams]

    @cursors.setter
    def cursors(self, values) -> None:
        for stream, value in zip(self.streams, values, strict=True):
            stream.cursor = value


class _RowGroup(grain.IterDataset):
    """A worker's share of a host's rows, from a given step and cursors (grain slices it)."""

    def __init__(self, spec: dict, rows: list[int], step: int, cursors: list[list[int]]):
        super().__init__()
        self._spec, self._rows, self._step, self._cursors = spec, rows, step, cursors
        self._slice = slice(None)

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        del sequential_slice  # rows are dealt out round-robin
        self._slice = sl

    def __iter__(self):
        picked = range(len(self._rows))[self._slice]
        return _RowGroupIterator(
            RowBuilder(rows=[self._rows[i] for i in picked], **self._spec),
            self._step,
            [self._cursors[i] for i in picked],
        )


class _RowGroupIterator(grain.DatasetIterator):
    """Yields `{"rows": [...], "cursors": [...]}` for one step after another."""

    def __init__(self, builder: RowBuilder, step: int, cursors):
        super().__init__()
        self._builder, self._step = builder, step
        builder.cursors = cursors

    def __next__(self) -> dict[str, Any]:
        rows, ended = self._builder.build(self._step)  # a few arrays, not one per row and key
        self._step += 1
        return {"rows": rows, "ended": ended, "cursors": self._builder.cursors}

    def get_state(self) -> dict:
        return {"step": self._step, "cursors": self._builder.cursors}  # the parent's copy rules

    def set_state(self, state: dict) -> None:
        self._step, self._builder.cursors = state["step"], state["cursors"]


def _share_cores(workers: int, index: int, count: int) -> None:
    """Worker start: the tokenizer's threads get this worker's share of the cores."""
    del index, count
    threads = max(1, (os.cpu_count() or 1) // (workers + 1))
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"


class WorkerRows:
    """The rows of a host built by `workers` grain processes; the parent keeps the cursors."""

    def __init__(self, spec: dict, rows: list[int], workers: int, buffer: int = 2):
        self._spec, self._rows = spec, rows
        self.workers = max(1, min(int(workers), len(rows)))
        self._buffer = buffer
        self.cursors = [[0, 0] for _ in rows]
        self._step, self._iterator = 0, None

    def build(self, step: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """`RowBuilder.build`'s result for `step`, interleaved from every worker's rows."""
        if self._iterator is None or step != self._step:
            self._start(step)
        batch: dict[str, np.ndarray] = {}
        ended = np.zeros(len(self._rows), bool)
        for worker in range(self.workers):
            item = self._next()
            for key, rows in item["rows"].items():
                if key not in batch:
                    batch[key] = np.empty((len(self._rows), *rows.shape[1:]), rows.dtype)
                batch[key][worker :: self.workers] = rows  # worker i has rows i, i + N, ...
            ended[worker :: self.workers] = item["ended"]
            self.cursors[worker :: self.workers] = [list(c) for c in item["cursors"]]
        self._step = step + 1
        return batch, ended

    def _next(self) -> dict:
        """The next item of `worker`; a bad record raises its DataError (it names the file and
        record), and a worker that died ends the iteration with one DataError."""
        try:
            return next(self._iterator)
        except UserError:
            self.close()
            raise
        except Exception as error:
            self.close()
            reason = (
                str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            )
            raise DataError(
                f"a data worker process (of {self.workers}) failed: {reason}; set data.workers=0 "
                "to build the rows in the training process and see the full error"
            ) from error

    def _start(self, step: int) -> None:
        """(Re)starts the workers at `step` from the parent's cursors."""
        self.close()
        if not flags.FLAGS.is_parsed():  # grain reads its absl flags; a library caller has none
            flags.FLAGS.mark_as_parsed()
        # A worker that dies leaves shared-memory segments that multiprocessing's resource
        # tracker (started with the workers, with this environment) unlinks at exit; its
        # warning would come after the run's one error line.
        os.environ.setdefault(
            "PYTHONWARNINGS", "ignore::UserWarning:multiprocessing.resource_tracker"
        )
        group = _RowGroup(self._spec, self._rows, step, [list(c) for c in self.cursors])
        options = grain.MultiprocessingOptions(
            num_workers=self.workers, per_worker_buffer_size=self._buffer
        )
        init = _ShareCores(self.workers)
        self._iterator = iter(group.mp_prefetch(options, worker_init_fn=init))
        self._step = step

    def close(self) -> None:
        """Stops the worker processes."""
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None


class _ShareCores:
    """A picklable worker_init_fn: `_share_cores` for `workers` workers."""

    def __init__(self, workers: int):
        self.workers = workers

    def __call__(self, index: int, count: int) -> None:
        _share_cores(self.workers, index, count)
