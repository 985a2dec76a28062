"""Command line: `python -m models list | info NAME [--json]`.

python -m models list
python -m models info gpt2
python -m models info t5-small --json
"""

from __future__ import annotations

import argparse
import json
import sys

from models.config import ConfigError, get_config, list_architectures


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the named architectures").set_defaults(fn=_list)
    info = sub.add_parser("info", help="family, sizes and parameter count of an architecture")
    info.add_argument("name")
    info.add_argument("--json", action="store_true", help="one JSON object")
    info.set_defaults(fn=_info)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
