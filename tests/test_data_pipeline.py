"""Batching: packing invariants, exact resume, host sharding, per-objective batch contracts."""

import json
from pathlib import Path

import numpy as np
import pytest

from data import packing, pipeline, workers
from data import tokenizers as tk
from data.builders import topics
from data.errors import DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHAKESPEARE = SHARED / "tiny_shakespeare" / "input.txt"

CONTRACT = {
    "clm": {"input_ids", "targets", "weights", "positions", "segment_ids", "attention_mask"},
    "mlm": {"input_ids", "attention_mask", "targets", "weights"},
    "span": {
        "input_ids",
        "attention_mask",
        "decoder_input_ids",
        "decoder_attention_mask",
        "targets",
        "weights",
    },
}
CONTRACT["denoise"] = CONTRACT["span"]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return pipeline.pydoc_config(data_dir=str(tmp_path_factory.mktemp("tfds")))


@pytest.fixture(scope="module")
def toks():
    texts = list(topics().values())
    t5 = tk.train_tokenizer(texts[:30], kind="unigram", family="t5", vocab_size=1500)
    return {
        "clm": tk.train_tokenizer(texts, kind="bpe", family="gpt", vocab_size=2000),
        "mlm": tk.train_tokenizer(texts, kind="wordpiece", family="bert", vocab_size=2000),
        "span": t5,
        "denoise": tk.train_tokenizer(texts, kind="bpe", family="bart", vocab_size=2000),
    }


def _make(cfg, tok, objective="clm", **kw):
    args = dict(
        split="train", tokenizer=tok, global_batch_size=8, seq_len=128, seed=3, objective=objective
    )
    args.update(kw)
    return pipeline.make_pipeline(cfg, **args)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("objective", ["clm", "mlm", "span", "denoise"])
def test_batch_contract_dtypes_and_shapes(cfg, toks, objective):
    batch = next(_make(cfg, toks[objective], objective))
    assert set(batch) == CONTRACT[objective]
    for key, value in batch.items():
        assert value.dtype == (np.float32 if key == "weights" else np.int32), key
        assert value.shape[0] == 8
    assert batch["weights"].sum() > 0


def test_packed_segments_never_overlap(cfg, toks):
    tok = toks["clm"]
    it = _make(cfg, tok, seq_len=256, global_batch_size=4)
    docs = {tuple(np.r_[tok.bos_id, tok.encode(t), tok.eos_id]) for t in topics().values()}
    whole = 0
    for batch in _take(it, 30):
        for row in range(4):
            seg, pos = batch["segment_ids"][row], batch["positions"][row]
            ids = batch["input_ids"][row]
            live = seg > 0
            assert (np.flatnonzero(~live) >= live.sum()).all(), "padding only at the end"
            runs = np.split(np.arange(live.sum()), np.flatnonzero(np.diff(seg[live])) + 1)
            run_ids = [int(seg[r[0]]) for r in runs]
            assert run_ids == list(range(1, len(runs) + 1)), "segment ids distinct, in order"
            for r in runs:
                np.testing.assert_array_equal(pos[r], np.arange(r.size))  # positions restart
                np.testing.assert_array_equal(batch["targets"][row][r[:-1]], ids[r[1:]])
                weights = batch["weights"][row]
                assert weights[r[-1]] == 0 and (weights[r[:-1]] == 1).all()
                piece = tuple(ids[r])
                if piece[0] == tok.bos_id and piece[-1] == tok.eos_id:
                    assert piece in docs
                    whole += 1
            np.testing.assert_array_equal(batch["attention_mask"][row], live)
    assert whole > 0


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason="shared data absent")
def test_packing_keeps_padding_low(cfg, toks):
    local = pipeline.pydoc_config(data_dir=cfg.data_dir, files={"train": str(SHAKESPEARE)})
    packed = _take(_make(local, toks["clm"]), 10)
    local.pack = False
    padded = _take(_make(local, toks["clm"]), 10)
    fill = np.mean([b["attention_mask"].mean() for b in packed])
    assert fill > 0.93
    assert np.mean([b["attention_mask"].mean() for b in padded]) < 0.3  # lines are short
    assert max(b["segment_ids"].max() for b in packed) > 5


@pytest.mark.parametrize("objective", ["clm", "mlm", "span", "denoise"])
def test_resume_mid_epoch_gives_the_same_batches(cfg, toks, objective):
    # The validation split has 4 topics: with a repeating, shuffled stream the 12 batches cross
    # several epoch boundaries.
    kw = dict(split="validation", global_batch_size=4, seq_len=64)
    local = pipeline.pydoc_config(data_dir=cfg.data_dir, shuffle=True, num_epochs=0)
    reference = _take(_make(local, toks[objective], objective, **kw), 12)
    first = _make(local, toks[objective], objective, **kw)
    _take(first, 5)
    state = json.loads(json.dumps(first.get_state()))
    resumed = _make(local, toks[objective], objective, **kw)
    resumed.set_state(state)
    _assert_same(_take(resumed, 7), reference[5:])
    other_seed = _take(_make(local, toks[objective], objective, **{**kw, "seed": 4}), 12)
    assert any(
        not np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(reference, other_seed)
    )


