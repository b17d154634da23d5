"""The one batch step of every path (scorer/batch.py), driven by plain functions: no broker, no
Triton, no Redis. A fake task scores integers; a "poisoned" request is one Triton would refuse."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import pytest

from schemas.values import RowError
from scorer.batch import Infer, ReadWindows, run_async, run_sync, score_batch
from scorer.triton import TritonRequestError, TritonUnavailable

POISON = -1


@dataclass
class Read:
    windows: list
    degraded: tuple = ()


class IntTask:
    """Item n: reads one window per unit of n % 3, its tensor is [n]; n == 99 cannot be built."""

    plan = None

    def window_requests(self, item):
        keys = [("hop", item)] * (abs(item) % 3)
        return keys, [1000 + item] * len(keys)

    def build(self, item, windows):
        if item == 99:
            raise RowError("tx.amount", "not a number")
        return (item, tuple(windows)), {"x": np.array([item])}

    def stack(self, requests):
        return {"x": np.concatenate([r["x"] for r in requests])}


class Model:
    """Scores x * 2; refuses a call that holds POISON; records every call."""

    def __init__(self):
        self.calls: list[list[int]] = []

    def __call__(self, tensors, size):
        xs = tensors["x"].tolist()
        assert len(xs) == size
        self.calls.append(xs)
        if POISON in xs:
            raise TritonRequestError("Triton rejected the request: bad value")
        return np.array(xs) * 2


def reads():
    log = []

    def read(keys, as_of):
        log.append((list(keys), list(as_of)))
        return Read(windows=[f"w{e}" for _, e in keys], degraded=("windows_unavailable",))
    return log, read


def test_one_window_read_and_one_call_for_a_clean_batch():
    log, read = reads()
    model = Model()
    outcomes = run_sync(score_batch(IntTask(), [1, 2, 3, 4]), read, model)
    assert len(log) == 1  # one round trip for the whole batch
    assert log[0][0] == [("hop", 1), ("hop", 2), ("hop", 2), ("hop", 4)]
    assert log[0][1] == [1001, 1002, 1002, 1004]
    assert model.calls == [[1, 2, 3, 4]]
    assert [o.output[o.row] for o in outcomes] == [2, 4, 6, 8]
    # each item gets its own windows; an item without windows gets no window flags
    assert outcomes[1].prepared == (2, ("w2", "w2"))
    assert outcomes[2].prepared == (3, ()) and outcomes[2].degraded == ()
    assert outcomes[0].degraded == ("windows_unavailable",)


def test_a_poisoned_batch_is_split_so_only_the_bad_request_fails():
    _, read = reads()
    model = Model()
    outcomes = run_sync(score_batch(IntTask(), [5, POISON, 7]), read, model)
    assert model.calls == [[5, POISON, 7], [5], [POISON], [7]]
    assert outcomes[0].output[outcomes[0].row] == 10 and outcomes[2].output[outcomes[2].row] == 14
    assert isinstance(outcomes[1].error, TritonRequestError) and outcomes[1].output is None


def test_chunks_of_max_batch_and_only_the_poisoned_chunk_splits():
    _, read = reads()
    model = Model()
    outcomes = run_sync(score_batch(IntTask(), [1, 2, POISON, 4, 5], max_batch=2), read, model)
    assert model.calls == [[1, 2], [POISON, 4], [POISON], [4], [5]]
    assert [o.error is None for o in outcomes] == [True, True, False, True, True]
    assert [o.output[o.row] for o in outcomes if o.error is None] == [2, 4, 8, 10]


def test_a_row_that_cannot_be_built_fails_alone_and_is_never_sent():
    _, read = reads()
    model = Model()
    outcomes = run_sync(score_batch(IntTask(), [1, 99, 2]), read, model)
    assert model.calls == [[1, 2]]
    assert isinstance(outcomes[1].error, RowError) and outcomes[1].error.field == "tx.amount"
    assert outcomes[2].output[outcomes[2].row] == 4


def test_no_window_read_when_no_item_reads_windows_and_no_call_for_an_empty_batch():
    log, read = reads()
    model = Model()
    assert run_sync(score_batch(IntTask(), []), read, model) == []
    outcomes = run_sync(score_batch(IntTask(), [3, 6]), read, model)
    assert log == [] and model.calls == [[3, 6]] and len(outcomes) == 2


def test_triton_unavailable_is_the_driver_s_business():
    """The step does not catch TritonUnavailable: the Kafka driver retries it, HTTP answers 503."""
    _, read = reads()

    def down(tensors, size):
        raise TritonUnavailable("connection refused")
    with pytest.raises(TritonUnavailable):
        run_sync(score_batch(IntTask(), [1]), read, down)


def test_the_async_driver_makes_the_same_calls():
    log, read = reads()
    model = Model()

    async def aread(keys, as_of):
        return read(keys, as_of)

    async def ainfer(tensors, size):
        return model(tensors, size)
    outcomes = asyncio.run(run_async(score_batch(IntTask(), [5, POISON, 7]), aread, ainfer))
    assert model.calls == [[5, POISON, 7], [5], [POISON], [7]]
    assert [o.error is None for o in outcomes] == [True, False, True]


def test_the_step_asks_for_what_it_needs_in_order():
    step = score_batch(IntTask(), [1, 2])
    op = next(step)
    assert isinstance(op, ReadWindows) and op.keys == [("hop", 1), ("hop", 2), ("hop", 2)]
    op = step.send(Read(windows=["a", "b", "c"]))
    assert isinstance(op, Infer) and op.size == 2 and op.tensors["x"].tolist() == [1, 2]
    with pytest.raises(StopIteration) as done:
        step.send(np.array([10, 20]))
    assert [(o.prepared, o.row) for o in done.value.value] == [((1, ("a",)), 0), ((2, ("b", "c")), 1)]
