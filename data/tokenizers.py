"""Tokenizers: train one on a dataset, save it with the run, load Hugging Face vocabularies.

Built on the Hugging Face `tokenizers` library. A `Tokenizer` wraps a `tokenizers.Tokenizer` with
the special tokens of a model family, looked up by role:

  bert         [PAD] [UNK] [CLS] [SEP] [MASK]
  gpt          <|endoftext|> (bos = eos = pad)
  t5           <pad> </s> <unk> and sentinels <extra_id_0> ... <extra_id_99>; decoder start <pad>
  bart         <s> <pad> </s> <unk> <mask>; cls = <s>, sep = </s>; decoder start </s>
  transformer  <pad> <unk> <s> </s>; decoder start <s>

`train_tokenizer` trains byte-level BPE ("bpe"), WordPiece ("wordpiece") or SentencePiece-style
unigram ("unigram"); `Tokenizer.save(dir)` writes `tokenizer.json` + `tokenizer_config.json`;
`load_tokenizer(path)` reads such a directory or a Hugging Face one (tokenizer.json, vocab.txt,
vocab.json + merges.txt, or spiece.model, the last through the `sentencepiece` package's model
proto). Encoding never adds special tokens: the row builders in `data.rows` place them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from data.errors import DataError
from models import hub, paths
from models.jsonfile import read_json

ROLES = ("pad", "unk", "bos", "eos", "cls", "sep", "mask")
KINDS = ("bpe", "wordpiece", "unigram")
FAMILIES: dict[str, dict[str, str]] = {
    "bert": {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
    "gpt": {
        "pad": "<|endoftext|>",
        "unk": "<|endoftext|>",
        "bos": "<|endoftext|>",
        "eos": "<|endoftext|>",
    },
    "t5": {"pad": "<pad>", "eos": "</s>", "unk": "<unk>"},
    "bart": {
        "bos": "<s>",
        "pad": "<pad>",
        "eos": "</s>",
        "unk": "<unk>",
        "cls": "<s>",
        "sep": "</s>",
        "mask": "<mask>",
    },
    "transformer": {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>"},
}
DECODER_START = {"t5": "pad", "bart": "eos", "transformer": "bos", "gpt": "bos", "bert": "cls"}
MODEL_TYPES = {
    "bert": "bert",
    "distilbert": "bert",
    "roberta": "bart",
    "gpt2": "gpt",
    "t5": "t5",
    "mt5": "t5",
    "bart": "bart",
    "marian": "transformer",
}
NUM_SENTINELS = 100
CONFIG_FILE = "tokenizer_config.json"


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the special tokens of its model family.

    Attributes:
      backend: the Hugging Face `tokenizers.Tokenizer`.
      family: "bert", "gpt", "t5", "bart" or "transformer".
      specials: `{role: token}` for the roles this vocabulary has.
    """

    def __init__(
        self, backend: tokenizers.Tokenizer, family: str, specials: dict[str, str] | None = None
    ):
        if family not in FAMILIES:
            raise DataError(f"tokenizer family {family!r} is not one of {', '.join(FAMILIES)}")
        backend.no_padding()  # Hugging Face files may carry padding/truncation; batching is ours.
        backend.no_truncation()
        self.backend = backend
        self.family = family
        wanted = specials if specials is not None else FAMILIES[family]
        self.specials = {r: t for r, t in wanted.items() if backend.token_to_id(t) is not None}

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def id_of(self, role: str) -> int | None:
        """Returns the id of a special role ("pad", "eos", ...); None if the vocabulary lacks it."""
        token = self.specials.get(role)
        return None if token is None else self.backend.token_to_id(token)

    pad_id = property(lambda self: self.id_of("pad"), doc="[PAD]/<pad> id or None.")
    unk_id = property(lambda self: self.id_of("unk"), doc="Unknown-token id or None.")
    bos_id = property(lambda self: self.id_of("bos"), doc="BOS id or None.")
    eos_id = property(lambda self: self.id_of("eos"), doc="EOS id or None.")
    cls_id = property(lambda self: self.id_of("cls"), doc="[CLS] id or None.")
    sep_id = property(lambda self: self.id_of("sep"), doc="[SEP] id or None.")
    mask_id = property(lambda self: self.id_of("mask"), doc="[MASK]/<mask> id or None.")

    @property
    def decoder_start_id(self) -> int:
        """The id a seq2seq decoder starts from (T5 <pad>, BART </s>, Transformer <s>)."""
        role = DECODER_START[self.family]
        found = self.id_of(role)
        return found if found is not None else self.id_of("pad") or 0

    @property
    def special_ids(self) -> list[int]:
        """Sorted ids of every special or added token (never masked or corrupted)."""
        added = [
            self.backend.token_to_id(t.content)
            for t in self.backend.get_added_tokens_decoder().values()
            if t.special
        ]
        return sorted({*added, *(self.id_of(r) for r in self.specials)} - {None})

    def sentinel_ids(self, count: int) -> np.ndarray:
        """Returns the ids of `<extra_id_0>` ... `<extra_id_{count-1}>` (T5 span sentinels)."""
        ids = [self.backend.token_to_id(f"<extra_id_{i}>") for i in range(count)]
        if any(i is None for i in ids):
            raise DataError(
                f"tokenizer has fewer than {count} <extra_id_N> sentinel tokens; "
                "train one with family='t5'"
            )
        return np.asarray(ids, np.int32)

    def encode(self, text: str) -> np.ndarray:
        """Encodes text to int32 ids without special tokens."""
        return np.asarray(self.backend.encode(text, add_special_tokens=False).ids, np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Encodes many texts in parallel (Rust threads), without special tokens."""
        return [np.asarray(ids, np.int32) for ids in self.encode_batch_lists(texts)]

    def encode_batch_lists(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode_batch` as Python lists, through `encode_batch_fast` (the same ids, without
        the character offsets: a third less time)."""
        encoded = self.backend.encode_batch_fast(list(texts), add_special_tokens=False)
        return [e.ids for e in encoded]

    def encode_with_words(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Returns `(ids, word_start)`; `word_start[i]` is True where a new word begins."""
        encoding = self.backend.encode(text, add_special_tokens=False)
        return np.asarray(encoding.ids, np.int32), _word_starts(encoding.word_ids)

    def encode_batch_with_words(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Batched `encode_with_words`."""
        encoded = self.backend.encode_batch(list(texts), add_special_tokens=False)
        return [(np.asarray(e.ids, np.int32), _word_starts(e.word_ids)) for e in encoded]

    def encode_words(self, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Encodes pre-split words; returns `(ids, word_index)` mapping each id to its word."""
        encoding = self.backend.encode(list(words), is_pretokenized=True, add_special_tokens=False)
        word_ids = [-1 if w is None else w for w in encoding.word_ids]
        return np.asarray(encoding.ids, np.int32), np.asarray(word_ids, np.int32)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Decodes ids back to text."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def save(self, directory: str) -> str:
        """Writes `tokenizer.json` and `tokenizer_config.json` into `directory`; returns it."""
        os.makedirs(directory, exist_ok=True)
        self.backend.save(os.path.join(directory, "tokenizer.json"))
        config = {"family": self.family, **{f"{r}_token": t for r, t in self.specials.items()}}
        with open(os.path.join(directory, CONFIG_FILE), "w") as f:
            json.dump(config, f, indent=2)
        return directory


def _word_starts(word_ids: Sequence[int | None]) -> np.ndarray:
    previous = [None, *word_ids[:-1]]
    return np.array([w is None or w != p for w, p in zip(word_ids, previous)], bool)


def family_tokens(family: str, num_sentinels: int = NUM_SENTINELS) -> list[str]:
    """Returns the special tokens a freshly trained tokenizer of `family` reserves, in id order."""
    if family not in FAMILIES:
        raise DataError(f"tokenizer family {family!r} is not one of {', '.join(FAMILIES)}")
    tokens = list(dict.fromkeys(FAMILIES[family].values()))
    if family == "t5":
        tokens += [f"<extra_id_{i}>" for i in range(num_sentinels)]
    return tokens


def train_tokenizer(
    texts: Iterable[str],
    *,
    kind: str = "bpe",
    vocab_size: int = 8192,
    family: str = "gpt",
    lowercase: bool = False,
    min_frequency: int = 2,
    save_dir: str | None = None,
) -> Tokenizer:
    """Trains a tokenizer on an iterable of texts.

    Args:
      texts: the training corpus, e.g. `data.pipeline.iter_texts(cfg, "train")`.
      kind: "bpe" (byte-level BPE, GPT-2 style), "wordpiece" (BERT style) or "unigram"
        (SentencePiece-style unigram with Metaspace, T5 style).
      vocab_size: target vocabulary size, special tokens included.
      family: which special tokens to reserve ("bert", "gpt", "t5", "bart", "transformer").
      lowercase: lowercase (and, for WordPiece, strip accents) before tokenizing.
      min_frequency: minimum pair frequency for BPE/WordPiece merges.
      save_dir: if given, the tokenizer is saved there (tokenizer.json + tokenizer_config.json).

    Returns:
      The trained `Tokenizer`.
    """
    special = family_tokens(family)
    if kind == "bpe":
        backend = tokenizers.Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=special,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    elif kind == "wordpiece":
        backend = tokenizers.Tokenizer(models.WordPiece(unk_token=_unk(family)))
        backend.normalizer = normalizers.BertNormalizer(
            lowercase=lowercase, strip_accents=lowercase
        )
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=special,
            show_progress=False,
        )
    elif kind == "unigram":
        backend = tokenizers.Tokenizer(models.Unigram())
        backend.pre_tokenizer = pre_tokenizers.Metaspace()
        backend.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size,
            special_tokens=special,
            unk_token=_unk(family),
            show_progress=False,
        )
    else:
        raise DataError(f"tokenizer.kind={kind!r} is not one of {', '.join(KINDS)}")
    if lowercase and kind != "wordpiece":
        backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    elif kind == "unigram":
        backend.normalizer = normalizers.NFKC()
    backend.train_from_iterator(texts, trainer=trainer)
    # The run tokenizes with the saved form: a Unigram model's scores round in tokenizer.json,
    # and where two segmentations tie, the trained object and its saved copy (what data
    # workers receive and a resumed run loads) may pick differently.
    backend = tokenizers.Tokenizer.from_str(backend.to_str())
    tokenizer = Tokenizer(backend, family)
    if save_dir:
        tokenizer.save(save_dir)
    return tokenizer


def _unk(family: str) -> str:
    return FAMILIES[family]["unk"]


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "spiece.model")


def find_tokenizer(directory: str | None) -> str | None:
    """The folder holding a checkpoint's tokenizer files: `directory` itself (Hugging Face) or
    its `tokenizer/` subfolder (a workdir or converted checkpoint); None if there is none."""
    if not directory:
        return None
    root = paths.resolve(hub.resolve(directory, "init_from"))
    for folder in (root, root / "tokenizer"):
        if any((folder / f).exists() for f in TOKENIZER_FILES):
            return str(folder)
    return None


def load_tokenizer(path: str, family: str | None = None) -> Tokenizer:
    """Loads a tokenizer saved by `Tokenizer.save` or a Hugging Face model directory.

    Args:
      path: a directory (with tokenizer.json, vocab.txt, vocab.json + merges.txt or spiece.model),
        one of those files, or a Hugging Face Hub id (`org/name[@revision]`).
      family: override the family; by default it is read from tokenizer_config.json
        (`family`), config.json (`model_type`) or guessed from the special tokens.

    Returns:
      The `Tokenizer`.

    Raises:
      DataError: nothing loadable is there.
    """
    path = hub.resolve(path, "tokenizer.path", model=False)  # a Hub id: its cached snapshot
    if paths.is_remote(path):  # read from a local copy of the folder's files
        remote = paths.resolve(path)
        folder, name = (remote, None) if remote.is_dir() else (remote.parent, remote.name)
        with paths.local_copy(folder, files_only=True) as local:
            return load_tokenizer(os.path.join(local, name) if name else local, family)
    path = os.path.expanduser(path)
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    config = _read_json(os.path.join(directory, CONFIG_FILE))
    try:
        backend = _load_backend(path, directory, config)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - tokenizers and protobuf report bad files in many types
        lines = str(e).strip().splitlines()
        raise DataError(
            f"{path}: the tokenizer files cannot be read ({type(e).__name__}: "
            f"{lines[0][:300] if lines else ''}); copy them again from the model's source"
        ) from None
    family = family or config.get("family") or _model_family(directory) or _guess_family(backend)
    specials = dict(FAMILIES[family])
    specials.update({r: _token(config[f"{r}_token"]) for r in ROLES if config.get(f"{r}_token")})
    return Tokenizer(backend, family, specials)


def _load_backend(path, directory, config) -> tokenizers.Tokenizer:
    def find(name):
        if os.path.isfile(path) and os.path.basename(path) == name:
            return path
        candidate = os.path.join(directory, name)
        return candidate if os.path.isfile(candidate) else None

    if found := find("tokenizer.json"):
        return tokenizers.Tokenizer.from_file(found)
    if found := find("vocab.txt"):
        from tokenizers.implementations import BertWordPieceTokenizer

        lower = bool(config.get("do_lower_case", True))
        return BertWordPieceTokenizer(found, lowercase=lower, strip_accents=lower)._tokenizer
    if (vocab := find("vocab.json")) and (merges := os.path.join(directory, "merges.txt")):
        from tokenizers.implementations import ByteLevelBPETokenizer

        return ByteLevelBPETokenizer(vocab, merges)._tokenizer
    if found := find("spiece.model"):
        return _from_sentencepiece(found)
    raise DataError(f"{path}: no tokenizer.json, vocab.txt, vocab.json+merges.txt or spiece.model")


def _from_sentencepiece(path: str) -> tokenizers.Tokenizer:
    """Converts a SentencePiece unigram model (T5's spiece.model) to a `tokenizers` Unigram."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:
        raise DataError(f"{path}: reading spiece.model needs the sentencepiece package") from None
    proto = sentencepiece_model_pb2.ModelProto()
    with open(path, "rb") as f:
        proto.ParseFromString(f.read())
    if proto.trainer_spec.model_type != 1:
        raise DataError(f"{path}: only unigram SentencePiece models are supported")
    vocab = [(piece.piece, piece.score) for piece in proto.pieces]
    backend = tokenizers.Tokenizer(
        models.Unigram(vocab, proto.trainer_spec.unk_id, proto.trainer_spec.byte_fallback)
    )
    charsmap = proto.normalizer_spec.precompiled_charsmap
    parts = [normalizers.Precompiled(charsmap)] if charsmap else []
    squeeze = normalizers.Replace(tokenizers.Regex(" {2,}"), " ")
    backend.normalizer = normalizers.Sequence([*parts, squeeze])
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    specials = [
        tokenizers.AddedToken(p.piece, special=True) for p in proto.pieces if p.type in (2, 3)
    ]  # UNKNOWN, CONTROL
    backend.add_special_tokens(specials)
    return backend


def _read_json(path: str) -> dict:
    """A JSON object file beside the tokenizer ({} when there is none); DataError if damaged."""
    if not os.path.isfile(path):
        return {}
    return read_json(path, error=DataError, fix="copy it again from the model's source")


def _token(value) -> str:
    return value["content"] if isinstance(value, dict) else str(value)


def _model_family(directory: str) -> str | None:
    model_type = _read_json(os.path.join(directory, "config.json")).get("model_type")
    return MODEL_TYPES.get(model_type)


def _guess_family(backend: tokenizers.Tokenizer) -> str:
    vocab = backend.get_vocab(with_added_tokens=True)
    if "[CLS]" in vocab:
        return "bert"
    if "<extra_id_0>" in vocab:
        return "t5"
    if "<mask>" in vocab and "<s>" in vocab:
        return "bart"
    if "<|endoftext|>" in vocab:
        return "gpt"
    return "transformer"
