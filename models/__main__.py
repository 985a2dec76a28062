"""Command line: `python -m models list | info NAME [--json] | convert ...`.

    python -m models list
    python -m models info gpt2
    python -m models info t5-small --json
    python -m models convert --from-hf HF_DIR --to OUR_DIR     # Hugging Face -> Triptych
    python -m models convert --from WORKDIR_OR_DIR --to-hf HF_DIR   # Triptych -> Hugging Face

`convert` is `python -m train.convert` (checkpoints belong to the training layer), where its
flags are described.
"""

from __future__ import annotations

import json
import sys

from models.config import get_config, list_architectures
from models.errors import ArgumentParser, one_line_errors


def _info(args) -> int:
    from models.summary import describe

    info = describe(get_config(args.name))
    if args.json:
        print(json.dumps(info))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            print(
                f"{key:<{width}}  {value:,}"
                if isinstance(value, int) and not isinstance(value, bool)
                else f"{key:<{width}}  {value}"
            )
    return 0


def _list(args) -> int:
    for name in list_architectures():
        print(name)
    return 0


def _convert(args, rest: list[str]) -> int:
    # checkpoints are the training layer's (Orbax); its converter CLI lives there
    import importlib

    return importlib.import_module("train.convert").main(rest)


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m models", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the named architectures").set_defaults(fn=_list)
    info = sub.add_parser("info", help="family, sizes and parameter count of an architecture")
    info.add_argument("name")
    info.add_argument("--json", action="store_true", help="one JSON object")
    info.set_defaults(fn=_info)
    convert = sub.add_parser(
        "convert",
        help="Hugging Face <-> Triptych checkpoints (python -m train.convert)",
        add_help=False,
    )
    convert.set_defaults(fn=_convert)
    args, rest = parser.parse_known_args(argv)
    if args.command != "convert" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.fn(args, rest) if args.command == "convert" else args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
