"""Fast unit tests of the scorer's pure logic (no servers): validation, records, batching, fallback."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from rti_store import MemoryWindowStore
from schemas.interactions import Window
from schemas.tensors import build_tensors, stack_requests
from schemas.values import RowError
from scorer.batcher import MicroBatcher
from scorer.fallbacks import WindowFallback
from scorer.pipeline import (DEGRADED_WINDOWS, batch_tensors, event_tensors, prepare_event, score_record,
                             split_windows, window_requests)
from tests.scorer.conftest import BASE_T, SECOND, fact_row, history


# ----- validation --------------------------------------------------------------------------------

@pytest.mark.parametrize("change, field, words", [
    ({"colour": 1}, "transactions.colour", "unknown field"),
    ({"tx_fraud": 0}, "transactions.tx_fraud", "label"),
    ({"tx_amount": "x"}, "transactions.tx_amount", "expected a number"),
    ({"customer_id": None}, "transactions.customer_id", "is null"),  # null is not "missing"
    ({"tx_datetime": "yesterday"}, "transactions.tx_datetime", "unparseable timestamp"),
    ({"terminal_id": 2**64}, "transactions.terminal_id", "int64"),
    ({"tx_amount": -100.0}, "transactions.tx_amount", "below the minimum of 0 set by the plan"),  # Kafka path too
])
def test_prepare_event_names_the_field(plan, change, field, words):
    with pytest.raises(RowError) as err:
        prepare_event(plan, {**fact_row(1), **change}, strict=True)
    assert err.value.field == field and words in str(err.value)


def test_prepare_event_missing_id_and_defaults(plan):
    row = fact_row(5, customer=3, terminal=4)
    with pytest.raises(RowError, match="event id"):
        prepare_event(plan, {k: v for k, v in row.items() if k != "transaction_id"})
    ev = prepare_event(plan, row)
    assert ev.event_id == "5" and ev.anchor_time == row["tx_datetime"] and ev.key == b"3"
    assert ev.entity_ids == {"customer_id": 3, "terminal_id": 4}
    assert [k for k, _ in ev.keys] == list(plan.hop_keys)
    assert prepare_event(plan, row, "2023-11-14T22:13:20Z").anchor_time == BASE_T
    assert prepare_event(plan, row, key_column="terminal_id").key == b"4"


def test_batch_tensors_equal_per_event_build_tensors(plan):
    store = MemoryWindowStore(plan)
    store.append(history(plan, [fact_row(i, customer=1 + i % 2, terminal=9, amount=i) for i in range(1, 12)]))
    events = [prepare_event(plan, fact_row(20 + i, customer=1 + i % 2, terminal=9 if i else 77)) for i in range(3)]
    keys, as_of = window_requests(events)
    assert as_of == [e.anchor_time for e in events for _ in plan.hops]
    windows = store.read_many(keys, as_of)
    per_event = [event_tensors(plan, e, w) for e, w in zip(events, split_windows(events, windows))]
    for e, t in zip(events, per_event):
        direct = build_tensors(plan, e.row, {h: store.read(h, ent, e.anchor_time) for h, ent in e.keys})
        assert all(np.array_equal(t[k], direct[k]) for k in direct)
    stacked = batch_tensors(plan, per_event)
    ref = stack_requests(plan, per_event)
    assert all(np.array_equal(stacked[k], ref[k]) for k in ref)
    assert stacked["anchor_time"].shape == (3, 1)


def test_score_record_fits_the_avro_schema(plan, codec):
    ev = prepare_event(plan, fact_row(1, customer=5000))
    rec = score_record(plan, ev, np.float32(0.25), np.array([1, 0], np.int8), model_name="m", model_version="3",
                       latency_ms=1.5, degraded=(DEGRADED_WINDOWS,), scored_at=7)
    assert rec["cold_start"] == ["customer_id"]
    assert rec["degraded"] == [DEGRADED_WINDOWS, "embedding_missing:customer_id"]
    assert codec.decode(codec.encode("scores-value", rec))[1] == rec


# ----- micro-batching ---------------------------------------------------------------------------

def test_micro_batcher_groups_concurrent_items_and_keeps_order():
    seen: list[list[int]] = []

    async def handler(items):
        seen.append(list(items))
        await asyncio.sleep(0.001)
        return [ValueError(f"bad {i}") if i == 3 else i * 10 for i in items]

    async def main():
        b = MicroBatcher(handler, window_s=0.02, max_batch=4, max_in_flight=1)
        b.start()
        results = await asyncio.gather(*(b.submit(i) for i in range(6)), return_exceptions=True)
        await b.stop()
        return results

    results = asyncio.run(main())
    assert results[:3] == [0, 10, 20] and isinstance(results[3], ValueError) and results[4:] == [40, 50]
    assert [len(s) for s in seen] == [4, 2] and sum(seen, []) == list(range(6))


def test_micro_batcher_batch_error_reaches_every_caller():
    async def handler(items):
        raise RuntimeError("triton down")

    async def main():
        b = MicroBatcher(handler, window_s=0.001, max_batch=8)
        return await asyncio.gather(*(b.submit(i) for i in range(3)), return_exceptions=True)

    assert all(isinstance(r, RuntimeError) for r in asyncio.run(main()))


def test_micro_batcher_paces_batches_under_load_but_not_when_idle():
    """min_interval_s: a lone request is dispatched after the short window, while a steady
    stream is cut into batches no closer than the interval (bigger batches, fewer calls)."""
    seen: list[tuple[float, int]] = []

    async def handler(items):
        seen.append((time.perf_counter(), len(items)))
        return list(items)

    async def main():
        b = MicroBatcher(handler, window_s=0.001, max_batch=64, max_in_flight=2, min_interval_s=0.05)
        b.start()
        t0 = time.perf_counter()
        assert await b.submit(-1) == -1
        lone = time.perf_counter() - t0
        await asyncio.sleep(0.06)  # idle for longer than the interval
        t0 = time.perf_counter()
        assert await b.submit(-2) == -2
        lone2 = time.perf_counter() - t0

        async def stream():  # 100 requests, one per 3 ms (~330/s) for ~0.3 s
            tasks = []
            for i in range(100):
                tasks.append(asyncio.ensure_future(b.submit(i)))
                await asyncio.sleep(0.003)
            return await asyncio.gather(*tasks)

        results = await stream()
        await b.stop()
        return lone, lone2, results

    lone, lone2, results = asyncio.run(main())
    assert results == list(range(100))
    assert lone < 0.04 and lone2 < 0.04  # idle: no pacing delay
    stream = seen[2:]
    gaps = [b[0] - a[0] for a, b in zip(stream, stream[1:])]
    assert sum(n for _, n in stream) == 100
    assert min(gaps) >= 0.045  # never closer than the interval (timer slack aside)
    assert len(stream) <= 10 and max(n for _, n in stream) >= 8


# ----- window fallback -----------------------------------------------------------------------------

class _SlowThenDead:
    """A window reader that is slow (sleeps) or raises, to exercise the deadline logic."""

    def __init__(self, plan):
        self.inner = MemoryWindowStore(plan)
        self.delay = 0.0
        self.dead = False
        self.calls = 0

    def read_many_checked(self, keys, as_of):
        self.calls += 1
        if self.dead:
            raise ConnectionError("redis: connection refused")
        time.sleep(self.delay)
        return self.inner.read_many_checked(keys, as_of)


def test_window_fallback_deadline_breaker_and_recovery(plan):
    reader = _SlowThenDead(plan)
    reader.inner.mark_complete("test")
    now = [100.0]
    fb = WindowFallback(plan, reader, deadline_s=0.05, cooldown_s=1.0, clock=lambda: now[0])
    keys = [(plan.hop_keys[0], 1), (plan.hop_keys[1], 2)]

    async def read():
        t0 = time.perf_counter()
        res = await fb.read_async(keys, [BASE_T, BASE_T])
        return res, time.perf_counter() - t0

    ok, _ = asyncio.run(read())
    assert ok.degraded == () and all(isinstance(w, Window) for w in ok.windows)
    reader.delay = 0.5
    slow, took = asyncio.run(read())
    assert slow.degraded == (DEGRADED_WINDOWS,) and took < 0.3 and all(len(w) == 0 for w in slow.windows)
    calls = reader.calls
    skipped, _ = asyncio.run(read())  # inside the cool-down: the store is not even asked
    assert skipped.degraded == (DEGRADED_WINDOWS,) and reader.calls == calls
    reader.dead, now[0] = True, 102.0
    assert fb.read(keys, [BASE_T, BASE_T]).degraded == (DEGRADED_WINDOWS,)
    reader.dead, reader.delay, now[0] = False, 0.0, 104.0
    assert fb.read(keys, [BASE_T + SECOND] * 2).degraded == ()


# ----- the model Triton runs: traced forward == eager model ----------------------------------------

def test_traced_forward_scores_equal_the_eager_model(plan, tmp_path):
    """offline.export.bundle serves a torch.jit.trace of the shallow model's forward (no Python per op);
    on the benchmark's payload shapes (N in 4..32, mixed in one batch, and empty windows) it must
    give the eager model's scores to 1e-6."""
    from bench.payloads import make_payloads
    from offline.export.bundle import load_bundle, split_scores
    from offline.export import export_untrained

    vdir = export_untrained(plan, tmp_path, model_name="m", seed=3)
    traced, eager = load_bundle(vdir), load_bundle(vdir, trace=False)
    assert traced.traced is not None and eager.traced is None
    payloads = make_payloads(40)
    store = MemoryWindowStore(plan)
    store.append(payloads.append_items(plan))
    requests = []
    for i, row in enumerate(payloads.rows):
        keys = [(h.key.key, row[h.key.source.column]) for h in plan.hops]
        windows = store.read_many(keys, row["tx_datetime"]) if i % 7 else [Window.empty(plan, h) for h in plan.hops]
        requests.append(build_tensors(plan, row, {k: w for (k, _), w in zip(keys, windows)}))
    no_history = [requests[i] for i in (0, 7, 14)]  # e.g. the window store was down for this batch
    for batch in ([requests[0]], requests[1:6], requests[6:38], no_history):
        stacked = stack_requests(plan, batch)  # as the scorer sends a micro-batch: one request
        (want_out,) = split_scores(eager, [stacked])
        (got_out,) = split_scores(traced, [stacked])
        want, cold_want = want_out["score"], want_out["cold_start"]
        got, cold_got = got_out["score"], got_out["cold_start"]
        assert got.shape == (len(batch), 1)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(cold_got, cold_want)
    # several requests in one execute() (Triton's dynamic batcher) still split back per request
    per_request = split_scores(traced, requests[1:4])
    assert [o["score"].shape for o in per_request] == [(1, 1)] * 3


