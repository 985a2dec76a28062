"""Command line: convert checkpoints between the Hugging Face and the Triptych formats.

`python -m models convert` is the same command.

    python -m train.convert --from-hf HF_DIR --to OUR_DIR          # Hugging Face -> Triptych
    python -m train.convert --from WORKDIR_OR_DIR --to-hf HF_DIR   # Triptych -> Hugging Face
    python -m train.convert --from WORKDIR --to-hf HF_DIR --push-to-hub ORG/NAME [--private]

A Triptych checkpoint directory holds `model_config.json` and `params/` (Orbax); `--from` also
takes a training workdir (its latest checkpoint). Tokenizer files found beside the weights are
copied along, and every `--to-hf` export gets a model card (README.md: architecture, base model,
data, eval metrics, config and `co2_eq_emissions`; train/card.py). `--from-hf` also takes a Hub
id (`org/name[@revision]`, through the Hugging Face cache). Every directory may be local or on a
bucket (`gs://BUCKET/...`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from models import hf, paths
from models.config import ConfigError, ModelConfig
from models.errors import ArgumentParser, one_line_errors
from models.jsonfile import read_json
from train import card, peft, reference
from train.checkpoint import save_params, workdir_params

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "special_tokens_map.json",
)


def _copy_tokenizer(ref: reference.Reference, dest) -> None:
    """Copies the tokenizer files of a model directory (or of its `tokenizer/`) to `dest`; an
    adapter's are its base's."""
    if ref.kind == reference.PEFT_ADAPTER:
        ref = reference.resolve(ref.lora_base, "--init-from")
    dest = paths.resolve(dest)
    for folder in (ref.path, ref.path / "tokenizer"):
        for name in _TOKENIZER_FILES:
            if (folder / name).is_file():
                (dest / name).write_bytes((folder / name).read_bytes())


def _hf_tokenizer(directory: str, config: ModelConfig) -> None:
    """Makes the tokenizer copied into an exported Hugging Face `directory` load in
    transformers' `AutoTokenizer` exactly as it tokenizes here, and config.json name its ids.

    A tokenizer trained by a run (its tokenizer_config.json names a `family`) is declared a
    plain `PreTrainedTokenizerFast`: the model-type classes (T5Tokenizer, ...) rebuild their own
    normalizer and pre-tokenizer instead of reading tokenizer.json's, and then split other text.
    tokenizer.json gains the family's special-token template (T5 `x </s>`, BART `<s> x </s>`,
    BERT `[CLS] x [SEP]`, none for GPT-2), which `add_special_tokens=True` applies.
    """
    from tokenizers import Tokenizer as Backend
    from tokenizers import processors

    from data.rows import special_frame
    from data.tokenizers import CONFIG_FILE, load_tokenizer

    vocabularies = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model")
    if not any(os.path.isfile(os.path.join(directory, f)) for f in vocabularies):
        return
    tok = load_tokenizer(directory)
    settings_file = os.path.join(directory, CONFIG_FILE)
    settings = read_json(settings_file, error=ConfigError) if os.path.isfile(settings_file) else {}
    tokenizer_file = os.path.join(directory, "tokenizer.json")
    if (
        "family" in settings
        and "tokenizer_class" not in settings
        and os.path.isfile(tokenizer_file)
    ):
        backend = Backend.from_file(tokenizer_file)
        if tok.family != "gpt":
            begin, middle, end = (
                [tok.backend.id_to_token(i) for i in ids] for ids in special_frame(tok)
            )
            single = [*begin, "$A", *end]
            pair = [*begin, "$A", *middle, "$B:1", *(f"{t}:1" for t in end)]
            specials = sorted({(t, tok.backend.token_to_id(t)) for t in begin + middle + end})
            backend.post_processor = processors.TemplateProcessing(
                single=" ".join(single), pair=" ".join(pair), special_tokens=specials
            )
        backend.save(tokenizer_file)
        roles = {f"{role}_token": token for role, token in tok.specials.items()}
        settings.update(
            tokenizer_class="PreTrainedTokenizerFast",
            model_max_length=config.max_positions,
            **roles,
        )
        with open(settings_file, "w") as f:
            json.dump(settings, f, indent=2)
    config_file = os.path.join(directory, "config.json")
    hf_config = read_json(config_file, error=ConfigError)
    ids = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
    if config.family == "encoder_decoder":
        ids["decoder_start_token_id"] = tok.decoder_start_id
    hf_config.update({k: v for k, v in ids.items() if v is not None})
    with open(config_file, "w") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)


def convert(args) -> int:
    """Runs one conversion (`args` from `main`'s parser)."""
    if sum(map(bool, (args.from_hf, args.source, args.from_peft))) != 1:
        raise ConfigError("give exactly one of --from-hf DIR, --from DIR or --from-peft DIR")
    if args.from_peft:
        return _from_peft(args)
    if args.to_peft:
        written = _to_peft(args.source, args.to_peft)
        print(f"LoRA adapter ({len(written['target_modules'])} modules) -> {args.to_peft}")
        return 0
    if args.from_hf:
        if not args.to:
            raise ConfigError("--from-hf needs --to DIR (where the Triptych checkpoint goes)")
        ref = reference.resolve(args.from_hf, "--from-hf", kinds=(reference.HUGGING_FACE,))
        config, params = ref.load()
        out = save_params(args.to, dataclasses.asdict(config), params)
        _copy_tokenizer(ref, out)
        card.write_conversion_card(out, args.from_hf, str(ref.path))
        print(f"{config.name} ({config.family}) -> {out}")
        return 0
    if not args.to_hf:
        raise ConfigError("--from needs --to-hf DIR or --to-peft DIR (what to write)")
    config, target = save_pretrained(
        args.source, args.to_hf, push_to_hub=args.push_to_hub, private=args.private
    )
    print(f"{config.name} ({config.family}) -> {target}")
    if args.push_to_hub:
        print(f"uploaded to https://huggingface.co/{args.push_to_hub}")
    return 0


def _from_peft(args) -> int:
    """A PEFT LoRA adapter on its base (`--init-from`, default the adapter's
    base_model_name_or_path), merged, written as a Triptych (`--to`) or HF (`--to-hf`) dir."""
    if bool(args.to) == bool(args.to_hf):
        raise ConfigError("--from-peft needs one of --to DIR or --to-hf DIR")
    ref = reference.resolve(
        args.from_peft, "--from-peft", kinds=(reference.PEFT_ADAPTER,), base=args.init_from
    )
    config, params = ref.load()
    if args.to:
        out = save_params(args.to, dataclasses.asdict(config), params)
    else:
        out = paths.resolve(args.to_hf)
        with paths.local_dir(out) as local:
            hf.save_pretrained(config, params, local)
            _copy_tokenizer(ref, local)
            _hf_tokenizer(local, config)
    if args.to:
        _copy_tokenizer(ref, out)
    print(f"{config.name} + LoRA adapter {args.from_peft} (merged) -> {out}")
    return 0


def _to_peft(workdir, out) -> dict:
    """A LoRA workdir's latest adapters in PEFT's format (train/peft.py), the base named as
    init_from's Hub id where there is one (`base_model_name_or_path`)."""
    ref = reference.resolve(workdir, "--to-peft", kinds=(reference.WORKDIR,))
    config = ModelConfig.from_dict(ref.saved["resolved_model"])
    base = (card.base_model_id(ref.lora_base) or ref.lora_base) if ref.lora_base else ""
    trained = workdir_params(ref.path, ref.step) if config.lora_rank else {}
    return peft.export(config, trained, base, out)


def save_pretrained(source, target, *, push_to_hub: str | None = None, private: bool = False):
    """Exports `source` (a training workdir's latest checkpoint, or a converted directory) as a
    Hugging Face directory `target` (local or `gs://`): config.json, model.safetensors, the
    tokenizer files and a model card (README.md, train/card.py). `push_to_hub` also uploads
    it to that Hub repo (created if missing; `private` makes a new one private).

    Returns:
      (the ModelConfig, the target path).
    """
    if push_to_hub:
        _check_push(push_to_hub)
    ref = reference.resolve(source, "--from", kinds=(reference.WORKDIR, reference.CONVERTED))
    config, params = ref.load()
    target = paths.resolve(target)
    with paths.local_dir(target) as local:  # copied to a bucket at the end
        hf.save_pretrained(config, params, local)
        _copy_tokenizer(ref, local)
        _hf_tokenizer(local, config)
        card.model_card(config, params, source).save(os.path.join(local, "README.md"))
        if push_to_hub:
            _push(local, push_to_hub, private)
    return config, target


def _check_push(repo: str) -> None:
    """One line for an upload that cannot work, before anything is written."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError:
        raise ConfigError(
            f"--push-to-hub {repo!r} is not a Hub repo id; write NAME or ORG/NAME"
        ) from None
    if constants.HF_HUB_OFFLINE:
        raise ConfigError("--push-to-hub needs the network, and HF_HUB_OFFLINE is set")
    if get_token() is None:
        raise ConfigError("--push-to-hub needs a token: run `hf auth login` or set HF_TOKEN")


def _push(folder: str, repo: str, private: bool) -> None:
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, private=private, exist_ok=True)
    api.upload_folder(folder_path=folder, repo_id=repo, commit_message="Upload from Triptych")


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m models convert", description=__doc__.splitlines()[0])
    parser.add_argument("--from-hf", help="a Hugging Face model directory")
    parser.add_argument("--to", help="the Triptych checkpoint directory to write")
    parser.add_argument("--from", dest="source", help="a Triptych checkpoint dir or workdir")
    parser.add_argument("--to-hf", help="the Hugging Face directory to write (LoRA merged)")
    parser.add_argument("--to-peft", help="with --from WORKDIR: its LoRA adapter, PEFT's format")
    parser.add_argument("--from-peft", help="a PEFT LoRA adapter directory (or Hub id)")
    parser.add_argument("--init-from", help="with --from-peft: the base model (default: its own)")
    parser.add_argument(
        "--push-to-hub", metavar="REPO", help="with --to-hf: also upload it to this Hub repo"
    )
    parser.add_argument(
        "--private", action="store_true", help="with --push-to-hub: a new repo is private"
    )
    args = parser.parse_args(argv)
    if args.private and not args.push_to_hub:
        raise ConfigError("--private goes with --push-to-hub REPO")
    if args.push_to_hub and not args.to_hf:
        raise ConfigError("--push-to-hub goes with --from DIR --to-hf DIR")
    with paths.removed_on_failure(args.to, args.to_hf, args.to_peft):
        return convert(args)


if __name__ == "__main__":
    sys.exit(main())
