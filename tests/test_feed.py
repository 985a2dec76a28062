"""train/feed.py: prefetched batches are the iterator's batches, each with the state after it,
and the feed's errors reach the loop's thread."""

import numpy as np
import pytest

from data.errors import DataError
from data.pipeline import iter_texts, make_pipeline, pydoc_config
from data.tokenizers import train_tokenizer
from train.feed import Feed

FAMILY = {"clm": "gpt", "mlm": "bert", "span": "t5"}


@pytest.fixture(scope="module")
def toks():
    texts = list(iter_texts(pydoc_config(), limit=200))
    return {
        o: train_tokenizer(texts, kind="bpe", vocab_size=512, family=f) for o, f in FAMILY.items()
    }


def _pipeline(tok, objective="clm", workers=0):
    cfg = pydoc_config(objective=objective)
    return make_pipeline(
        cfg, split="train", tokenizer=tok, global_batch_size=8, seq_len=48, workers=workers
    )


@pytest.mark.parametrize("objective", sorted(FAMILY))
def test_prefetched_batches_and_states_are_the_iterators(toks, objective):
    tok = toks[objective]
    plain = _pipeline(tok, objective)
    expected = []
    for _ in range(6):
        batch = next(plain)
        expected.append((batch, plain.get_state()))
    for depth, workers in ((0, 0), (2, 0), (2, 2)):
        it = _pipeline(tok, objective, workers=workers)
        feed = Feed(it, lambda b: {k: v * 1 for k, v in b.items()}, depth)
        try:
            for want, state in expected:
                host, placed, after = next(feed)
                for key in want:
                    np.testing.assert_array_equal(host[key], want[key])
                    np.testing.assert_array_equal(placed[key], want[key])
                assert after == state  # the consumed batch's, not the prefetched ones'
        finally:
            feed.close()
            it.close()


def test_an_error_in_the_feed_thread_is_raised_in_the_loop():
    class Failing:
        def __init__(self):
            self.n = 0

        def __next__(self):
            self.n += 1
            if self.n == 3:
                raise DataError("notes.txt: record 3 is broken")
            return {"x": np.zeros(2)}

        def get_state(self):
            return {"n": self.n}

    feed = Feed(Failing(), lambda b: b, 2)
    try:
        assert next(feed)[2] == {"n": 1} and next(feed)[2] == {"n": 2}
        with pytest.raises(DataError, match="record 3"):
            next(feed)
    finally:
        feed.close()


def test_a_finite_iterator_ends_the_feed():
    feed = Feed(_Stateful([{"x": 1}, {"x": 2}]), lambda b: b, 2)
    assert [item[0]["x"] for item in feed] == [1, 2]
    with pytest.raises(StopIteration):
        next(feed)
    feed.close()


class _Stateful:
    def __init__(self, items):
        self._items = iter(items)

    def __next__(self):
        return next(self._items)

    def get_state(self):
        return {}
