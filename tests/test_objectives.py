"""The objective registry (data/objectives.py): each record agrees with the rows it builds and the
models it names, and a new objective is one record, trained end to end."""

import inspect

import numpy as np
import pytest

import models
from data import objectives, rows
from data.errors import DataError
from data.tokenizers import train_tokenizer

TEXT = ["the quick brown fox jumps over the lazy dog. It ran away!"] * 8
FAMILY_TOKENIZER = {"decoder": "gpt", "encoder": "bert", "encoder_decoder": "t5"}


@pytest.mark.parametrize("name", objectives.names())
def test_each_record_lists_the_keys_its_rows_carry(name):
    record = objectives.get(name)
    family = "bart" if name == "denoise" else FAMILY_TOKENIZER[record.family or "encoder"]
    tok = train_tokenizer(TEXT, kind="bpe", vocab_size=300, family=family)
    empty = record.rows(tok, 16, {}).empty()
    assert tuple(sorted(empty)) == tuple(sorted(record.keys))
    assert record.targets in record.keys
    assert set(record.roles) <= {"text", "text_pair", "label", "tokens", "tags", "source", "target"}


@pytest.mark.parametrize(
    "cls", [models.EncoderModel, models.DecoderModel, models.EncoderDecoderModel]
)
def test_model_inputs_match_call_signatures(cls):
    accepted = [
        p
        for p in inspect.signature(cls.__call__).parameters
        if p not in ("self", "deterministic", "decode")
    ]
    assert cls.INPUTS == tuple(accepted)


def test_lookup_by_loss_name_family_and_task():
    assert objectives.get("causal_lm") is objectives.get("clm")
    assert objectives.get("seq2seq").name == "seq2seq"  # the record, not span's shared loss
    assert [objectives.for_family(f).name for f in ("decoder", "encoder", "encoder_decoder")] == [
        "clm",
        "mlm",
        "span",
    ]
    assert objectives.for_task("ner").name == "tag"
    with pytest.raises(DataError, match="unknown objective 'clmm'.*one of clm, mlm"):
        objectives.get("clmm")
    with pytest.raises(ValueError, match="already registered"):
        objectives.register(objectives.get("clm"))


def test_synthetic_batches_have_the_shapes_of_real_ones():
    span = objectives.get("span").synthetic_batch(100, batch=2, seq=8, target=4)
    assert {k: v.shape for k, v in span.items()} == {
        "input_ids": (2, 8),
        "decoder_input_ids": (2, 4),
        "targets": (2, 4),
        "weights": (2, 4),
    }
    clm = objectives.get("clm").synthetic_batch(100, batch=2, seq=8)
    assert set(clm) == {"input_ids", "targets", "weights"} and clm["weights"].min() == 1.0
    assert 1 <= clm["input_ids"].min() and clm["input_ids"].max() < 100


class CopyRows(rows.CausalRows):
    """A toy objective: predict the token at the current position (causal attention sees it)."""

    def row(self, stream, rng):
        row = super().row(stream, rng)
        if row is not None:
            row["targets"] = row["input_ids"].copy()
            row["weights"] = (row["segment_ids"] > 0).astype(np.float32)
        return row


@pytest.fixture
def copy_objective():
    record = objectives.register(
        objectives.Objective(
            "copy",
            CopyRows,
            ("text",),
            objectives.get("clm").keys,
            head="lm",
            family="decoder",
            loss="copy",
        )
    )
    yield record
    del objectives.REGISTRY["copy"]


def test_a_toy_objective_is_one_record_and_trains(tmp_path, copy_objective):
    from configs import cli, gpt_lm
    from train.loop import train_and_evaluate

    config = gpt_lm.get_config("smoke")
    cli.apply_overrides(config, [("data.objective", "copy"), ("steps", "40")])
    summary = train_and_evaluate(config, tmp_path)
    # copying the current token is learnt fast; next-token prediction on this data is not
    assert summary["eval"]["eval_accuracy"] > 0.9, summary["eval"]
    with pytest.raises(Exception, match="data.objective='clmm' is not supported"):
        cli.apply_overrides(gpt_lm.get_config("smoke"), [("data.objective", "clmm")])
