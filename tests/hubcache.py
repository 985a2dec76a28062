"""A Hugging Face Hub cache built offline, laid out as huggingface_hub writes one.

    cache = tmp / "hub"
    snapshot = add_repo(cache, "sentence-transformers/all-MiniLM-L6-v2", files_dir)

    models--ORG--NAME/blobs/ETAG                  the file's bytes (sha256 for LFS-sized files,
                                                  the git blob sha1 for the rest)
    models--ORG--NAME/snapshots/COMMIT/FILE       a relative symlink to ../../blobs/ETAG
    models--ORG--NAME/refs/REVISION               COMMIT, no newline

With HF_HUB_CACHE (or HF_HOME/hub) pointing at `cache` and HF_HUB_OFFLINE=1, huggingface_hub's
own lookups (`snapshot_download`, `scan_cache_dir`) find the repo as if it had downloaded it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub stores larger files in LFS: their etag is a sha256


def _etag(data: bytes) -> str:
    if len(data) >= LFS_THRESHOLD:
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's blob id


def add_repo(
    cache: Path,
    repo: str,
    files: Path | dict[str, bytes],
    *,
    revision: str = "main",
    commit: str | None = None,
) -> Path:
    """Adds `repo` at `revision` to the cache: every top-level file of the directory `files`
    (or a {name: bytes} mapping). Returns the snapshot directory."""
    if isinstance(files, Path):
        files = {p.name: p.read_bytes() for p in sorted(files.iterdir()) if p.is_file()}
    commit = commit or hashlib.sha1(repo.encode() + revision.encode()).hexdigest()
    root = Path(cache) / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / commit
    for folder in (root / "blobs", snapshot, root / "refs"):
        folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        etag = _etag(data)
        blob = root / "blobs" / etag
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / name
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(os.path.relpath(blob, link.parent), link)
    (root / "refs" / revision).write_text(commit)
    return snapshot
