"""Task tools (train/tasks/, `python -m train.predict`, `python -m train.evaluate`):

- fill-mask, classification and NER from a Hugging Face directory agree with transformers;
- a trained workdir is evaluated standalone with the numbers the training loop logged, and
  predicts from the command line; a model asked for a task it cannot do exits 2 in one line;
- batches trimmed to a length bucket hold the same rows and give the same loss."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from configs import gpt_lm, translate
from data.pipeline import make_pipeline, pydoc_config
from data.tokenizers import train_tokenizer
from train.decode import generate
from train.evaluate import evaluate_dir
from train.loop import train_and_evaluate
from train.predict import pipeline
from train.tasks import load

ROOT = Path(__file__).resolve().parents[1]
WORDS = (
    "the a is was red blue green sky sea grass paris france london city capital of in and "
    "john mary lives works new york bank river film good bad funny dull very not"
).split()


def _cli(module, *args, stdin=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS="")
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=env,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=300,
    )


# ------------------------------------------------------------------ Hugging Face parity


def _hf_dir(tmp_path, arch, **config):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, ".", ",", "##s", "##ing"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizerFast(str(tmp_path / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=37,
        num_hidden_layers=2,
        max_position_embeddings=64,
        initializer_range=0.5,
        **config,
    )
    model = getattr(transformers, arch)(cfg).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    return model, tokenizer, transformers


@pytest.mark.hf
def test_fill_mask_matches_the_transformers_pipeline(tmp_path):
    model, tokenizer, transformers = _hf_dir(tmp_path, "BertForMaskedLM")
    text = "paris is the [MASK] of france ."
    theirs = transformers.pipeline("fill-mask", model=model, tokenizer=tokenizer, top_k=5)(text)
    ours = pipeline("fill-mask", str(tmp_path), top_k=5)(text)
    assert len(ours) == 1  # one mask
    assert [f["token"] for f in ours[0]] == [f["token"] for f in theirs]
    np.testing.assert_allclose(
        [f["score"] for f in ours[0]], [f["score"] for f in theirs], atol=1e-5
    )
    assert [f["sequence"] for f in ours[0]] == [f["sequence"] for f in theirs]


@pytest.mark.hf
def test_classification_matches_transformers(tmp_path):
    names = {0: "negative", 1: "neutral", 2: "positive"}
    model, tokenizer, transformers = _hf_dir(
        tmp_path,
        "BertForSequenceClassification",
        num_labels=3,
        id2label=names,
        label2id={v: k for k, v in names.items()},
    )
    texts = ["a very funny film .", "the sea is not blue", "bad"]
    classify = transformers.pipeline("text-classification", model=model, tokenizer=tokenizer)
    theirs = classify(texts)
    ours = pipeline("classification", str(tmp_path))(texts)
    assert [r["label"] for r in ours] == [r["label"] for r in theirs]
    np.testing.assert_allclose([r["score"] for r in ours], [r["score"] for r in theirs], atol=1e-5)


@pytest.mark.hf
def test_ner_tags_the_first_subtoken_of_each_word_as_transformers_does(tmp_path):
    torch = pytest.importorskip("torch")

    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    model, tokenizer, _ = _hf_dir(
        tmp_path,
        "BertForTokenClassification",
        num_labels=5,
        id2label=dict(enumerate(tags)),
        label2id={t: i for i, t in enumerate(tags)},
    )
    sentences = ["john lives in new york .", "mary works in the city of london", "films"]
    ner = pipeline("ner", str(tmp_path))
    tagged = ner.model.tag_words([s.split() for s in sentences])
    for sentence, ours in zip(sentences, tagged):
        words = sentence.split()
        enc = tokenizer(words, is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            best = model(**enc).logits[0].argmax(-1).tolist()
        word_ids, theirs = enc.word_ids(), ["O"] * len(words)
        for position, word in enumerate(word_ids):
            if word is not None and (position == 0 or word_ids[position - 1] != word):
                theirs[word] = tags[best[position]]
        assert ours == theirs
    entities = ner(sentences[0])
    from train.metrics import iob2_spans

    assert {(e["entity"], e["start"], e["end"]) for e in entities} == iob2_spans(tagged[0])
    assert all(e["text"] == " ".join(sentences[0].split()[e["start"] : e["end"]]) for e in entities)


# ------------------------------------------------------------------ trained workdirs


@pytest.fixture(scope="module")
def translate_run(tmp_path_factory):
    config = translate.get_config("smoke")
    if not Path(config.data.files["train"]["source"]).exists():
        pytest.skip("needs ../shared/data/multi30k")
    workdir = tmp_path_factory.mktemp("translate")
    summary = train_and_evaluate(config, workdir)
    return workdir, summary


@pytest.mark.slow
def test_evaluate_reproduces_the_loops_eval_and_scores_bleu(translate_run):
    workdir, summary = translate_run
    config = translate.get_config("smoke")
    results = evaluate_dir(str(workdir), "validation", max_batches=config.eval_batches)
    for key in ("loss", "accuracy"):
        assert results[key] == pytest.approx(summary["eval"][f"eval_{key}"], rel=1e-5)
    assert 0.0 <= results["bleu"] <= 100.0
    again = evaluate_dir(
        str(workdir), "validation", max_batches=1, max_examples=config.eval_task_examples
    )
    assert again["bleu"] == pytest.approx(summary["eval"]["eval_bleu"], abs=1e-6)


@pytest.mark.slow
def test_predict_cli_translates_and_refuses_other_tasks(translate_run):
    workdir, _ = translate_run
    result = _cli("train.predict", "--workdir", str(workdir), "A dog runs .", "Two men talk .")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 2
    stdin = _cli("train.predict", "--workdir", str(workdir), "--json", stdin="A dog runs .\n")
    record = json.loads(stdin.stdout)
    assert record["task"] == "translation" and record["output"] == result.stdout.splitlines()[0]
    wrong = _cli("train.predict", "--workdir", str(workdir), "--task", "ner", "x")
    assert wrong.returncode == 2
    assert wrong.stderr.strip().count("\n") == 0 and "token_classification" in wrong.stderr
    missing = _cli("train.evaluate", "--workdir", str(workdir / "nope"))
    assert missing.returncode == 2 and "no such directory" in missing.stderr


def test_text_generation_continues_the_prompt_as_generate_does(tmp_path):
    config = gpt_lm.get_config("smoke")
    config.steps, config.eval_every_steps, config.sample_tokens = 4, 0, 0
    train_and_evaluate(config, tmp_path)
    gen = pipeline("text-generation", str(tmp_path), max_new_tokens=6)
    out = gen("def f")
    m = gen.model
    tok = m.tokenizer
    bos = tok.id_of("bos") if tok.id_of("bos") is not None else tok.id_of("eos")
    ids = np.r_[bos, tok.encode("def f")][None].astype(np.int32)
    tokens = generate(m.model, m.params, ids, max_new_tokens=6, eos_id=tok.id_of("eos"))[0]
    eos = tok.id_of("eos")
    tokens = list(tokens[: list(tokens).index(eos)] if eos in tokens else tokens)
    assert out == "def f" + tok.decode(tokens)
    assert load(tmp_path).source.endswith("(step 4)")


# ------------------------------------------------------------------ length buckets


@pytest.mark.slow
def _short_lines(tmp_path, count: int, seed: int):
    """A tokenizer and a clm data config (one line a row, in file order, one epoch) over
    `count` lines of 1-24 words."""
    rng = np.random.default_rng(seed)
    lines = [" ".join(rng.choice(WORDS, size=rng.integers(1, 25))) for _ in range(count)]
    (tmp_path / "lines.txt").write_text("\n".join(lines) + "\n")
    tok = train_tokenizer(lines, kind="bpe", vocab_size=200, family="gpt")
    cfg = pydoc_config(
        files={"train": str(tmp_path / "lines.txt")},
        objective="clm",
        pack=False,
        num_epochs=1,
        shuffle=False,
        data_dir=str(tmp_path / "tfds"),
    )
    return tok, cfg


def test_trimmed_batches_hold_the_same_rows_and_give_the_same_loss(tmp_path):
    import models
    from train.losses import loss_sums

    tok, cfg = _short_lines(tmp_path, 64, seed=0)

    def batches(trim):
        trimmed = ml_collections.ConfigDict({**cfg.to_dict(), "trim_padding": trim})
        return make_pipeline(
            trimmed, split="train", tokenizer=tok, global_batch_size=4, seq_len=128
        )

    model = models.build(models.get_config("gpt2-tiny", vocab_size=256, max_positions=128))
    params = model.init(jax.random.key(0), np.zeros((1, 8), np.int32))["params"]
    widths = set()
    for a, b in zip(batches(0), batches(16), strict=True):
        width = b["input_ids"].shape[1]
        widths.add(width)
        assert width % 16 == 0 or width == 128
        for key in a:
            np.testing.assert_array_equal(a[key][:, :width], b[key])
        assert not np.any(a["weights"][:, width:])
        np.testing.assert_allclose(
            loss_sums(model, params, a, "causal_lm")["loss"],
            loss_sums(model, params, b, "causal_lm")["loss"],
            rtol=1e-5,
        )
    assert len(widths) > 1  # several buckets were used


def test_hosts_that_trim_agree_on_every_global_batch(tmp_path):
    """Two hosts trimming with an agreement give, row for row and column for column, the
    batches one host gives, down to the last one, where one host's rows have all ended."""
    import threading

    tok, cfg = _short_lines(tmp_path, 60, seed=1)
    cfg.trim_padding = 8
    common = dict(split="train", tokenizer=tok, global_batch_size=8, seq_len=128)
    one = list(make_pipeline(cfg, **common))

    barrier, offered = threading.Barrier(2), {}

    def agree_for(index):  # what AgreedWidths does across processes, across threads here
        def agree(widths):
            offered[index] = widths
            barrier.wait()
            agreed = tuple(max(column) for column in zip(*offered.values()))
            barrier.wait()
            return agreed

        return agree

    hosts = [[], []]

    def run(index):
        it = make_pipeline(
            cfg, **common, process_index=index, process_count=2, agree=agree_for(index)
        )
        hosts[index].extend(it)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(hosts[0]) == len(hosts[1]) == len(one) == 8  # 60 lines, 8 a batch
    assert one[-1]["weights"][4:].sum() == 0  # host 1's rows of the last batch have ended
    widths = set()
    for whole, first, second in zip(one, *hosts):
        widths.add(whole["input_ids"].shape[1])
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([first[key], second[key]]), whole[key])
    assert len(widths) > 1 and min(widths) < 128  # trimmed, to several widths

    with pytest.raises(ValueError, match="agree on each batch"):
        make_pipeline(cfg, **common, process_index=0, process_count=2)


