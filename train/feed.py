"""The training loop's input: batches built and placed on the devices ahead of the step that runs.

With `data.prefetch = k > 0` a thread takes batches t+1 .. t+k from the data iterator and places
them with the batch sharding while step t runs, so the host's work overlaps the device's. Each
batch travels with the iterator state after it, and the loop checkpoints the state of the last
batch it consumed, never that of a batch still in the queue: a resumed run reads exactly the
batches the interrupted one had not trained on. `k = 0` builds each batch when it is needed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

_END = object()


class Feed:
    """Yields `(host batch, device batch, iterator state after it)`; see the module docstring."""

    def __init__(self, iterator, place: Callable[[dict], Any], depth: int):
        self._iterator, self._place, self.depth = iterator, place, int(depth)
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, self.depth))
        self._thread = None
        if self.depth > 0:
            self._thread = threading.Thread(target=self._fill, name="feed", daemon=True)
            self._thread.start()

    def _next(self):
        batch = next(self._iterator)
        return batch, self._place(batch), self._iterator.get_state()

    def _fill(self) -> None:
        """The prefetch thread: batches (or the exception that ended them) into the queue."""
        while not self._stop.is_set():
            try:
                item = self._next()
            except StopIteration:
                item = _END
            except BaseException as error:  # raised again in the loop's thread
                item = error
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item is _END or isinstance(item, BaseException):
                return

    def __iter__(self):
        return self

    def __next__(self):
        if self._thread is None:
            return self._next()
        item = self._queue.get() if self._thread.is_alive() or not self._queue.empty() else _END
        if item is _END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stops the prefetch thread (batches still queued are dropped, not consumed)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
