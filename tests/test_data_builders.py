"""TFDS builders and sources: real local files, the pydoc default, catalog names, bad input."""

import logging
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data import pipeline, sources
from data import tokenizers as tk
from data.builders import split_topics, topics
from data.errors import DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} is absent")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _cfg(data_dir, **overrides):
    return pipeline.pydoc_config(data_dir=data_dir, **overrides)


@pytest.fixture(scope="module")
def bert():
    return tk.train_tokenizer(
        list(topics().values()), kind="wordpiece", family="bert", vocab_size=3000, lowercase=True
    )


@pytest.fixture(scope="module")
def t5():
    return tk.train_tokenizer(
        list(topics().values())[:30], kind="unigram", family="t5", vocab_size=1500
    )


def test_pydoc_default_is_a_tfds_builder(data_dir):
    train = sources.load_source(_cfg(data_dir), "train", "clm")
    validation = sources.load_source(_cfg(data_dir), "validation", "clm")
    assert (len(train), len(validation)) == (
        len(split_topics("train")),
        len(split_topics("validation")),
    )
    assert len(train) + len(validation) == len(topics()) > 50
    assert sum(len(t) for t in topics().values()) > 400_000  # ~0.5 MB of English
    texts = {train[i]["text"] for i in range(len(train))}
    assert not texts & {validation[i]["text"] for i in range(len(validation))}
    assert any(t.startswith('The "assert" statement') for t in texts)
    builder = tfds.builder("pydoc_topics", data_dir=data_dir)
    assert builder.info.splits["validation"].num_examples == len(validation)


@needs_shared
@pytest.mark.parametrize("mode,count", [("lines", 32777), ("files", 1)])
def test_text_builder_on_tiny_shakespeare(data_dir, mode, count):
    cfg = _cfg(
        data_dir, files={"train": str(SHARED / "tiny_shakespeare" / "input.txt")}, text_mode=mode
    )
    source = sources.load_source(cfg, "train", "clm")
    assert len(source) == count
    first = source[0]["text"]
    assert first.startswith("First Citizen")
    if mode == "files":
        assert len(first) > 1_100_000
        return
    cfg.splits = {"train": "train[:95%]", "validation": "train[95%:]"}
    held_out = sources.load_source(cfg, "validation", "clm")
    assert len(held_out) == 32777 - len(sources.load_source(cfg, "train", "clm")) > 1500


@needs_shared
def test_table_builder_on_sst2(data_dir, bert):
    cfg = _cfg(
        data_dir,
        files={
            "train": str(SHARED / "sst2" / "train.tsv"),
            "validation": str(SHARED / "sst2" / "dev.tsv"),
        },
        fields={"text": "sentence", "label": "label"},
    )
    train = sources.load_source(cfg, "train", "classify")
    dev = sources.load_source(cfg, "validation", "classify")
    assert (len(train), len(dev)) == (67349, 872)
    assert train.label_names == ["0", "1"]
    assert train[0] == {"text": "hide new secretions from the parental units ", "label": 0}
    assert {dev[i]["label"] for i in range(len(dev))} == {0, 1}
    it = pipeline.make_pipeline(
        cfg,
        split="validation",
        tokenizer=bert,
        global_batch_size=8,
        seq_len=64,
        objective="classify",
    )
    batches = list(it)
    assert len(batches) == 109  # ceil(872 / 8)
    labels = np.concatenate([b["labels"] for b in batches])
    assert (labels[:872] >= 0).all() and (labels[872:] == -100).all()
    assert (batches[0]["input_ids"][:, 0] == bert.cls_id).all()


@needs_shared
def test_conll_builder_and_first_subtoken_labels(data_dir, bert):
    cfg = _cfg(
        data_dir,
        files={
            "train": str(SHARED / "conll2003" / "train.txt"),
            "validation": str(SHARED / "conll2003" / "dev.txt"),
        },
    )
    train = sources.load_source(cfg, "train", "tag")
    assert len(train) == 14041 and len(sources.load_source(cfg, "validation", "tag")) == 3250
    assert train.tag_names[0] == "O" and len(train.tag_names) == 9
    first = train[0]
    assert first["tokens"][:3] == ["EU", "rejects", "German"]
    assert [train.tag_names[t] for t in first["tags"][:3]] == ["B-ORG", "O", "B-MISC"]
    it = pipeline.make_pipeline(
        cfg, split="train", tokenizer=bert, global_batch_size=4, seq_len=64, objective="tag", seed=1
    )
    batch = next(it)
    for row in range(4):
        words = int(batch["weights"][row].sum())  # one label per word, on its first sub-token
        assert 1 <= words <= 64
        labelled = batch["labels"][row][batch["weights"][row] > 0]
        assert ((labelled >= 0) & (labelled < 9)).all()
        assert (batch["labels"][row][batch["weights"][row] == 0] == -100).all()


