"""TFDS builders for local files, prepared to ArrayRecord and read with `as_data_source`.

Four builders cover the local formats; each takes `files`, a mapping from split name to what the
split reads, and a `data_dir` where the prepared ArrayRecord files are cached. The cache name is a
hash of the files (path, size, mtime) and the options, so editing a file prepares it again.

* `LocalText` ("text"): plain text, one document per non-empty line (`mode="lines"`) or one
  document per file (`mode="files"`). Feature: `text`.
* `LocalTable` ("table"): TSV/CSV with a header line, or JSONL; keeps the named `text_fields` as
  text and an optional `label_field` as a `ClassLabel` over `label_names` (declared, or the sorted
  set found in the files). Also serves JSONL/TSV source-target pairs.
* `LocalConll` ("conll"): CoNLL columns, one `token ... tag` per line, blank lines between
  sentences. Features: `tokens`, `tags` (a `ClassLabel` sequence over `tag_names`).
* `LocalParallel` ("parallel"): two line-aligned files per split, `{"source": ..., "target": ...}`.
  Features: `source`, `target`.

All validation errors are `data.errors.DataError` naming the file and line.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence

import tensorflow_datasets as tfds

from data.builders import files as filelib
from data.errors import DataError

_SPLIT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


class _LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared machinery: split/file resolution, a content-hashed config name, no write shuffle."""

    VERSION = tfds.core.Version("1.0.0")
    KIND = "local"

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        """No checksum file to find: local builders download nothing.

        (TFDS 4.9.10 otherwise imports `importlib_resources`, which it only declares for old
        Pythons.)
        """
        return None

    def __init__(self, *, files: Mapping[str, object], data_dir: str | None = None, **options):
        self._files = {
            _check_split(split): self._resolve(split, spec) for split, spec in files.items()
        }
        self._options = options
        self._setup()
        digest = filelib.fingerprint(_flat_all(self._files), sorted(options.items()))
        name = f"{self.KIND}_{digest}"
        super().__init__(
            config=tfds.core.BuilderConfig(name=name), data_dir=data_dir, file_format="array_record"
        )
        # what pickling rebuilds the builder from (data worker processes receive it pickled)
        self._original_state = dict(files=files, data_dir=data_dir, **options)

    def _resolve(self, split: str, spec):
        del split
        return filelib.expand(spec)

    def _setup(self) -> None:
        """Hook for scanning the files before `_info` (label sets)."""

    def _features(self) -> dict:
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(self._features()),
            disable_shuffling=True,
            description=f"Local files: {self._files}",
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(paths) for split, paths in self._files.items()}


def _check_split(split: str) -> str:
    if not split or set(split) - _SPLIT_CHARS:
        raise DataError(f"data.files: split name {split!r} must be lowercase letters, digits or _")
    return split


def _flat(paths) -> list[str]:
    if isinstance(paths, dict):
        return [p for value in paths.values() for p in value]
    return list(paths)


class LocalText(_LocalBuilder):
    """Plain text files: a document per non-empty line, or per file (`mode="files"`)."""

    KIND = "text"

    def _setup(self):
        if self._options.get("mode", "lines") not in ("lines", "files"):
            raise DataError(
                f"data.text_mode must be 'lines' or 'files', got {self._options['mode']!r}"
            )

    def _features(self):
        return {"text": tfds.features.Text()}

    def _generate_examples(self, paths):
        whole = self._options.get("mode", "lines") == "files"
        for path in paths:
            if whole:
                yield path, {"text": filelib.read_text(path)}
                continue
            for number, line in filelib.read_lines(path):
                if line.strip():
                    yield f"{path}:{number}", {"text": line}


