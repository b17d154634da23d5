"""`relstream score` on the real stack: scores equal direct Triton calls, dead letters, self-append."""
from __future__ import annotations

import numpy as np
import pytest

from schemas.tensors import build_tensors
from scorer.triton import TritonScorer
from tests.scorer.conftest import SECOND, consume_all, fact_row, history, produce_facts, scorer_for

pytestmark = pytest.mark.timeout(180)


def test_kafka_scores_equal_direct_calls_and_bad_records_go_to_the_dlq(
        plan, stack, test_model, window_store, codec, new_topic, kafka_client_config, kafka_consumer_config):
    facts, scores, dlq = new_topic("facts", partitions=2), new_topic("scores"), new_topic("dlq")
    past = [fact_row(i, customer=7 + i % 4, terminal=11 + i % 3, amount=3.0 * i) for i in range(1, 40)]
    window_store.append(history(plan, past))
    rows = [fact_row(100 + i, customer=7 + i % 5, terminal=11 + i % 3, amount=1.5 * i) for i in range(30)]
    rows.append(fact_row(200, customer=5000))  # no embedding: cold start
    # valid Avro of another stream: not a fact row of the plan
    wrong_stream = codec.encode("interactions-value", {"event_id": "e1", "event_type": "view", "event_time": 1,
                                                       "household_id": 1, "product_id": 2})
    # magic 0 + schema id 99: not registered (the built-in schemas take the first ids)
    garbage = [b"\x00\x00\x00\x00\x63garbage", b"not avro at all", wrong_stream]
    produce_facts(kafka_client_config, facts, codec, rows, raw=garbage)

    scorer = scorer_for(plan, stack, test_model, consumer_config=kafka_consumer_config,
                        client_config=kafka_client_config, codec=codec, store=window_store,
                        topics=(facts, scores, dlq), group=f"g-{facts}", txn_id=f"tx-{facts}", max_batch=8)
    scorer.start()
    stats = scorer.run(idle_exit_s=3.0)
    scorer.close()
    assert stats.consumed == len(rows) + len(garbage)
    assert stats.scored == len(rows) and stats.dead_letters == len(garbage)
    assert scorer.metrics.value("relstream_scorer_triton_calls_total", {"path": "kafka"}) <= stats.batches + 1

    out = consume_all(kafka_consumer_config, scores, len(rows), settle=1.0)
    records = {}
    for msg in out:
        _, rec = codec.decode(msg.value())
        records[rec["event_id"]] = (msg.key(), rec)
    assert sorted(records) == sorted(str(r["transaction_id"]) for r in rows)
    client = TritonScorer(plan, stack.triton_grpc_url, test_model)
    for r in rows:
        windows = {h.key.key: window_store.read(h.key.key, e, r["tx_datetime"])
                   for h, e in zip(plan.hops, (r["customer_id"], r["terminal_id"]))}
        expected = client.infer(build_tensors(plan, r, windows))
        key, rec = records[str(r["transaction_id"])]
        assert key == str(r["customer_id"]).encode()
        assert rec["score"] == pytest.approx(float(expected.scores[0]), abs=1e-6)
        assert rec["entity_ids"] == {"customer_id": r["customer_id"], "terminal_id": r["terminal_id"]}
        assert rec["model_name"] == test_model and rec["model_version"] == "1"
    client.close()
    assert records["200"][1]["cold_start"] == ["customer_id"]

    dead = consume_all(kafka_consumer_config, dlq, len(garbage), settle=0.5)
    from schemas.dead_letter import parse_dead_letter
    letters = {dl.reason: dl for dl in (parse_dead_letter(m, codec.decode) for m in dead)}
    assert sorted(letters) == ["bad_magic", "invalid_row", "unknown_schema"]
    assert "transactions.transaction_id" in letters["invalid_row"].detail
    assert letters["invalid_row"].payload == wrong_stream
    for reason, dl in letters.items():
        assert (dl.source_service, dl.consumer_group, dl.topic) == ("score", f"g-{facts}", facts)
        assert scorer.metrics.value("relstream_scorer_dead_letters_total", {"topic": facts, "reason": reason}) == 1