@needs_shared
def test_parallel_builder_on_multi30k(data_dir, t5):
    m30k = SHARED / "multi30k"
    cfg = _cfg(
        data_dir,
        files={
            "train": {"source": str(m30k / "train.en"), "target": str(m30k / "train.de")},
            "validation": {"source": str(m30k / "val.en"), "target": str(m30k / "val.de")},
        },
        task_prefix="translate English to German: ",
        shuffle=False,
    )
    train = sources.load_source(cfg, "train", "seq2seq")
    assert len(train) == 29000 and len(sources.load_source(cfg, "validation", "seq2seq")) == 1014
    assert train[0]["target"].startswith("Zwei junge weiße Männer")
    it = pipeline.make_pipeline(
        cfg, split="train", tokenizer=t5, global_batch_size=2, seq_len=48, objective="seq2seq"
    )
    batch = next(it)
    n = int(batch["decoder_attention_mask"][0].sum())
    assert batch["targets"][0, n - 1] == t5.eos_id
    np.testing.assert_array_equal(batch["decoder_input_ids"][0, 1:n], batch["targets"][0, : n - 1])
    assert batch["decoder_input_ids"][0, 0] == t5.decoder_start_id
    assert t5.decode(batch["input_ids"][0]).startswith("translate English to German: Two young")


def test_jsonl_source_target_pairs(tmp_path, data_dir):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"src": "a b c", "tgt": "x y"}\n{"src": "d", "tgt": "z"}\n')
    cfg = _cfg(data_dir, files={"train": str(path)}, fields={"source": "src", "target": "tgt"})
    source = sources.load_source(cfg, "train", "seq2seq")
    assert [source[i] for i in range(2)] == [
        {"source": "a b c", "target": "x y"},
        {"source": "d", "target": "z"},
    ]


CATALOG = [
    ("tiny_shakespeare", "clm", {"text": "text"}),
    ("lm1b", "mlm", {"text": "text"}),
    ("c4/en", "span", {"text": "text"}),
    ("wikipedia/20230601.en", "denoise", {"text": "text"}),
    ("glue/sst2", "classify", {"text": "sentence", "label": "label"}),
    ("glue/mnli", "classify", {"text": "premise", "text_pair": "hypothesis", "label": "label"}),
    ("conll2003", "tag", {"tokens": "tokens", "tags": "ner"}),
    ("wmt14_translate/de-en", "seq2seq", {"source": "en", "target": "de"}),
    ("wmt_t2t_translate/de-en", "seq2seq", {"source": "en", "target": "de"}),
    ("cnn_dailymail", "seq2seq", {"source": "article", "target": "highlights"}),
    ("xsum", "seq2seq", {"source": "document", "target": "summary"}),
]


@pytest.mark.parametrize("name,objective,fields", CATALOG)
def test_catalog_names_through_mock_data(data_dir, bert, t5, name, objective, fields):
    tok = bert if objective in ("mlm", "classify", "tag") else t5
    if objective == "denoise":
        tok = tk.Tokenizer(t5.backend, "bart", {**tk.FAMILIES["t5"], "mask": "<extra_id_0>"})
    cfg = _cfg(data_dir, name=name)
    with tfds.testing.mock_data(num_examples=6):
        it = pipeline.make_pipeline(
            cfg, split="train", tokenizer=tok, global_batch_size=2, seq_len=32, objective=objective
        )
        batch = next(it)
    assert it.source.fields == fields
    assert batch["input_ids"].shape[0] == 2 and batch["input_ids"].dtype == np.int32
    assert batch["attention_mask"].sum() > 0