class LocalTable(_LocalBuilder):
    """TSV/CSV (with a header) or JSONL rows: text fields plus an optional class label."""

    KIND = "table"

    def _setup(self):
        opts = self._options
        self._text_fields = list(opts.get("text_fields") or [])
        self._label_field = opts.get("label_field")
        if not self._text_fields:
            raise DataError("data.fields: name at least one text field for a table")
        names = opts.get("label_names")
        if self._label_field and not names:
            names = sorted(
                {r[self._label_field].strip() for _, _, r in self._rows()}, key=_label_order
            )
        self._label_names = [str(n) for n in names] if names else None

    def _rows(self, paths: Sequence[str] | None = None):
        fields = self._text_fields + ([self._label_field] if self._label_field else [])
        for path in paths if paths is not None else _flat_all(self._files):
            for number, record in filelib.read_records(
                path, fields, table_format=self._options.get("table_format", "auto")
            ):
                yield path, number, record

    def _features(self):
        features = {name: tfds.features.Text() for name in self._text_fields}
        if self._label_field:
            features[self._label_field] = tfds.features.ClassLabel(names=self._label_names)
        return features

    def _generate_examples(self, paths):
        allowed = set(self._label_names or ())
        for path, number, record in self._rows(paths):
            if self._label_field:
                label = record[self._label_field].strip()
                if label not in allowed:
                    raise DataError(
                        f"{path}:{number}: label {label!r} is not one of {sorted(allowed)}"
                    )
                record[self._label_field] = label
            yield f"{path}:{number}", record


def _flat_all(files) -> list[str]:
    return [p for paths in files.values() for p in _flat(paths)]


def _label_order(label: str):
    label = label.strip()
    return (0, int(label), "") if label.lstrip("-").isdigit() else (1, 0, label)


class LocalConll(_LocalBuilder):
    """CoNLL token/tag columns, sentences separated by blank lines."""

    KIND = "conll"

    def _setup(self):
        names = self._options.get("tag_names")
        if not names:
            found = {t for _, _, _, tags in self._sentences() for t in tags}
            names = sorted(found, key=lambda t: (t != "O", t[2:], t))
        self._tag_names = list(names)

    def _sentences(self, paths: Sequence[str] | None = None):
        for path in paths if paths is not None else _flat_all(self._files):
            for number, tokens, tags in filelib.read_conll(
                path,
                token_column=self._options.get("token_column", 0),
                tag_column=self._options.get("tag_column", -1),
            ):
                yield path, number, tokens, tags

    def _features(self):
        return {
            "tokens": tfds.features.Sequence(tfds.features.Text()),
            "tags": tfds.features.Sequence(tfds.features.ClassLabel(names=self._tag_names)),
        }

    def _generate_examples(self, paths):
        allowed = set(self._tag_names)
        for path, number, tokens, tags in self._sentences(paths):
            for offset, tag in enumerate(tags):
                if tag not in allowed:
                    raise DataError(
                        f"{path}:{number + offset}: tag {tag!r} is not one of {sorted(allowed)}"
                    )
            yield f"{path}:{number}", {"tokens": tokens, "tags": tags}


class LocalParallel(_LocalBuilder):
    """Two line-aligned files per split: `{"source": path_or_glob, "target": path_or_glob}`."""

    KIND = "parallel"

    def _resolve(self, split, spec):
        if not isinstance(spec, Mapping) or set(spec) != {"source", "target"}:
            raise DataError(
                f"data.files[{split!r}]: parallel text needs {{'source': path, 'target': path}}"
            )
        return {side: filelib.expand(spec[side]) for side in ("source", "target")}

    def _features(self):
        return {"source": tfds.features.Text(), "target": tfds.features.Text()}

    def _generate_examples(self, paths):
        if len(paths["source"]) != len(paths["target"]):
            raise DataError(f"{paths['source']} and {paths['target']}: different file counts")
        for src_path, tgt_path in zip(paths["source"], paths["target"]):
            pairs = itertools.zip_longest(
                filelib.read_lines(src_path), filelib.read_lines(tgt_path)
            )
            for source, target in pairs:
                if source is None or target is None:
                    number = (source or target)[0]
                    raise DataError(
                        f"{src_path} and {tgt_path}: line counts differ (line "
                        f"{number} has no partner)"
                    )
                yield f"{src_path}:{source[0]}", {"source": source[1], "target": target[1]}


BUILDERS = {"text": LocalText, "table": LocalTable, "conll": LocalConll, "parallel": LocalParallel}


def prepare(builder: tfds.core.DatasetBuilder) -> tfds.core.DatasetBuilder:
    """Prepares a builder to ArrayRecord unless already prepared; returns it."""
    if not os.path.exists(os.path.join(builder.data_dir, "dataset_info.json")):
        builder.download_and_prepare()
    return builder
