"""From a `data` config to random-access sources of canonical examples, one per split.

A source is a TFDS `ArrayRecordDataSource` (catalog name or local builder) wrapped so that item
`i` is a canonical example with plain Python values, keyed by role:

  text, text_pair   str                 (LM objectives; classification inputs)
  label             int                 (classification)
  source, target    str                 (seq2seq: translation, summarization)
  tokens, tags      list[str], list[int] (token classification)

Config keys read here (all under the `data` ConfigDict):

  name         TFDS catalog name (`tiny_shakespeare`, `lm1b`, `c4/en`, `wikipedia/20230601.en`,
               `glue/sst2`, `conll2003`, `wmt14_translate/de-en`, `cnn_dailymail`, `xsum`, ...)
               or `pydoc_topics` (the embedded default). Ignored when `files` is set.
  files        local data instead of `name`: `{split: path | glob | [paths]}`; for two aligned
               parallel files `{split: {"source": path, "target": path}}`.
  format       "auto" (default: from the objective and the file names), "text", "table",
               "conll" or "parallel".
  splits       `{pipeline split: TFDS split}`, e.g. `{"validation": "validation_matched"}` or
               `{"train": "train[:90%]", "validation": "train[90%:]"}` (also for local files,
               whose split names are the keys of `files`); unnamed splits map to themselves.
  fields       `{role: dataset field}`, e.g. `{"text": "sentence", "label": "label"}`; defaults
               come from `CATALOG_FIELDS` or the local format.
  label_names  declared label set for local tables (else the sorted set found in the files).
  tag_names    declared tag set for local CoNLL files (else found in the files).
  text_mode    local text: "lines" (a document per line) or "files" (a document per file).
  table_format local tables: "auto" (by extension), "tsv", "csv" or "jsonl".
  token_column, tag_column   local CoNLL columns (default 0 and -1).
  data_dir     where ArrayRecord files are prepared (default $TFDS_DATA_DIR or
               ~/tensorflow_datasets).
  download     allow TFDS to download and prepare a catalog dataset (needs network).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from data import builders, objectives
from data.errors import DataError
from models import paths

DEFAULT_NAME = "pydoc_topics"

# Default role -> feature maps for catalog names (longest matching prefix wins).
CATALOG_FIELDS: dict[str, dict[str, str]] = {
    "pydoc_topics": {"text": "text"},
    "tiny_shakespeare": {"text": "text"},
    "lm1b": {"text": "text"},
    "c4": {"text": "text"},
    "wikipedia": {"text": "text"},
    "glue/cola": {"text": "sentence", "label": "label"},
    "glue/sst2": {"text": "sentence", "label": "label"},
    "glue/mrpc": {"text": "sentence1", "text_pair": "sentence2", "label": "label"},
    "glue/rte": {"text": "sentence1", "text_pair": "sentence2", "label": "label"},
    "glue/wnli": {"text": "sentence1", "text_pair": "sentence2", "label": "label"},
    "glue/qqp": {"text": "question1", "text_pair": "question2", "label": "label"},
    "glue/qnli": {"text": "question", "text_pair": "sentence", "label": "label"},
    "glue/mnli": {"text": "premise", "text_pair": "hypothesis", "label": "label"},
    "conll2003": {"tokens": "tokens", "tags": "ner"},
    "wmt14_translate": {"source": "en", "target": "$pair"},
    "wmt_t2t_translate": {"source": "en", "target": "$pair"},
    "cnn_dailymail": {"source": "article", "target": "highlights"},
    "xsum": {"source": "document", "target": "summary"},
}
LOCAL_FIELDS = {
    "text": {"text": "text"},
    "table": {"text": "text", "label": "label", "source": "source", "target": "target"},
    "conll": {"tokens": "tokens", "tags": "tags"},
    "parallel": {"source": "source", "target": "target"},
}
_LEGACY_MODULES = ("text", "translate", "summarization")


@dataclasses.dataclass
class Source:
    """Random access to canonical examples of one split.

    Reads go to the ArrayRecord file underneath the TFDS data source and decode each serialized
    `tf.train.Example` straight to the fields this source serves (`ExampleDecoder`); TFDS's own
    per-record feature decoding, a third of the pipeline's time on short documents, is used only
    for features the decoder does not know (images, nested dicts) and for TFDS's mock data.

    Attributes:
      records: the underlying TFDS data source (ArrayRecord), item `i` a feature dict.
      name: a readable name for messages (catalog name or the split's files).
      fields: `{role: feature name}` for the roles this source serves.
      label_names: class names of the `label` role, if any.
      tag_names: class names of the `tags` role, if any.
    """

    records: Sequence[Mapping[str, Any]]
    name: str
    fields: dict[str, str]
    label_names: list[str] | None = None
    tag_names: list[str] | None = None

    def __post_init__(self):
        self._decoder = ExampleDecoder.of(self.records, self.fields.values())

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._getitems([index])[0]

    def _getitems(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Batched read (grain's `SupportsBatchedReadRandomAccessDataSource` protocol)."""
        if self._decoder is not None:
            raw = self.records.data_source.__getitems__(list(indices))
            return [self.canonical(self._decoder(record)) for record in raw]
        raw = None
        if hasattr(self.records, "__getitems__"):
            try:
                raw = self.records.__getitems__(list(indices))
            except TypeError:  # tfds.testing.mock_data binds __getitems__ without `self`
                raw = None
        if raw is None:
            raw = [self.records[i] for i in indices]
        return [self.canonical(record) for record in raw]

    def canonical(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Maps one raw record to `{role: plain value}`."""
        out = {}
        for role, field in self.fields.items():
            value = record[field]
            if role == "tokens":
                out[role] = [_text(v) for v in value]
            elif role == "tags":
                out[role] = [int(v) for v in value]
            elif role == "label":
                out[role] = int(value)
            else:
                out[role] = _text(value)
        return out


class ExampleDecoder:
    """Decodes a serialized `tf.train.Example` to `{field: bytes | int | list}` for given fields.

    TFDS stores `Text` as a bytes list of one value, `ClassLabel` and integer scalars as an int64
    list of one value, and their `Sequence`s as lists; those are the features it decodes. The
    values equal TFDS's `deserialize_example_np` for them (tests/test_data_sources.py).
    """

    def __init__(self, kinds: dict[str, tuple[str, bool]]):
        from tensorflow_datasets.proto import tf_example_pb2

        self._parse = tf_example_pb2.Example.FromString
        self._kinds = kinds  # field -> (proto list kind, is a sequence)

    def __reduce__(self):  # to data worker processes: the proto class is not picklable
        return type(self), (self._kinds,)

    @classmethod
    def of(cls, records, fields) -> ExampleDecoder | None:
        """The decoder of a TFDS data source's `fields`, or None where it cannot serve them."""
        info = getattr(records, "dataset_info", None)
        reader = type(getattr(records, "data_source", None)).__module__
        if info is None or info.features is None or not reader.startswith("array_record"):
            return None  # e.g. tfds.testing.mock_data
        try:
            serialized = info.features.get_serialized_info()
        except (AttributeError, NotImplementedError):
            return None
        kinds = {}
        for field in fields:
            spec = serialized.get(field) if isinstance(serialized, Mapping) else None
            shape = tuple(getattr(spec, "shape", (0, 0)))
            dtype = np.dtype(getattr(spec, "np_dtype", None) or np.void)
            if shape not in ((), (None,)) or dtype.kind not in "OSUiu":
                return None
            kinds[field] = ("int64_list" if dtype.kind in "iu" else "bytes_list", shape == (None,))
        return cls(kinds)

    def __call__(self, serialized: bytes) -> dict[str, Any]:
        feature = self._parse(serialized).features.feature
        out = {}
        for field, (kind, sequence) in self._kinds.items():
            values = getattr(feature[field], kind).value
            out[field] = list(values) if sequence else values[0]
        return out


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def as_dict(cfg) -> dict[str, Any]:
    """Returns a plain, recursively converted dict of a ConfigDict (or dict) config."""
    if hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    return {k: as_dict(v) if hasattr(v, "to_dict") else v for k, v in dict(cfg).items()}


def data_dir(cfg) -> str:
    """Returns the directory where prepared datasets live (created on use): local or gs://."""
    chosen = cfg.get("data_dir") or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return chosen if paths.is_remote(chosen) else os.path.expanduser(chosen)


def _prepared(make, directory: str, download: bool = True):
    """`make(directory)`'s builder, prepared to ArrayRecord once.

    On a bucket the prepared files are read in place, but array_record's writer opens local
    files only: a dataset not yet on the bucket is prepared in a local scratch directory and
    its files are copied up (models.paths.copy_tree), then read from the bucket.
    """
    builder = make(directory)
    if not paths.is_remote(directory):
        return builders.prepare(builder) if download else builder
    target = paths.resolve(builder.data_dir)
    if not (target / "dataset_info.json").exists():
        if not download:
            raise DataError(f"{target}: the dataset is not prepared there and data.download=False")
        with tempfile.TemporaryDirectory() as scratch:
            staged = builders.prepare(make(scratch))
            logging.info("data: copying the prepared dataset to %s", target)
            paths.copy_tree(paths.resolve(staged.data_dir), target)
        builder = make(directory)  # reads the info that is there now
    return builder


def objective_roles(objective: str) -> tuple[str, ...]:
    """Returns the roles an objective needs; raises DataError for an unknown objective."""
    return objectives.get(objective).roles


def load_source(cfg, split: str, objective: str) -> Source:
    """Builds (preparing once) the source of `split` for `objective`.

    Args:
      cfg: the `data` ConfigDict (see the module docstring for its keys).
      split: the pipeline split name, e.g. "train" or "validation".
      objective: a `data.objectives` name; it picks the roles (and the local format when "auto").

    Returns:
      A `Source` of canonical examples.

    Raises:
      DataError: an unknown dataset name, split or field, or bad local files.
    """
    roles = objective_roles(objective)
    cfg = as_dict(cfg)
    if cfg.get("files"):
        return _local_source(cfg, split, objective, roles)
    return _catalog_source(cfg, split, roles)


def _catalog_source(cfg, split: str, roles) -> Source:
    name = cfg.get("name") or DEFAULT_NAME
    tfds_split = dict(cfg.get("splits") or {}).get(split, split)
    records = _tfds_data_source(name, tfds_split, cfg)
    features = records.dataset_info.features
    fields = _pick_fields(name, roles, _catalog_defaults(name), cfg, list(features.keys()))
    return Source(
        records,
        f"{name}[{tfds_split}]",
        fields,
        label_names=_class_names(features, fields.get("label")),
        tag_names=_class_names(features, fields.get("tags")),
    )


def _tfds_data_source(name: str, split: str, cfg):
    kwargs = dict(
        split=split,
        data_dir=data_dir(cfg),
        download=bool(cfg.get("download", True)),
        builder_kwargs={"file_format": "array_record"},
    )
    try:
        if paths.is_remote(kwargs["data_dir"]):
            builder = _prepared(
                lambda d: tfds.builder(name, data_dir=d, file_format="array_record"),
                kwargs["data_dir"],
                kwargs["download"],
            )
            return builder.as_data_source(split=split)
        return tfds.data_source(name, **kwargs)
    except tfds.core.registered.DatasetNotFoundError:
        _import_legacy_builders()
    try:
        return tfds.data_source(name, **kwargs)
    except tfds.core.registered.DatasetNotFoundError:
        base = name.split("/")[0].split(":")[0]
        close = difflib.get_close_matches(base, tfds.list_builders(with_community_datasets=False))
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise DataError(f"data.name: TFDS has no dataset {name!r}{hint}") from None
    except (KeyError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"data.name {name!r}, split {split!r}: {first}") from None


def _import_legacy_builders() -> None:
    # glue, wmt, cnn_dailymail... live in legacy modules that register only when imported.
    import importlib

    for module in _LEGACY_MODULES:
        importlib.import_module(f"tensorflow_datasets.{module}")


def _catalog_defaults(name: str) -> dict[str, str]:
    base = name.split(":")[0]
    for prefix in sorted(CATALOG_FIELDS, key=len, reverse=True):
        if base == prefix or base.startswith(prefix + "/"):
            fields = dict(CATALOG_FIELDS[prefix])
            if fields.get("target") == "$pair":
                pair = base.split("/")[1] if "/" in base else "de-en"
                fields["target"] = next(x for x in pair.split("-") if x != "en")
            return fields
    return {"text": "text"}


def _pick_fields(name, roles, defaults, cfg, available) -> dict[str, str]:
    chosen = {**defaults, **dict(cfg.get("fields") or {})}
    fields = {}
    for role in (*roles, "text_pair"):
        if role == "text_pair" and (role not in chosen or "label" not in roles):
            continue
        field = chosen.get(role, role)
        if field not in available:
            raise DataError(
                f"data.fields.{role}: field {field!r} is not in {name} "
                f"(it has {', '.join(sorted(available))})"
            )
        fields[role] = field
    return fields


def _class_names(features, field: str | None) -> list[str] | None:
    if field is None:
        return None
    feature = features[field]
    feature = getattr(feature, "feature", feature)  # Sequence(ClassLabel) -> ClassLabel
    return list(feature.names) if hasattr(feature, "names") else None


def local_format(cfg, objective: str) -> str:
    """Returns the local builder format: `data.format`, or inferred from objective and files."""
    fmt = cfg.get("format") or "auto"
    if fmt != "auto":
        if fmt not in builders.BUILDERS:
            raise DataError(
                f"data.format: unknown format {fmt!r} (one of "
                f"{', '.join(builders.BUILDERS)} or auto)"
            )
        return fmt
    specs = list(dict(cfg["files"]).values())
    if any(isinstance(s, Mapping) for s in specs):
        return "parallel"
    default = objectives.get(objective).local_format
    if default != "text":
        return default
    patterns = [p for s in specs for p in ([s] if isinstance(s, str) else s)]
    tabular = all(str(p).lower().endswith((".tsv", ".csv", ".jsonl", ".json")) for p in patterns)
    return "table" if tabular else "text"


def _local_source(cfg, split, objective, roles) -> Source:
    fmt = local_format(cfg, objective)
    files = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in dict(cfg["files"]).items()}
    tfds_split = dict(cfg.get("splits") or {}).get(split, split)
    if tfds_split.split("[")[0] not in files:
        raise DataError(f"data.files: no files for split {tfds_split!r} (have {', '.join(files)})")
    chosen = {**LOCAL_FIELDS[fmt], **dict(cfg.get("fields") or {})}
    options = _local_options(cfg, fmt, roles, chosen)
    builder = _prepared(
        lambda d: builders.BUILDERS[fmt](files=files, data_dir=d, **options), data_dir(cfg)
    )
    records = builder.as_data_source(split=tfds_split)
    features = builder.info.features
    available = list(features.keys())
    if fmt == "table":
        fields = _pick_fields(split, roles, chosen, cfg, available)
    else:
        fields = {role: LOCAL_FIELDS[fmt][role] for role in roles if role in LOCAL_FIELDS[fmt]}
        if set(fields) != set(roles):
            raise DataError(
                f"data.format {fmt!r} cannot serve objective {objective!r} "
                f"(it has {', '.join(available)})"
            )
    logging.info("data: %s split %r from %s (%d examples)", fmt, tfds_split, files, len(records))
    return Source(
        records,
        f"{files[tfds_split.split('[')[0]]}[{tfds_split}]",
        fields,
        label_names=_class_names(features, fields.get("label")),
        tag_names=_class_names(features, fields.get("tags")),
    )


def _local_options(cfg, fmt, roles, chosen) -> dict[str, Any]:
    if fmt == "text":
        return {"mode": cfg.get("text_mode") or "lines"}
    if fmt == "conll":
        return {
            "tag_names": list(cfg.get("tag_names") or []) or None,
            "token_column": int(cfg.get("token_column", 0)),
            "tag_column": int(cfg.get("tag_column", -1)),
        }
    if fmt == "parallel":
        return {}
    text_roles = [r for r in roles if r != "label"]
    if "label" in roles and "text_pair" in chosen:
        text_roles.append("text_pair")
    return {
        "text_fields": [chosen.get(r, r) for r in text_roles],
        "label_field": chosen.get("label", "label") if "label" in roles else None,
        "label_names": list(cfg.get("label_names") or []) or None,
        "table_format": cfg.get("table_format") or "auto",
    }