def test_self_append_lets_the_next_event_see_the_previous_one(
        plan, stack, test_model, window_store, codec, new_topic, kafka_client_config, kafka_consumer_config):
    facts, scores, dlq = new_topic("facts"), new_topic("scores"), new_topic("dlq")
    rows = [fact_row(i, customer=9, terminal=20 + i, amount=float(i)) for i in range(1, 6)]
    produce_facts(kafka_client_config, facts, codec, rows)
    scorer = scorer_for(plan, stack, test_model, consumer_config=kafka_consumer_config,
                        client_config=kafka_client_config, codec=codec, store=window_store,
                        topics=(facts, scores, dlq), group=f"g-{facts}", txn_id=f"tx-{facts}",
                        append_scored=True, max_batch=2)
    scorer.start()
    scorer.run(idle_exit_s=2.0)
    scorer.close()
    # every fact is now in its customer's window, and the i-th event saw the i-1 before it
    hop = plan.hops[0].key.key
    assert len(window_store.read(hop, 9, rows[-1]["tx_datetime"] + SECOND)) == 5
    client = TritonScorer(plan, stack.triton_grpc_url, test_model)
    got = {codec.decode(m.value())[1]["event_id"]: codec.decode(m.value())[1]["score"]
           for m in consume_all(kafka_consumer_config, scores, 5)}
    for r in rows:
        windows = {h.key.key: window_store.read(h.key.key, e, r["tx_datetime"])
                   for h, e in zip(plan.hops, (9, r["terminal_id"]))}
        assert len(windows[hop]) == r["transaction_id"] - 1
        assert got[str(r["transaction_id"])] == pytest.approx(
            float(client.infer(build_tensors(plan, r, windows)).scores[0]), abs=1e-6)
    client.close()
    assert np.isfinite(list(got.values())).all()


def test_bounded_calls_return_raise_and_detect_a_wedged_call():
    """Pure logic of the hard deadline around librdkafka calls (no servers)."""
    import threading
    import time

    from scorer.kafka_service import BoundedCalls, ClientsWedged
    calls = BoundedCalls()
    assert calls.call("add", 1.0, lambda a, b: a + b, 2, 3) == 5
    with pytest.raises(KeyError):
        calls.call("raise", 1.0, {}.__getitem__, "missing")
    release = threading.Event()
    t0 = time.monotonic()
    with pytest.raises(ClientsWedged, match="stuck did not return within"):
        calls.call("stuck", 0.3, release.wait)
    assert time.monotonic() - t0 < 2.0
    assert calls.wedged == "stuck"
    with pytest.raises(ClientsWedged, match="wedged in stuck"):  # nothing more runs on a wedged client
        calls.call("add", 1.0, lambda: 1)
    release.set()


class _HangingOffsets:
    """A real transactional producer whose first send_offsets_to_transaction never returns -- what
    librdkafka 2.16 does when its group-coordinator request is stuck (librdkafka #5456/#5511)."""

    def __init__(self, producer):
        import threading
        self._producer = producer
        self.release = threading.Event()
        self.hung = 0

    def send_offsets_to_transaction(self, *args):
        if not self.hung:
            self.hung += 1
            self.release.wait()
        return self._producer.send_offsets_to_transaction(*args)

    def __getattr__(self, name):
        return getattr(self._producer, name)


def test_a_wedged_send_offsets_is_cut_off_and_a_rebuilt_scorer_scores_everything_exactly_once(
        plan, stack, test_model, window_store, codec, new_topic, kafka_client_config, kafka_consumer_config):
    import time

    from scorer.kafka_service import ClientsWedged
    facts, scores, dlq = new_topic("facts", partitions=2), new_topic("scores"), new_topic("dlq")
    rows = [fact_row(300 + i, customer=7 + i % 5, terminal=11 + i % 3, amount=2.0 * i) for i in range(40)]
    produce_facts(kafka_client_config, facts, codec, rows)
    kw = dict(consumer_config=kafka_consumer_config, client_config=kafka_client_config, codec=codec,
              store=window_store, topics=(facts, scores, dlq), group=f"g-{facts}", txn_id=f"tx-{facts}",
              max_batch=8, txn_call_timeout_s=1.0)
    first = scorer_for(plan, stack, test_model, **kw)
    first.producer = hanging = _HangingOffsets(first.producer)
    first.start()
    t0 = time.monotonic()
    with pytest.raises(ClientsWedged, match="send_offsets_to_transaction"):
        first.run(idle_exit_s=10.0)
    assert time.monotonic() - t0 < 15.0  # the hard deadline (1 s + 5 s grace), not forever
    first.close(timeout_s=5.0)  # bounded; the wedged producer is abandoned, its transaction open
    # as cmd_score does: new clients, same transactional.id -> the zombie is fenced, its open
    # transaction aborted, and the new consumer starts from the committed offsets
    second = scorer_for(plan, stack, test_model, **kw)
    second.start()
    second.run(idle_exit_s=3.0)
    second.close()
    hanging.release.set()  # let the abandoned call return (fenced) so the thread ends
    out = consume_all(kafka_consumer_config, scores, len(rows), settle=1.0)
    ids = [codec.decode(m.value())[1]["event_id"] for m in out]
    assert sorted(ids) == sorted(str(r["transaction_id"]) for r in rows)  # none lost, none twice
    # the first batch was produced inside the abandoned transaction: aborted, invisible above
    uncommitted = consume_all(kafka_consumer_config, scores, len(rows) + 8, committed=False, settle=1.0)
    assert len(uncommitted) > len(out)