def test_set_state_rejects_a_different_layout(cfg, toks):
    state = _make(cfg, toks["clm"]).get_state()
    with pytest.raises(DataError, match="process_count"):
        _make(cfg, toks["clm"], process_count=2).set_state(state)


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_hosts_read_disjoint_shards_whose_union_is_the_global_batch(
    cfg, toks, objective, monkeypatch
):
    def run(index, count):
        seen = set()

        def recording(elements, indices, transform=None):
            seen.update(indices)  # positions in the global (shuffled, repeated) order
            return real(elements, indices, transform)

        monkeypatch.setattr(packing, "read_many", recording)
        monkeypatch.setattr(workers, "read_many", recording)
        it = _make(cfg, toks[objective], objective, process_index=index, process_count=count)
        return _take(it, 6), seen

    real = packing.read_many
    one, seen_one = run(0, 1)
    (a, seen_a), (b, seen_b) = run(0, 2), run(1, 2)
    assert not seen_a & seen_b and seen_a | seen_b == seen_one
    assert a[0]["input_ids"].shape[0] == 4
    _assert_same(one, [{k: np.concatenate([x[k], y[k]]) for k in x} for x, y in zip(a, b)])
    four = [run(i, 4)[0] for i in range(4)]
    _assert_same(
        one, [{k: np.concatenate([h[s][k] for h in four]) for k in one[0]} for s in range(6)]
    )


def test_masked_lm_pipeline_masks_15_percent(cfg, toks):
    tok = toks["mlm"]
    batches = _take(_make(cfg, tok, "mlm"), 10)
    chosen = sum(b["weights"].sum() for b in batches)
    candidates = sum((~np.isin(b["targets"], tok.special_ids)).sum() for b in batches)
    assert candidates > 10_000 and abs(chosen / candidates - 0.15) < 0.01
    masked = sum((b["input_ids"][b["weights"] > 0] == tok.mask_id).sum() for b in batches)
    assert abs(masked / chosen - 0.8) < 0.02
    assert all((b["input_ids"][:, 0] == tok.cls_id).all() for b in batches)


def test_span_corruption_pipeline_uses_t5_lengths(cfg, toks):
    tok = toks["span"]
    it = _make(cfg, tok, "span", seq_len=512, global_batch_size=2)
    batch = next(it)
    assert batch["input_ids"].shape == (2, 512) and batch["targets"].shape == (2, 114)
    assert (batch["attention_mask"].sum(1) == 512).all() and (batch["weights"].sum(1) == 114).all()
    sentinels = tok.sentinel_ids(28)
    for row in range(2):
        used = batch["input_ids"][row][np.isin(batch["input_ids"][row], sentinels)]
        np.testing.assert_array_equal(used, sentinels)
    np.testing.assert_array_equal(batch["decoder_input_ids"][:, 1:], batch["targets"][:, :-1])


def test_span_targets_pad_up_to_a_longer_target_length(cfg, toks):
    """data.target_length above T5's 114 pads the targets (for a length that a context split
    needs), with the same tokens and weights as without it."""
    tok = toks["span"]
    plain = next(_make(cfg, tok, "span", seq_len=512, global_batch_size=2))
    padded_cfg = cfg.copy_and_resolve_references()
    padded_cfg.target_length = 120
    padded = next(_make(padded_cfg, tok, "span", seq_len=512, global_batch_size=2))
    assert padded["targets"].shape == (2, 120) and (padded["weights"].sum(1) == 114).all()
    for key in ("targets", "weights", "decoder_input_ids", "decoder_attention_mask"):
        np.testing.assert_array_equal(padded[key][:, :114], plain[key], err_msg=key)
    for key in ("targets", "weights", "decoder_attention_mask"):  # padding, weighted 0
        assert not padded[key][:, 114:].any(), key
    np.testing.assert_array_equal(padded["input_ids"], plain["input_ids"])


def test_denoise_pipeline_targets_are_clean_text(cfg, toks):
    tok = toks["denoise"]
    batch = next(_make(cfg, tok, "denoise"))
    assert (batch["input_ids"] == tok.mask_id).any() and not (batch["targets"] == tok.mask_id).any()
    assert (batch["targets"][:, 0] == tok.bos_id).all()
    assert (batch["decoder_input_ids"][:, 0] == tok.decoder_start_id).all()


def test_default_corpus_runs_offline_with_no_options(cfg, toks):
    it = pipeline.make_pipeline(
        cfg, split="validation", tokenizer=toks["clm"], global_batch_size=2, seq_len=512
    )
    batches = list(it)
    assert 5 < len(batches) < 200 and batches[-1]["attention_mask"].sum() > 0
    assert pipeline.default_config().objective == "clm"
    text = " ".join(pipeline.iter_texts(cfg, "validation"))
    assert len(text) > 5000
