"""Triptych data: TFDS builders and sources, tokenizers, objective transforms, batching.

Modules:
  builders/   TFDS builders for local files and the embedded `pydoc_topics` corpus.
  sources.py  `data` config -> per-split random-access sources (TFDS catalog or local files).
  tokenizers.py  train / load / save tokenizers (HF `tokenizers`), special tokens per family.
  objectives.py  numpy transforms per objective (MLM masking, span corruption, denoising, ...).
  packing.py  row streams: packing, concatenate-and-chunk, padding.
  pipeline.py `make_pipeline(...)`: the deterministic, resumable per-host batch iterator.
"""

from data.errors import DataError

__all__ = ["DataError"]
