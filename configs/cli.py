"""Config files and `--config.KEY=VALUE` overrides from the command line, with one-line errors.

    config = load_config("configs/gpt_lm.py:smoke")          # path[:variant]
    apply_overrides(config, [("data.files", "corpus.txt"), ("steps", "100")])

A config file defines `get_config(arg)` and, for the variants `arg` may name, `VARIANTS`. Every
key of the returned ConfigDict can be set from the command line, whatever its default:

  - scalars take the default's type (`--config.steps=100`, `--config.dropout=false`); a key whose
    default is unset (a typed placeholder) takes that type;
  - tuples and lists take `a,b,c` or a literal (`["a", "b"]`); dicts take a literal
    (`{"text": "sentence"}`), and the dicts of names, `data.splits` and `data.fields`, take one
    entry at a time too (`--config.data.fields.text=sentence`);
  - `--config.data.files=PATH` (a path or a glob) sets the training files and replaces the config
    file's own; `--config.data.files.SPLIT=PATH` sets one split, and for parallel text its value
    is `SOURCE,TARGET` (in a file value, a comma always makes a pair). Given files without a
    validation split, the last `HOLDOUT_PERCENT` (5%) of the training examples become one, and
    the log says so.

Keys with a closed set of values (objective, task, optimizer, schedule, kernel, dtype, ...) are
checked against it at once. Every mistake is a `UserError` whose message names the key and what
it takes; keys are documented in configs/common.py.
"""

from __future__ import annotations

import ast
import difflib
import glob
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import ml_collections

from models.errors import UserError, fail, one_line_errors, one_of

CONFIG_DIR = Path(__file__).resolve().parent
DOCS = "configs/common.py"
# Dicts whose keys are names the user picks (splits, roles), not a fixed schema.
OPEN_DICTS = ("data.files", "data.splits", "data.fields")
_EXAMPLES = {"data.splits": "validation=train[90%:]", "data.fields": "text=sentence"}
HOLDOUT_PERCENT = 5  # of local training files given without a validation split
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def choices() -> dict[str, tuple]:
    """The keys of the models and data layers with a closed set of values, each with its
    allowed values (from their homes). train/run_config.py adds the keys that train/ owns, so
    that nothing here reaches up into train/."""
    from data import builders, objectives, tokenizers
    from models import config as model_config

    model = {
        "family": model_config.FAMILIES,
        "position": model_config.POSITIONS,
        "norm": model_config.NORMS,
        "activation": model_config.ACTIVATIONS,
        "classifier_activation": model_config.ACTIVATIONS,
        "head": model_config.HEADS,
        "attention_kernel": model_config.KERNELS,
        "remat_policy": model_config.REMAT_POLICIES,
        "dtype": model_config.DTYPES,
        "param_dtype": model_config.DTYPES,
    }
    return {
        "data.objective": objectives.names(),
        "data.format": ("auto", *builders.BUILDERS),
        "data.text_mode": ("lines", "files"),
        "data.table_format": ("auto", "tsv", "csv", "jsonl"),
        "tokenizer.kind": tokenizers.KINDS,
        "tokenizer.family": tuple(tokenizers.FAMILIES),
        **{f"model.{k}": v for k, v in model.items()},
    }


def check_choices(config: ml_collections.ConfigDict, extra: dict | None = None) -> None:
    """Raises UserError for the first closed-set key (`choices()`, then `extra`'s) whose value
    is not allowed."""
    for key, allowed in {**choices(), **(extra or {})}.items():
        value = _get(config, key)
        if value is not None:
            one_of(key, value, allowed)


# --- config files -----------------------------------------------------------------------------


def split_spec(spec: str) -> tuple[Path, str | None]:
    """`path[:variant]` -> (path, variant); a bare name such as `gpt_lm` means configs/gpt_lm.py."""
    path, variant = spec, None
    head, sep, tail = spec.rpartition(":")
    if sep and head.endswith(".py"):
        path, variant = head, tail or None
    elif sep and not Path(spec).exists() and "/" not in tail:
        path, variant = head, tail or None
    resolved = Path(path).expanduser()
    if not resolved.exists():  # `gpt_lm`, or `configs/gpt_lm.py` away from the checkout
        shipped = CONFIG_DIR / (resolved.name if resolved.suffix == ".py" else f"{path}.py")
        if shipped.is_file() and resolved.parent in (Path("."), Path("configs")):
            resolved = shipped
    return resolved, variant


