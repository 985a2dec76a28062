"""The stall watchdog: a run whose storage (or anything else it waits on) stops answering ends
with one line instead of hanging.

A bucket that stops answering leaves a request open with nothing to time it out: a run hung for
minutes in `epath.Path.exists()` on metrics.jsonl, and real buckets stall too (T5X #1603, a GCS
save stuck for good). The storage libraries get timeouts and bounded retries of their own
(models/paths.py: gcsfs, tensorstore; train/checkpoint.py: Orbax's async deadline); this is the
backstop for whatever they miss.

The loop marks what it waits on:

    with watchdog.Watchdog(config.stall_timeout_s):          # the run
        with watchdog.doing("checkpoint save", directory):    # one operation
            ...

While an operation is open and nothing has started or finished for `stall_timeout_s` seconds
(default 1800; 0 turns the watch off), the watchdog logs the Python stack of the thread that
entered it (where it is waiting), then ends the process at once with exit status 1 and one last
line on stderr, `error: <operation> (<path>) made no progress for Ns ...`. Nothing is deleted
or overwritten: Orbax never restores a checkpoint whose save did not commit, so a restart resumes
from the last complete one. With several hosts the others' PeerWatch (train/distributed.py) sees
this one stop and ends them too. A storage call that times out on its own inside `doing` (a
`TimeoutError` from gcsfs, Orbax or the fsspec event loop) becomes a `StorageTimeout`, the same
kind of one line.

Marks outside an active watchdog, or from another thread than the one that entered it, do nothing,
so the marked code (Checkpointer, MetricWriter) serves other commands unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import traceback

from models.errors import UserError, report

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 1800
_active: Watchdog | None = None


class StorageTimeout(UserError, RuntimeError):
    """A storage call that gave up after its library's own timeouts and retries."""


class Watchdog:
    """Ends the process when a marked operation makes no progress for `timeout_s` seconds.

    Args:
      timeout_s: seconds without an operation starting or finishing (0 or less: off).
      poll_s: how often the watch thread looks (default: a quarter of the timeout, at most 1 s).
    """

    def __init__(self, timeout_s: float, poll_s: float | None = None):
        self.timeout_s = float(timeout_s or 0)
        self.poll_s = poll_s if poll_s is not None else min(1.0, self.timeout_s / 4)
        self._lock = threading.Lock()
        self._open: list[tuple[str, str]] = []  # (operation, path), innermost last
        self._since = time.monotonic()  # the last start or finish of an operation
        self._stop = threading.Event()
        self._thread = None
        self._owner = None  # the thread whose operations are watched
        self._previous = None

    def __enter__(self):
        global _active
        if self.timeout_s > 0:
            self._owner = threading.get_ident()
            self._previous, _active = _active, self
            self._thread = threading.Thread(target=self._watch, daemon=True, name="stall-watch")
            self._thread.start()
        return self

    def __exit__(self, *exc):
        global _active
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            _active = self._previous

    def begin(self, operation: str, path) -> None:
        with self._lock:
            self._open.append((operation, str(path)))
            self._since = time.monotonic()

    def end(self) -> None:
        with self._lock:
            self._open.pop()
            self._since = time.monotonic()

    def stalled(self) -> tuple[str, str] | None:
        """The innermost open operation when nothing has moved for `timeout_s`, else None."""
        with self._lock:
            if self._open and time.monotonic() - self._since > self.timeout_s:
                return self._open[-1]
        return None

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            stalled = self.stalled()
            if stalled is not None:
                self._end(*stalled)

    def _end(self, operation: str, path: str) -> None:
        """Logs where the watched thread waits, then one line and exit status 1, at once (the
        thread may never return, and a normal exit would wait for it)."""
        frame = sys._current_frames().get(self._owner)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(gone)\n"
        log.error("%s stalled; the run is waiting here:\n%s", _name(operation, path), stack)
        sys.stderr.write("\n")  # the progress bar may be mid-line
        report(
            f"{_name(operation, path)} made no progress for {self.timeout_s:g}s (stall_timeout_s): "
            "the storage or device stopped answering; the checkpoints already written are "
            "kept: restart to resume from the last complete one"
        )
        logging.shutdown()
        os._exit(1)


def _name(operation: str, path: str) -> str:
    return f"{operation} ({path})" if path else operation


@contextlib.contextmanager
def doing(operation: str, path=""):
    """Marks `operation` on `path` (e.g. "checkpoint save", gs://bucket/run/checkpoints) as
    what the run waits on, for the active watchdog; a `TimeoutError` from inside becomes a
    `StorageTimeout` naming both."""
    watch = _active
    if watch is None or threading.get_ident() != watch._owner:
        yield
        return
    watch.begin(operation, path)
    try:
        yield
    except TimeoutError as error:
        kind, first = type(error).__name__, (str(error).strip().splitlines() or [""])[0]
        reason = f"{kind}: {first}" if first and first != kind else kind
        raise StorageTimeout(
            f"{_name(operation, path)} timed out after the storage library's retries "
            f"({reason}); the checkpoints already written are kept: restart to resume from the "
            "last complete one"
        ) from error
    finally:
        watch.end()