@pytest.mark.parametrize("metric,best", [("eval_accuracy", 2), ("eval_loss", 3)])
def test_the_best_checkpoint_is_the_highest_score_or_the_lowest_loss(tmp_path, metric, best):
    from train.checkpoint import Checkpointer

    ckpt = Checkpointer(tmp_path, keep=1, best_metric=metric, async_save=False)
    for step, value in ((1, 0.5), (2, 0.9), (3, 0.1), (4, 0.6)):
        ckpt.save(step, {"w": np.ones(2) * step}, metrics={metric: value})
    ckpt.wait()
    assert ckpt.best_step() == best
    assert sorted(ckpt.all_steps()) == sorted({best, 4})  # the best and the latest are kept
    ckpt.close()


@pytest.mark.slow
def test_pretrain_then_fine_tune_evaluate_and_summarize(tmp_path):
    """The whole path for an encoder-decoder: span-corruption pretraining, a summarization
    fine-tune that starts from that workdir (and its tokenizer), standalone evaluation with
    ROUGE, and summaries from the command line."""
    from configs import summarize, t5_span

    pretrain = t5_span.get_config("smoke")
    pretrain.steps, pretrain.eval_every_steps = 4, 0
    train_and_evaluate(pretrain, tmp_path / "pretrained")
    config = summarize.get_config("smoke")
    config.init_from = str(tmp_path / "pretrained")
    summary = train_and_evaluate(config, tmp_path / "sum")
    assert {"eval_rouge1", "eval_rouge2", "eval_rougeL"} <= set(summary["eval"])
    from data.tokenizers import load_tokenizer

    vocab = [
        load_tokenizer(str(tmp_path / d / "tokenizer")).backend.get_vocab()
        for d in ("pretrained", "sum")
    ]
    assert vocab[0] == vocab[1]  # the checkpoint's own tokenizer
    results = evaluate_dir(str(tmp_path / "sum"), "validation", step="best")
    assert 0.0 <= results["rougeL"] <= 100.0 and results["loss"] > 0
    out = _cli("train.predict", "--workdir", str(tmp_path / "sum"), "--beams", "1", "a b c")
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 1, out.stderr