def config_names() -> list[str]:
    """The experiment configs that ship with the project."""
    skip = {"__init__", "common", "cli"}
    return sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem not in skip)


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Imports a config file and returns `get_config(variant)`.

    Raises:
      UserError: the file is missing or fails to import, it has no `get_config`, or the variant
        is not one of its `VARIANTS`.
    """
    path, variant = split_spec(spec)
    if not path.is_file():
        raise UserError(
            f"--config: no config file {str(path)!r}; the shipped configs are "
            f"{', '.join(f'configs/{n}.py' for n in config_names())}"
        )
    module = _import(path)
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise UserError(f"--config: {path} defines no get_config(arg) function")
    variants = getattr(module, "VARIANTS", None)
    if variants is not None and variant is not None and variant not in variants:
        raise UserError(
            f"--config: {path} has no variant {variant!r}; its variants: {', '.join(variants)}"
        )
    try:
        config = get_config(variant)
    except UserError:
        raise
    except Exception as e:  # the user's config code: report it as the file's failure
        raise UserError(f"--config: {path}:get_config({variant!r}) failed: {_first(e)}") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise UserError(
            f"--config: {path}:get_config returned {type(config).__name__}, not a ConfigDict"
        )
    return config


def _import(path: Path):
    inside = path.resolve().parent == CONFIG_DIR
    name = f"configs.{path.stem}" if inside else f"_triptych_config_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if path.suffix != ".py" or spec is None:
        raise UserError(f"--config: {path} is not a Python config file (configs/NAME.py)")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise UserError(f"--config: {path} failed to import: {_first(e)}") from e
    sys.modules.setdefault(name, module)
    return module


def _first(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    where = ""
    if isinstance(e, SyntaxError) and e.lineno:
        where = f" (line {e.lineno})"
    return f"{type(e).__name__}: {text[0] if text else ''}{where}"


# --- the command line -------------------------------------------------------------------------


def run_absl(main, default_spec: str | None = None) -> None:
    """The entry point of an absl CLI that takes `--config` and `--config.KEY=VALUE`.

    Those arguments are taken out here (absl cannot parse keys it was not told of, nor set a key
    whose default is unset), absl parses the rest, and `main(argv, spec, overrides)` runs; its
    `UserError`s and absl's own flag errors end in one `error:` line with exit code 2.
    """
    from absl import app, flags

    script = Path(sys.argv[0])
    prog = script.parent.name
    if script.stem != "__main__":
        prog += f".{script.stem}"
    try:
        spec, overrides, rest = split_argv(sys.argv[1:])
    except UserError as e:
        fail(e)

    def parse(argv: list[str]) -> list[str]:
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:
            fail(f"{e}; see python -m {prog} --help")
        except SystemExit as e:  # absl's --help/--helpfull print the flags, then exit 1
            helped = any(a.lstrip("-") in ("help", "helpfull", "helpshort", "h") for a in argv)
            sys.exit(0 if helped else e.code)

    @one_line_errors
    def checked(argv):
        if len(argv) > 1:
            raise UserError(f"unexpected arguments {argv[1:]}; options are --NAME=VALUE")
        if not (spec or default_spec):
            raise UserError("--config is required, e.g. --config configs/gpt_lm.py:smoke")
        return main(argv, spec or default_spec, overrides)

    app.run(lambda argv: sys.exit(checked(argv)), argv=[sys.argv[0], *rest], flags_parser=parse)


def split_argv(argv: Sequence[str]) -> tuple[str | None, list[tuple[str, str]], list[str]]:
    """Takes `--config[=]SPEC` and every `--config.KEY[=]VALUE` out of an argument list.

    Returns:
      (the config spec or None, [(key, value text)] in order, the remaining arguments).
    """
    spec, overrides, rest = None, [], []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if name.startswith("-config"):  # absl takes one dash too
            name = "-" + name
        if name == "--config" or name.startswith("--config."):
            if not eq:
                if i + 1 >= len(args) or args[i + 1].startswith("--"):
                    raise UserError(f"{name} needs a value ({name}=VALUE)")
                value = args[i + 1]
                i += 1
            if name == "--config":
                if not value.strip():
                    raise UserError("--config needs a file, e.g. --config configs/gpt_lm.py:smoke")
                spec = value
            else:
                overrides.append((name.removeprefix("--config."), value))
        else:
            rest.append(arg)
        i += 1
    return spec, overrides, rest


def apply_overrides(
    config: ml_collections.ConfigDict,
    overrides: Sequence[tuple[str, str]],
    *,
    local_files: bool = True,
    choices: dict | None = None,
):
    """Sets each `(dotted key, value text)` on `config`, a parent before its children (so that
    `data.files=a.txt` and `data.files.validation=b.txt` combine in either order), then checks
    the closed-set keys (`choices()` and the caller's `choices`).

    `local_files=False` keeps `data.files` paths as given, unchecked: they name files on the
    machines the run will start on (a cluster launcher checks a config it does not run)."""
    ordered = sorted(overrides, key=lambda kv: kv[0].count("."))
    given = [key for key, _ in ordered]
    for key, text in ordered:
        set_key(config, key, text, local_files=local_files)
    if any(key == "data.files" or key.startswith("data.files.") for key in given):
        hold_out_validation(config)
    check_choices(config, choices)
    return config


def hold_out_validation(config: ml_collections.ConfigDict) -> None:
    """Carves a validation split out of local training files that come without one: the
    first `100 - HOLDOUT_PERCENT`% of the examples train, the rest validate."""
    files = dict(config.data.files or {})
    splits = dict(config.data.splits or {})
    if "train" not in files or "validation" in files or {"train", "validation"} & set(splits):
        return
    keep = 100 - HOLDOUT_PERCENT
    splits.update(train=f"train[:{keep}%]", validation=f"train[{keep}%:]")
    _put(config, "data.splits", splits)
    logging.info(
        "data: no validation files given; the last %d%% of %s is the validation split "
        "(data.splits = %s; set --config.data.files.validation=PATH to choose)",
        HOLDOUT_PERCENT,
        files["train"],
        splits,
    )


def set_key(
    config: ml_collections.ConfigDict, key: str, text: str, *, local_files: bool = True
) -> None:
    """Sets one dotted key from its command-line text. Raises UserError naming the key."""
    parts = key.split(".")
    if not all(parts):
        raise UserError(f"--config.{key}: empty key part; keys look like data.files")
    if key == "data.files" or key.startswith("data.files."):
        return _set_files(config, parts[2:], text, key, local_files)
    parent = config
    for depth, part in enumerate(parts[:-1]):
        here = ".".join(parts[: depth + 1])
        if here in OPEN_DICTS:
            return _set_entry(config, here, parts[depth + 1 :], text)
        parent = _child(config, parent, part, here)
    leaf = parts[-1]
    if leaf not in parent:
        raise UserError(_unknown(config, key))
    if isinstance(parent[leaf], ml_collections.ConfigDict) and key not in OPEN_DICTS:
        names = ", ".join(list(parent[leaf])[:6])
        raise UserError(
            f"--config.{key} is a section, not a value; set its keys, e.g. "
            f"--config.{key}.KEY=VALUE (its keys: {names}, ...)"
        )
    parent[leaf] = parse_value(key, text, parent.get_type(leaf), parent[leaf])


def parse_value(key: str, text: str, kind: type, current=None):
    """Converts command-line text to `kind` (the default's type). Raises UserError."""
    if issubclass(kind, ml_collections.ConfigDict) or kind is dict:
        name, _, entry = _EXAMPLES.get(key, "KEY=VALUE").partition("=")
        value = _literal(key, text, dict, f'a dict such as {{"{name}": "{entry}"}}')
        return ml_collections.ConfigDict(value) if kind is not dict else value
    if kind is bool:
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise UserError(f"--config.{key}={text!r}: expected a bool (true or false)")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise UserError(f"--config.{key}={text!r}: expected an int") from None
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise UserError(f"--config.{key}={text!r}: expected a float") from None
    if kind in (tuple, list):
        value = None
        if text.strip().startswith(("[", "(")):  # a literal, or a regex such as (a|b)/c
            try:
                value = ast.literal_eval(text.strip())
            except (ValueError, SyntaxError):
                value = None
            if not isinstance(value, list | tuple):
                value = None
        if value is None:  # a,b,c; empty = none
            value = [x.strip() for x in text.split(",") if x.strip()]
        return kind(value)
    if kind is str:
        return text
    if kind is type(None):  # an unset key without a declared type: a literal or a string
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    raise UserError(f"--config.{key}: values of type {kind.__name__} cannot be set here")


def _literal(key, text, kinds, example):
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = None
    if not isinstance(value, kinds):
        raise UserError(f"--config.{key}={text!r}: expected {example}")
    return value


def _child(config, parent, part: str, here: str):
    if part not in parent:
        raise UserError(_unknown(config, here))
    child = parent[part]
    if not isinstance(child, ml_collections.ConfigDict):
        raise UserError(
            f"--config.{here} is a {type(child).__name__}, not a section; set it "
            f"with --config.{here}=VALUE"
        )
    return child


def _set_entry(config, section: str, rest: list[str], text: str) -> None:
    """One entry of an open dict: `data.fields.text=sentence`."""
    if len(rest) != 1:
        raise UserError(
            f"--config.{section}.{'.'.join(rest)}: {section} entries are one name deep, e.g. "
            f"--config.{section}.{_EXAMPLES[section]}"
        )
    entries = dict(_get(config, section) or {})
    entries[rest[0]] = text
    _put(config, section, entries)


def _set_files(config, rest: list[str], text: str, key: str, local_files: bool) -> None:
    if len(rest) > 1:
        raise UserError(
            f"--config.{key}: use --config.data.files=PATH or --config.data.files.SPLIT=PATH"
        )
    value = _file_spec(key, text, local_files)
    if not rest:  # the training files; the config file's own splits go
        files = {"train": value}
    else:
        current = _get(config, "data.files")  # a dict or ConfigDict when the config sets it
        files = dict(current) if isinstance(current, dict | ml_collections.ConfigDict) else {}
        files[rest[0]] = value
    _put(config, "data.files", files)


def _file_spec(key: str, text: str, local_files: bool = True):
    """A path or glob (absolute, so that a resumed run finds it from anywhere), or for
    parallel text a `SOURCE,TARGET` pair of them."""
    if not text.strip():
        raise UserError(f"--config.{key}: give a path or a glob")
    if "," in text:
        pair = [p.strip() for p in text.split(",")]
        if len(pair) != 2 or not all(pair):
            raise UserError(f"--config.{key}={text!r}: parallel text takes SOURCE,TARGET")
        return {
            "source": _local(key, pair[0], local_files),
            "target": _local(key, pair[1], local_files),
        }
    return _local(key, text, local_files)


def _local(key: str, pattern: str, local_files: bool = True) -> str:
    if "://" in pattern or not local_files:  # a bucket, or another machine's disk
        return pattern
    path = os.path.abspath(os.path.expanduser(pattern))
    if not glob.glob(path):
        raise UserError(f"--config.{key}: no file matches {pattern!r} (from {os.getcwd()})")
    return path


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return None
        node = node[part]
    return node


def _put(config, dotted: str, value: dict) -> None:
    """Replaces a dict-valued key whole (ConfigDict keeps a key's first type otherwise)."""
    *path, leaf = dotted.split(".")
    parent = _get(config, ".".join(path)) if path else config
    plain = {
        k: (dict(v) if isinstance(v, dict | ml_collections.ConfigDict) else v)
        for k, v in value.items()
    }
    with parent.ignore_type():
        parent[leaf] = ml_collections.ConfigDict(plain)


def keys(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[str]:
    """Every settable dotted key (open dicts count as one key)."""
    for name in config:
        dotted = f"{prefix}{name}"
        value = config[name]
        if isinstance(value, ml_collections.ConfigDict) and dotted not in OPEN_DICTS:
            yield from keys(value, dotted + ".")
        else:
            yield dotted


def _unknown(config, key: str) -> str:
    known = list(keys(config))
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    if not close:  # a right leaf in the wrong section: steps vs data.steps
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in known if k.rsplit(".", 1)[-1] == leaf][:3]
    if close:
        return f"--config.{key}: no such key; did you mean {' or '.join(close)}?"
    closest = difflib.get_close_matches(key, known, n=3, cutoff=0.0)
    return (
        f"--config.{key}: no such key; the closest are {', '.join(closest)} "
        f"(every key is documented in {DOCS})"
    )
