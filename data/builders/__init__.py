"""TFDS builders: local files (`local.py`) and the embedded pydoc corpus (`pydoc.py`).

Importing this package registers `pydoc_topics` with TFDS, so `tfds.builder("pydoc_topics")` and
`tfds.data_source("pydoc_topics", ...)` work like any catalog name.
"""

from data.builders.local import (
    BUILDERS,
    LocalConll,
    LocalParallel,
    LocalTable,
    LocalText,
    prepare,
)
from data.builders.pydoc import PydocTopics, split_topics, topics

__all__ = [
    "BUILDERS",
    "LocalConll",
    "LocalParallel",
    "LocalTable",
    "LocalText",
    "PydocTopics",
    "prepare",
    "split_topics",
    "topics",
]
