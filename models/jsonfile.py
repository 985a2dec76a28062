"""Checked reads of the JSON files a model directory holds (config.json, a shard index,
model_config.json, tokenizer files, a PEFT adapter config).

    config = jsonfile.read_json(path, error=CheckpointError)    # a dict, or one error line

`read_json` turns every way such a file can be broken (missing, unreadable, empty, not UTF-8,
not JSON, not the expected kind of value) into one `UserError` line that names the file and the
problem, so that a damaged download ends a command with `error: ...` rather than a traceback.
"""

from __future__ import annotations

import json
import os
from typing import Any

from models import paths
from models.errors import UserError

_JSON_NAMES = {dict: "object", list: "array", str: "string", int: "number", float: "number"}
_JSON_NAMES.update({bool: "boolean", type(None): "null"})


def read_json(
    path: str | os.PathLike,
    *,
    error: type[UserError] = UserError,
    expect: type = dict,
    fix: str = "restore the file from its source",
) -> Any:
    """The parsed JSON value of `path` (local or `gs://`).

    Args:
      path: the file.
      error: the `UserError` subclass to raise.
      expect: the type the top-level value must have (dict, list, or object for any).
      fix: what the user should do, appended to every message.

    Raises:
      error: the file is missing, unreadable, empty, not UTF-8, not JSON, or not `expect`.
    """
    file = paths.resolve(path)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise error(f"{file} not found; {fix}") from None
    except OSError as e:
        raise error(f"{file} cannot be read ({e.strerror or e}); {fix}") from None
    if not raw.strip():
        raise error(f"{file} is empty; {fix}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(
            f"{file} is not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start}); {fix}"
        ) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(
            f"{file} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); {fix}"
        ) from None
    except RecursionError:
        raise error(f"{file} is not valid JSON (nested too deeply); {fix}") from None
    if expect is not object and not isinstance(value, expect):
        raise error(
            f"{file} holds a JSON {_JSON_NAMES[type(value)]} where a JSON "
            f"{_JSON_NAMES.get(expect, expect.__name__)} is expected; {fix}"
        )
    return value