def _error(callable_, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        callable_(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, "errors are one line"
    return message


def test_bad_input_errors_name_file_line_or_field(tmp_path, data_dir):
    def source(files, objective="classify", **kw):
        return sources.load_source(_cfg(data_dir, files=files, **kw), "train", objective)

    missing = tmp_path / "missing.txt"
    assert f"{missing}: no such file" in _error(source, {"train": str(missing)}, "clm")
    assert "no file matches" in _error(source, {"train": str(tmp_path / "*.nothing")}, "clm")
    (tmp_path / "empty.txt").write_text("")
    assert "empty.txt: file is empty" in _error(
        source, {"train": str(tmp_path / "empty.txt")}, "clm"
    )
    (tmp_path / "latin1.txt").write_bytes("ok\ncaf\xe9\n".encode("latin-1"))
    assert "latin1.txt:2: not valid UTF-8" in _error(
        source, {"train": str(tmp_path / "latin1.txt")}, "clm"
    )
    tsv = tmp_path / "bad.tsv"
    tsv.write_text("sentence\tlabel\ngood\t1\nbad\t7\n")
    assert "field 'labels' is not a column" in _error(
        source, {"train": str(tsv)}, fields={"text": "sentence", "label": "labels"}
    )
    assert "bad.tsv:3: label '7' is not one of ['0', '1']" in _error(
        source, {"train": str(tsv)}, fields={"text": "sentence"}, label_names=["0", "1"]
    )
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"text": "a", "label": "x"}\n{"text": "b"}\n')
    assert "bad.jsonl:2: field 'label' is missing" in _error(source, {"train": str(jsonl)})
    en, de = tmp_path / "a.en", tmp_path / "a.de"
    en.write_text("one\ntwo\n")
    de.write_text("eins\n")
    assert "line counts differ" in _error(
        source, {"train": {"source": str(en), "target": str(de)}}, "seq2seq"
    )


def test_unknown_dataset_and_field(data_dir):
    message = _error(sources.load_source, _cfg(data_dir, name="glu/sst2"), "train", "classify")
    assert "TFDS has no dataset 'glu/sst2'" in message and "glue" in message
    with tfds.testing.mock_data(num_examples=2):
        message = _error(
            sources.load_source,
            _cfg(data_dir, name="glue/sst2", fields={"text": "text"}),
            "train",
            "classify",
        )
    assert "field 'text' is not in glue/sst2" in message


@needs_shared
def test_over_long_sequences_are_truncated_and_counted(data_dir, bert, caplog):
    cfg = _cfg(
        data_dir, files={"train": str(SHARED / "sst2" / "dev.tsv")}, fields={"text": "sentence"}
    )
    with caplog.at_level(logging.WARNING):
        it = pipeline.make_pipeline(
            cfg,
            split="train",
            tokenizer=bert,
            global_batch_size=16,
            seq_len=8,
            objective="classify",
        )
        batch = next(it)
    assert batch["input_ids"].shape == (16, 8)
    assert (batch["input_ids"][:, -1] == bert.sep_id).all()
    assert it.rows.truncated >= 10
    assert any("truncated" in r.getMessage() for r in caplog.records)


def _local_files(tmp_path):
    text = tmp_path / "doc.txt"
    text.write_text("Ünïcode first line\n\nthird, after an empty one\n")
    table = tmp_path / "t.tsv"
    table.write_text("sentence\tlabel\ngood film\tpos\nbad film\tneg\n\tneg\n")
    conll = tmp_path / "c.conll"
    conll.write_text("EU B-ORG\nrejects O\n\nPeter B-PER\n\nx O\n")
    src, tgt = tmp_path / "s.en", tmp_path / "s.de"
    src.write_text("two men\none\n")
    tgt.write_text("zwei Männer\neins\n")
    return [
        ("clm", {"train": str(text)}, {}),
        ("classify", {"train": str(table)}, {"fields": {"text": "sentence", "label": "label"}}),
        ("tag", {"train": str(conll)}, {}),
        ("seq2seq", {"train": {"source": str(src), "target": str(tgt)}}, {}),
    ]


def test_records_decode_as_tfds_decodes_them(tmp_path, data_dir):
    """The source's own `tf.train.Example` decoder gives TFDS's values for every local format
    and the pydoc default (text, class labels, and sequences of both)."""
    cases = [("clm", None, {}), *_local_files(tmp_path)]
    for objective, files, extra in cases:
        cfg = _cfg(data_dir, files=files, **extra) if files else _cfg(data_dir)
        source = sources.load_source(cfg, "train", objective)
        assert source._decoder is not None, objective
        ours = source._getitems(range(len(source)))
        theirs = [source.canonical(r) for r in source.records.__getitems__(range(len(source)))]
        assert ours == theirs and len(ours) >= 2, objective
        assert [source[i] for i in range(len(source))] == ours
