"""Command line: `python -m models list | info NAME [--json] | convert ...`.

    python -m models list
    python -m models info gpt2
    python -m models info t5-small --json
    python -m models convert --from-hf HF_DIR --to OUR_DIR     # Hugging Face -> Triptych
    python -m models convert --from WORKDIR_OR_DIR --to-hf HF_DIR   # Triptych -> Hugging Face

A Triptych checkpoint directory holds `model_config.json` and `params/` (Orbax); `--from` also
takes a training workdir (its latest checkpoint). Tokenizer files found beside the weights are
copied along.
"""

from __future__ import annotations

import json
import sys

from models.config import ConfigError, get_config, list_architectures
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


_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "special_tokens_map.json",
)


def _copy_tokenizer(source, dest) -> None:
    import shutil
    from pathlib import Path

    for folder in (Path(source), Path(source) / "tokenizer"):
        for name in _TOKENIZER_FILES:
            if (folder / name).is_file():
                shutil.copy(folder / name, Path(dest) / name)


def _convert(args) -> int:
    import dataclasses

    from models import hf
    from models.config import ModelConfig
    from train.checkpoint import load_params, save_params

    if bool(args.from_hf) == bool(args.source):
        raise ConfigError("give exactly one of --from-hf DIR or --from DIR")
    if args.from_hf:
        if not args.to:
            raise ConfigError("--from-hf needs --to DIR (where the Triptych checkpoint goes)")
        config, params = hf.load_pretrained(args.from_hf)
        out = save_params(args.to, dataclasses.asdict(config), params)
        _copy_tokenizer(args.from_hf, out)
        print(f"{config.name} ({config.family}) -> {out}")
        return 0
    if not args.to_hf:
        raise ConfigError("--from needs --to-hf DIR (where the Hugging Face checkpoint goes)")
    config_dict, params = load_params(args.source)
    config = ModelConfig.from_dict(config_dict)
    hf.save_pretrained(config, params, args.to_hf)
    _copy_tokenizer(args.source, args.to_hf)
    print(f"{config.name} ({config.family}) -> {args.to_hf}")
    return 0


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m models", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the named architectures").set_defaults(fn=_list)
    info = sub.add_parser("info", help="family, sizes and parameter count of an architecture")
    info.add_argument("name")
    info.add_argument("--json", action="store_true", help="one JSON object")
    info.set_defaults(fn=_info)
    convert = sub.add_parser("convert", help="Hugging Face <-> Triptych checkpoints")
    convert.add_argument("--from-hf", help="a Hugging Face model directory")
    convert.add_argument("--to", help="the Triptych checkpoint directory to write")
    convert.add_argument("--from", dest="source", help="a Triptych checkpoint dir or workdir")
    convert.add_argument("--to-hf", help="the Hugging Face directory to write")
    convert.set_defaults(fn=_convert)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
