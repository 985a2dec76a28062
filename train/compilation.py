"""A run's compiled programs, kept across restarts: JAX's persistent compilation cache.

A restarted run (after a preemption, a crash or to train further) compiles the same train, eval
and init programs again; on a large model that is minutes of every restart. With the cache on,
JAX writes each compiled executable under `compilation_cache.dir` and a restart loads it
instead of compiling it (`jax_compilation_cache_dir`, docs: "Persistent compilation cache").

The `compilation_cache` config section:

  dir               '' (default): WORKDIR/compilation_cache, so it travels with the run (a
                    bucket workdir keeps it on the bucket); a path or gs:// URL to share one
                    cache between runs; 'off' to compile everything anew.
  min_compile_secs  programs that compile faster than this are not written (JAX's
                    `jax_persistent_cache_min_compile_time_secs`, default 1.0).

`CacheCounts` counts what JAX reports through `jax.monitoring`: programs that asked the cache,
and those it had; the rest were compiled anew. The summary and the log report both.
"""

from __future__ import annotations

import logging
import threading

import jax
from etils import epath
from jax.experimental.compilation_cache import compilation_cache

log = logging.getLogger(__name__)

_REQUEST = "/jax/compilation_cache/compile_requests_use_cache"
_HIT = "/jax/compilation_cache/cache_hits"
DEFAULTS = {"dir": "", "min_compile_secs": 1.0}


class CacheCounts:
    """Compile requests that went through the persistent cache, and the cache's hits."""

    def __init__(self, directory: str, min_compile_secs: float):
        self.directory = directory
        self.previous_min = min_compile_secs  # JAX's setting before the run, restored after
        self.requests = self.hits = 0
        self._lock = threading.Lock()
        jax.monitoring.register_event_listener(self._event)

    def _event(self, event: str, **kwargs) -> None:
        if event in (_REQUEST, _HIT):
            with self._lock:
                if event == _REQUEST:
                    self.requests += 1
                else:
                    self.hits += 1

    def summary(self) -> dict:
        return {
            "dir": self.directory,
            "programs": self.requests,
            "loaded": self.hits,
            "compiled": self.requests - self.hits,
        }

    def close(self) -> None:
        jax.monitoring.unregister_event_listener(self._event)


def enable(section, workdir: epath.Path) -> CacheCounts | None:
    """Points JAX's persistent cache at the run's directory (see the module docstring); returns
    the counter, or None when the section says 'off'."""
    section = {**DEFAULTS, **(section.to_dict() if section is not None else {})}
    if section["dir"] == "off":
        return None
    directory = section["dir"] or str(workdir / "compilation_cache")
    counts = CacheCounts(directory, jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", section["min_compile_secs"])
    compilation_cache.set_cache_dir(directory)
    compilation_cache.reset_cache()  # a program compiled before this would have fixed it to none
    return counts


def disable(counts: CacheCounts | None) -> None:
    """Stops counting, and detaches the cache (a later run in this process picks its own)."""
    if counts is None:
        return
    counts.close()
    jax.config.update("jax_persistent_cache_min_compile_time_secs", counts.previous_min)
    jax.config.update("jax_compilation_cache_dir", None)
    compilation_cache.reset_cache()
