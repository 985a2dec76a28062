"""One path layer for every directory a command takes: local paths and `gs://`.

    path = paths.resolve("gs://bucket/run")      # an `etils.epath.Path` (gcsfs underneath)
    path = paths.resolve("runs/x")               # the absolute local path, as an epath.Path

A name is resolved in one order everywhere: a URL scheme (`gs://`) first, then a local path.
`etils.epath` is the layer (Orbax writes checkpoints through it too); for `gs://` it uses
`gcsfs`, installed with google-cloud-storage (TensorBoard's writer) by the `gcs` extra
(`pip install -e '.[gcs]'`).
Credentials follow Google's application-default rules (`GOOGLE_APPLICATION_CREDENTIALS`,
`gcloud auth application-default login`, or the VM's service account); `STORAGE_EMULATOR_HOST`
points every client at an emulator such as fake-gcs-server.

Every storage call is bounded by its library's own settings, set before the first `gs://`
access (`bounded_storage_calls`): gcsfs requests give up on a connection or a response that
stays silent for STORAGE_TIMEOUT_S seconds (aiohttp's `sock_connect`/`sock_read` through
gcsfs's `requests_timeout`, set in fsspec's config so a user's own fsspec config wins), then
gcsfs tries each at most 6 times with backoff (`GCSFileSystem.retries`); tensorstore (Orbax's
array writer) drops a transfer slower than 256 bytes/s for STORAGE_TIMEOUT_S seconds
(`TENSORSTORE_CURL_LOW_SPEED_*`, as JAX sets them on Cloud TPU VMs) and retries it at most 32
times, 1 s to 32 s apart (its `gcs_request_retries` defaults). What they miss, a run's stall
watchdog catches (train/watchdog.py).

Object stores have no append: `Appender` keeps an append-only file (metrics.jsonl) by rewriting
the whole object, at most every `every_s` seconds and whenever it is flushed. Tools that need
local files (a tokenizer's `save`) write into `local_dir(path)`, which copies them up on exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from etils import epath

from models.errors import UserError

SCHEMES = {"gs://": "gcsfs"}  # scheme -> the package epath reads it with
STORAGE_TIMEOUT_S = 60  # silence on one storage connection before its library gives up
# gcsfs warns at every access to a bucket whose type it cannot look up (an emulator, or
# credentials without storage.buckets.get) and then goes on: here, in every process that reads
# buckets (the data workers too), that is noise.
logging.getLogger("gcsfs").setLevel(logging.ERROR)


def is_remote(name: str | os.PathLike) -> bool:
    """Whether `name` is an object-store URL (gs://)."""
    return str(name).startswith(tuple(SCHEMES))


def resolve(name: str | os.PathLike) -> epath.Path:
    """The path `name` names: an object-store URL as is, else the absolute local path.

    Raises:
      UserError: a `gs://` name without the package that reads it, or without a bucket.
    """
    text = os.fspath(name)
    for scheme, package in SCHEMES.items():
        if text.startswith(scheme):
            try:
                __import__(package)
            except ImportError:
                raise UserError(
                    f"{text}: {scheme} paths need {package}: pip install -e '.[gcs]'"
                ) from None
            if not text[len(scheme) :].split("/")[0]:
                raise UserError(f"{text}: no bucket name after {scheme}")
            bounded_storage_calls()
            return epath.Path(text.rstrip("/"))
    return epath.Path(Path(text).expanduser().absolute())


def bounded_storage_calls() -> None:
    """Gives gcsfs and tensorstore their timeouts (see the module docstring); settings already
    made (a user's fsspec config, the environment) are kept. Must run before the first `gs://`
    access: epath keeps the first filesystem it makes."""
    import aiohttp
    import fsspec.config

    timeout = aiohttp.ClientTimeout(sock_connect=STORAGE_TIMEOUT_S, sock_read=STORAGE_TIMEOUT_S)
    fsspec.config.conf.setdefault("gcs", {}).setdefault("requests_timeout", timeout)
    os.environ.setdefault("TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS", str(STORAGE_TIMEOUT_S))
    os.environ.setdefault("TENSORSTORE_CURL_LOW_SPEED_LIMIT_BYTES", "256")


def check_writable(path: epath.Path) -> None:
    """Creates `path` (and parents), turning a missing bucket, missing credentials or a refused
    permission into one UserError that names the path and the fix."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-check"
        probe.write_text("")
        probe.unlink()
    except UserError:
        raise
    except Exception as error:  # gcsfs, s3fs and OSError spell these differently
        raise UserError(f"{path}: {_storage_reason(error, path)}") from None


def _storage_reason(error: Exception, path: epath.Path) -> str:
    text = f"{type(error).__name__}: {error}".lower()
    bucket = str(path).split("://", 1)[-1].split("/")[0]
    if "default credentials" in text or "refresh" in text or "credential" in text:
        return (
            "no credentials for the bucket; run `gcloud auth application-default login` or set "
            "GOOGLE_APPLICATION_CREDENTIALS"
        )
    if "403" in text or "forbidden" in text or "permission" in text or "access denied" in text:
        return f"permission denied on bucket {bucket!r}; grant this account write access"
    missing = ("404", "not found", "nosuchbucket", "no such", "does not exist")
    if any(word in text for word in missing):
        return f"bucket {bucket!r} does not exist; create it or fix the name"
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"cannot write there ({first})"


@contextlib.contextmanager
def local_dir(path: epath.Path) -> Iterator[str]:
    """A local directory for tools that write local files: `path` itself when it is local, else a
    temporary directory whose files are copied to `path` on a clean exit."""
    if not is_remote(path):
        path.mkdir(parents=True, exist_ok=True)
        yield os.fspath(path)
        return
    with tempfile.TemporaryDirectory() as scratch:
        yield scratch
        copy_tree(epath.Path(scratch), path)


@contextlib.contextmanager
def local_copy(path: epath.Path | str, files_only: bool = False) -> Iterator[str]:
    """A local directory holding `path`'s files (`path` itself when local), for tools that read
    local files (a tokenizer, Hugging Face weights). `files_only` copies the top-level files
    and no folders (a Hugging Face directory's weights and config, not a workdir's checkpoints)."""
    path = resolve(path)
    if not is_remote(path):
        yield os.fspath(path)
        return
    with tempfile.TemporaryDirectory() as scratch:
        copy_tree(path, epath.Path(scratch), files_only=files_only)
        yield scratch


@contextlib.contextmanager
def removed_on_failure(*targets, keep=None, errors: tuple = (BaseException,)) -> Iterator[None]:
    """A command that fails with one of `errors` leaves no output behind: each of `targets` (paths
    or None) that did not exist on entry is removed again, unless `keep(path)` says it holds
    something worth keeping (a checkpoint). A target that existed is never touched."""
    new = [resolve(t) for t in targets if t and not resolve(t).exists()]
    try:
        yield
    except errors:
        for target in new:
            if target.exists() and not (keep and keep(target)):
                target.rmtree()
        raise


def copy_tree(source: epath.Path, target: epath.Path, files_only: bool = False) -> None:
    """Copies the files under `source` to `target` (any mix of local and object storage);
    `files_only`: the top-level files only."""
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.is_dir():
            if not files_only:
                copy_tree(item, target / item.name)
        elif not is_remote(item) and not is_remote(target):
            shutil.copyfile(item, target / item.name)
        else:
            (target / item.name).write_bytes(item.read_bytes())


class Appender:
    """An append-only text file that also works on object storage.

    Locally, lines are appended and flushed at once. On a bucket, where objects cannot be
    appended to, the whole object (the lines it held when opened, then this writer's) is
    rewritten at most every `every_s` seconds and at every `flush()` and `close()`; the loop
    flushes before each checkpoint, so a killed run's log reaches at least its last checkpoint.
    """

    def __init__(self, path: epath.Path, every_s: float = 30.0):
        self.path, self.every_s = path, every_s
        self._remote = is_remote(path)
        if self._remote:
            self._text = path.read_text() if path.exists() else ""
            self._written = time.monotonic()
            self._dirty = False
        else:
            self._file = open(path, "a")  # noqa: SIM115

    def write(self, text: str) -> None:
        if not self._remote:
            self._file.write(text)
            self._file.flush()
            return
        self._text += text
        self._dirty = True
        if time.monotonic() - self._written >= self.every_s:
            self.flush()

    def flush(self) -> None:
        if self._remote and self._dirty:
            self.path.write_text(self._text)
            self._written, self._dirty = time.monotonic(), False

    def close(self) -> None:
        if self._remote:
            self.flush()
        else:
            self._file.close()