def test_length_groups_split_long_rows_from_short_ones():
    from offline.export.bundle import length_groups
    tokens = np.array([9] * 10 + [65] * 2 + [17])
    groups = length_groups(tokens, call_cost_tokens=110)
    assert sorted(np.concatenate(groups).tolist()) == list(range(13))
    assert [sorted(tokens[g].tolist()) for g in groups] == [[9] * 10 + [17], [65, 65]]
    assert len(length_groups(np.array([30, 33, 40]), 110)) == 1  # one bucket: no split


# ----- Kafka loop pacing -----------------------------------------------------------------------------

class _ArrivalQueue:
    """consume() with librdkafka's semantics (wait until ``n`` messages or the timeout) over a
    list of (arrival time, message): the one thing the scorer's batch pacing relies on."""

    def __init__(self):
        self.arrivals: list[tuple[float, int]] = []

    def add(self, at: float, n: int) -> None:
        self.arrivals += [(at, i) for i in range(n)]

    def consume(self, num_messages: int, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            ready = [a for a in self.arrivals if a[0] <= now]
            if len(ready) >= num_messages or now >= deadline:
                taken = ready[:num_messages]
                for a in taken:
                    self.arrivals.remove(a)
                return [m for _, m in taken]
            time.sleep(0.001)


def test_kafka_loop_paces_batches_but_takes_the_first_event_after_idle_at_once(plan):
    from scorer.kafka_service import KafkaScorer
    q = _ArrivalQueue()
    scorer = KafkaScorer(plan, consumer=q, producer=None, codec=None, triton=None, fallback=None,
                         facts_topics=["f"], scores_topic="s", dlq_topic="d", max_batch=8,
                         poll_timeout_s=0.2, batch_interval_s=0.1)
    try:
        t0 = time.monotonic()
        q.add(t0 + 0.03, 1)  # after an idle spell: taken as soon as it is there
        first = scorer._next_batch()
        assert len(first) == 1 and time.monotonic() - t0 < 0.08
        start = time.monotonic()
        q.add(start, 3)  # a trickle: waits for the pace, everything that came joins the batch
        q.add(start + 0.02, 2)
        second = scorer._next_batch()
        assert len(second) == 5 and time.monotonic() - start >= 0.09
        start = time.monotonic()
        q.add(start, 8)  # a full batch goes at once, whatever the pace
        third = scorer._next_batch()
        assert len(third) == 8 and time.monotonic() - start < 0.05
        start = time.monotonic()
        assert scorer._next_batch() == []  # nothing comes: back after the poll timeout
        assert 0.18 <= time.monotonic() - start < 0.5
    finally:
        scorer.close(timeout_s=1)


def test_window_fallback_flags_every_read_of_a_store_that_is_not_complete(plan):
    """Lost (no marker) or rebuilding -> the windows are used but every read is flagged."""
    from rti_store import MemoryWindowStore
    from scorer.pipeline import DEGRADED_REBUILDING
    store = MemoryWindowStore(plan)
    fb = WindowFallback(plan, store, deadline_s=1.0, cooldown_s=0.0)
    keys = [(plan.hop_keys[0], 1), (plan.hop_keys[1], 2)]

    def both():
        return fb.read(keys, [BASE_T] * 2).degraded, asyncio.run(fb.read_async(keys, [BASE_T] * 2)).degraded

    assert both() == ((DEGRADED_REBUILDING,),) * 2  # never filled by ingest: lost
    store.claim_rebuild([("tx", 0), ("tx", 1)], from_ms=0, epoch="g1")
    assert both() == ((DEGRADED_REBUILDING,),) * 2
    store.finish_rebuild("tx", 0, "g1")
    assert both() == ((DEGRADED_REBUILDING,),) * 2  # one partition still replaying
    store.finish_rebuild("tx", 1, "g1")
    assert both() == ((), ())
    store.forget_everything()
    assert both() == ((DEGRADED_REBUILDING,),) * 2
