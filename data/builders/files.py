"""Strict readers for local files: globs, UTF-8 lines, CSV/TSV/JSONL records, CoNLL sentences.

Each reader raises `data.errors.DataError` with a one-line message naming the file and the line
for a missing or empty file, non-UTF-8 bytes, a malformed row or a missing field.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
from collections.abc import Iterator, Sequence

from data.errors import DataError


def expand(patterns: str | Sequence[str]) -> list[str]:
    """Expands paths or glob patterns into a sorted list of existing, non-empty files.

    Args:
      patterns: one path or glob, or a list of them (`~` is expanded).

    Returns:
      The matching file paths: sorted within a pattern, in pattern order across patterns.

    Raises:
      DataError: a path does not exist, a glob matches nothing, or a file is empty.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    paths: list[str] = []
    for pattern in patterns:
        pattern = os.path.expanduser(str(pattern))
        if glob.has_magic(pattern):
            found = sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
            if not found:
                raise DataError(f"{pattern}: no file matches this pattern")
        elif os.path.isfile(pattern):
            found = [pattern]
        else:
            raise DataError(f"{pattern}: no such file")
        for path in found:
            if os.path.getsize(path) == 0:
                raise DataError(f"{path}: file is empty")
        paths.extend(found)
    return paths


def fingerprint(paths: Sequence[str], *extra: object) -> str:
    """Returns a short hash of file identities (path, size, mtime) and options, for cache names."""
    digest = hashlib.sha256()
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    digest.update(repr(extra).encode())
    return digest.hexdigest()[:12]


def read_lines(path: str) -> Iterator[tuple[int, str]]:
    """Yields `(line_number, line)` (1-based, without the newline) of a UTF-8 text file.

    Raises:
      DataError: the bytes of a line are not valid UTF-8.
    """
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{path}:{number}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column "
                    f"{e.start + 1})"
                ) from None
            yield number, line.rstrip("\r\n")


def read_text(path: str) -> str:
    """Returns a whole UTF-8 file; raises DataError naming the line of the first bad byte."""
    return "\n".join(line for _, line in read_lines(path))


def _format_of(path: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    lower = path.lower()
    for suffix in ("jsonl", "tsv", "csv"):
        if lower.endswith(f".{suffix}") or lower.endswith(f".{suffix}.txt"):
            return suffix
    if lower.endswith(".json"):
        return "jsonl"
    raise DataError(f"{path}: cannot tell the table format from the name; set data.table_format")


def read_records(
    path: str, fields: Sequence[str], *, table_format: str = "auto", header: bool = True
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yields `(line_number, {field: value})` from a TSV, CSV or JSONL file.

    Args:
      path: the file.
      fields: the field names to keep; each must exist (a header column or a JSON key). For a TSV
        or CSV file without a header, fields may be column numbers written as strings ("0", "1").
      table_format: "tsv", "csv", "jsonl" or "auto" (from the file extension).
      header: whether a TSV/CSV file starts with a header line naming its columns.

    Raises:
      DataError: a field is missing, a row is short, a JSON line is malformed, or bytes are not
        UTF-8.
    """
    fmt = _format_of(path, table_format)
    lines = read_lines(path)
    if fmt == "jsonl":
        yield from _jsonl_records(path, lines, fields)
        return
    delimiter = "\t" if fmt == "tsv" else ","
    columns = None
    for number, line in lines:
        if not line.strip():
            continue
        row = next(csv.reader(io.StringIO(line), delimiter=delimiter, quoting=_quoting(fmt)))
        if columns is None:
            columns = _columns(path, number, row if header else None, fields)
            if header:
                continue
        if len(row) <= max(columns.values()):
            raise DataError(
                f"{path}:{number}: expected {max(columns.values()) + 1} columns, found {len(row)}"
            )
        yield number, {name: row[index] for name, index in columns.items()}


def _quoting(fmt: str) -> int:
    # TSV corpora (GLUE) contain bare quote characters, which are text, not quoting.
    return csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL


def _columns(path: str, number: int, header: list[str] | None, fields: Sequence[str]):
    columns = {}
    for name in fields:
        if header is not None and name in header:
            columns[name] = header.index(name)
        elif header is None and name.isdigit():
            columns[name] = int(name)
        else:
            known = ", ".join(header) if header else "no header"
            raise DataError(f"{path}:{number}: field {name!r} is not a column ({known})")
    return columns


def _jsonl_records(path, lines, fields):
    for number, line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: expected a JSON object")
        for name in fields:
            if name not in record:
                raise DataError(f"{path}:{number}: field {name!r} is missing")
        yield number, {name: _as_text(record[name]) for name in fields}


def _as_text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def read_conll(
    path: str, *, token_column: int = 0, tag_column: int = -1
) -> Iterator[tuple[int, list[str], list[str]]]:
    """Yields `(first_line_number, tokens, tags)` per sentence of a CoNLL column file.

    Sentences are separated by blank lines; `-DOCSTART-` lines are skipped.

    Raises:
      DataError: a line has too few columns, or bytes are not UTF-8.
    """
    tokens, tags, start = [], [], 0
    for number, line in read_lines(path):
        parts = line.split()
        if not parts or parts[0] == "-DOCSTART-":
            if tokens:
                yield start, tokens, tags
            tokens, tags = [], []
            continue
        needed = max(token_column, tag_column) + 1 if tag_column >= 0 else -tag_column
        if len(parts) < max(needed, token_column + 1, 2):
            raise DataError(f"{path}:{number}: expected a token and a tag column, got {line!r}")
        if not tokens:
            start = number
        tokens.append(parts[token_column])
        tags.append(parts[tag_column])
    if tokens:
        yield start, tokens, tags
