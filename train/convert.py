"""Command line: convert checkpoints between the Hugging Face and the Triptych formats.

`python -m models convert` is the same command.

    python -m train.convert --from-hf HF_DIR --to OUR_DIR          # Hugging Face -> Triptych
    python -m train.convert --from WORKDIR_OR_DIR --to-hf HF_DIR   # Triptych -> Hugging Face

A Triptych checkpoint directory holds `model_config.json` and `params/` (Orbax); `--from` also
takes a training workdir (its latest checkpoint). Tokenizer files found beside the weights are
copied along. Every directory may be local or on a bucket (`gs://BUCKET/...`).
"""

from __future__ import annotations

import dataclasses
import sys

from models import hf, paths
from models.config import ConfigError, ModelConfig
from models.errors import ArgumentParser, one_line_errors
from train.checkpoint import load_params, save_params

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
    source, dest = paths.resolve(source), paths.resolve(dest)
    for folder in (source, source / "tokenizer"):
        for name in _TOKENIZER_FILES:
            if (folder / name).is_file():
                (dest / name).write_bytes((folder / name).read_bytes())


def convert(args) -> int:
    """Runs one conversion (`args` from `main`'s parser)."""
    if bool(args.from_hf) == bool(args.source):
        raise ConfigError("give exactly one of --from-hf DIR or --from DIR")
    if args.from_hf:
        if not args.to:
            raise ConfigError("--from-hf needs --to DIR (where the Triptych checkpoint goes)")
        with paths.local_copy(args.from_hf, files_only=True) as local:
            config, params = hf.load_pretrained(local)
        out = save_params(args.to, dataclasses.asdict(config), params)
        _copy_tokenizer(args.from_hf, out)
        print(f"{config.name} ({config.family}) -> {out}")
        return 0
    if not args.to_hf:
        raise ConfigError("--from needs --to-hf DIR (where the Hugging Face checkpoint goes)")
    config_dict, params = load_params(args.source)
    config = ModelConfig.from_dict(config_dict)
    target = paths.resolve(args.to_hf)
    with paths.local_dir(target) as local:  # copied to a bucket at the end
        hf.save_pretrained(config, params, local)
        _copy_tokenizer(args.source, local)
    print(f"{config.name} ({config.family}) -> {target}")
    return 0


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m models convert", description=__doc__.splitlines()[0])
    parser.add_argument("--from-hf", help="a Hugging Face model directory")
    parser.add_argument("--to", help="the Triptych checkpoint directory to write")
    parser.add_argument("--from", dest="source", help="a Triptych checkpoint dir or workdir")
    parser.add_argument("--to-hf", help="the Hugging Face directory to write")
    return convert(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
