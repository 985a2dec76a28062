"""The project's one error type for bad user input, and how every command line reports it.

Every problem a user can fix (a config key that does not exist, a value of the wrong type, an
unknown architecture, objective or dataset, a bad file, a mesh that does not fit the devices) is
raised as a `UserError` subclass where the input is checked, with a one-line message that names
the key, file or value and says what to do. The top of each CLI catches `UserError` alone and
prints `error: <message>` as the last line on stderr, with exit code 2 and no traceback; any
other exception is a bug and keeps its traceback.

This module sits in `models/` because `models` and `data` are the two bottom layers and `data`
already depends on nothing else of ours: every package can import it without an import cycle.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

EXIT_USAGE = 2  # argparse's and the shells' convention for "the command line was wrong"


class UserError(ValueError):
    """Bad input: the message is one line that names the culprit and the fix."""


def report(message) -> int:
    """Prints `error: message` (one line) as the last line on stderr; returns exit code 2."""
    sys.stdout.flush()
    text = " ".join(str(message).split("\n")).strip()
    print(f"error: {text}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def quiet_closed_event_loop() -> None:
    """After a failed read of a damaged checkpoint, the storage library's leftover callbacks
    (tensorstore's, posting to Orbax's event loop once it is closed) stay quiet, so that the
    error line is not followed by their tracebacks; anything else is reported as Python
    would (`sys.unraisablehook`)."""
    default = sys.unraisablehook

    def hook(unraisable) -> None:
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and "Event loop is closed" in str(error):
            return
        default(unraisable)

    if getattr(default, "__name__", "") != "hook":
        sys.unraisablehook = hook


def fail(message) -> NoReturn:
    """`report(message)`, then exit with code 2."""
    sys.exit(report(message))


def one_line_errors(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wraps a CLI's `main`: a `UserError` is reported as one line and returns 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except UserError as e:
            return report(e)

    return wrapper


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors end with one `error: ...` line (exit 2), as every CLI's do.

    argparse's own last line is `prog: error: ...`; subparsers made by `add_subparsers` inherit
    this class, so a bad sub-command argument reads the same.
    """

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        fail(f"{self.prog}: {message}")


def one_of(key: str, value, allowed: Sequence, error: type[UserError] = UserError) -> None:
    """Raises `error` naming `key` and the allowed values unless `value` is one of them."""
    if value not in allowed:
        shown = ", ".join(repr(a) if a == "" else str(a) for a in allowed)
        raise error(f"{key}={value!r} is not supported; allowed values: {shown}")
