"""data.workers: rows built in grain worker processes are the rows of the in-process pipeline,
bit for bit, and the iterator state resumes across worker and host counts."""

import multiprocessing
import os
import signal
import time

import numpy as np
import pytest

from data.errors import DataError
from data.pipeline import iter_texts, make_pipeline, pydoc_config
from data.rows import CausalRows
from data.tokenizers import train_tokenizer

FAMILY = {"clm": "gpt", "mlm": "bert", "span": "t5"}


@pytest.fixture(scope="module")
def tokenizers():
    texts = list(iter_texts(pydoc_config(), limit=200))
    return {
        family: train_tokenizer(texts, kind="bpe", vocab_size=512, family=family)
        for family in set(FAMILY.values())
    }


def _pipeline(objective, tok, workers, **layout):
    cfg = pydoc_config(objective=objective)
    return make_pipeline(
        cfg,
        split="train",
        tokenizer=tok,
        global_batch_size=8,
        seq_len=48,
        workers=workers,
        **layout,
    )


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.mark.parametrize("objective", ["clm", "mlm", "span"])
def test_the_same_batches_with_0_1_and_2_workers(objective, tokenizers):
    tok = tokenizers[FAMILY[objective]]
    reference = _pipeline(objective, tok, 0)
    expected, state = _take(reference, 4), reference.get_state()
    for workers in (1, 2):
        it = _pipeline(objective, tok, workers)
        try:
            _same(_take(it, 4), expected)
            assert it.get_state() == state  # the consumed position, not the workers' read-ahead
        finally:
            it.close()


def test_state_written_with_workers_resumes_without_them_and_on_two_hosts(tokenizers):
    tok = tokenizers["gpt"]
    reference = _pipeline("clm", tok, 0)
    _take(reference, 3)
    expected = _take(reference, 3)
    it = _pipeline("clm", tok, 2)
    try:
        _take(it, 3)
        state = it.get_state()
        _same(_take(it, 3), expected)
    finally:
        it.close()
    plain = _pipeline("clm", tok, 0)
    plain.set_state(state)
    _same(_take(plain, 3), expected)
    # two hosts: each resumes its half of the rows from the one-host cursors, with 2 workers
    halves = []
    for index in (0, 1):
        host = _pipeline("clm", tok, 2, process_index=index, process_count=2)
        try:
            host.set_state(
                {
                    **state,
                    "process_index": index,
                    "process_count": 2,
                    "cursors": state["cursors"][4 * index : 4 * index + 4],
                }
            )
            halves.append(_take(host, 3))
        finally:
            host.close()
    joined = [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(*halves)]
    _same(joined, expected)


def test_state_written_without_workers_resumes_with_them(tokenizers):
    tok = tokenizers["bert"]
    reference = _pipeline("mlm", tok, 0)
    _take(reference, 2)
    state = reference.get_state()
    expected = _take(reference, 2)
    it = _pipeline("mlm", tok, 2)
    try:
        it.set_state(state)
        _same(_take(it, 2), expected)
    finally:
        it.close()


class BadRecordRows(CausalRows):
    """Causal rows whose row 3 meets a bad record at its fourth row (built in a worker)."""

    built = 0

    def row(self, stream, rng):
        if stream.row == 3:
            BadRecordRows.built += 1
            if BadRecordRows.built > 3:
                raise DataError("notes.txt: record 17 is not valid text")
        return super().row(stream, rng)


def test_a_bad_record_in_a_worker_raises_its_error(tokenizers):
    it = _pipeline("clm", tokenizers["gpt"], 2)
    it._rows._spec["builder"].__class__ = BadRecordRows  # what the workers are sent
    try:
        with pytest.raises(DataError, match="notes.txt: record 17"):
            _take(it, 50)
    finally:
        it.close()


def test_a_worker_that_dies_ends_the_iteration_with_one_error(tokenizers):
    it = _pipeline("clm", tokenizers["gpt"], 2)
    try:
        next(it)
        os.kill(multiprocessing.active_children()[0].pid, signal.SIGKILL)
        start = time.time()
        with pytest.raises(
            DataError, match=r"a data worker process \(of 2\) failed.*data.workers=0"
        ):
            _take(it, 10_000)
        assert time.time() - start < 60  # no hang
    finally:
        it.close()
