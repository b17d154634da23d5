"""Online/offline parity over the live path, exact by construction.

The held-out period goes through Kafka -> `relstream ingest` -> Redis like everything else; once
the ingest group has committed every record, the held-out facts go through Kafka ->
`relstream score` (windows read from Redis as of each event's time) -> Triton -> scores topic.
Offline, the same interactions are appended to the in-memory window store, each event's windows
are read as of its time, its tensors are built by `schemas.tensors.build_tensors` and the
exported bundle scores them in-process. Both stores implement one contract (state depends only on
the set of appended events), so every online score must equal its offline score (<= 1e-5).
"""
from __future__ import annotations

import time

import numpy as np

from relstream.demo.events import RateProducer, ScoreCollector, wait_caught_up, wait_group_members
from relstream.demo.reference import offline_reference_scores
from relstream.demo.report import parity_of

from .conftest import day_bounds, records_of, timed


def test_online_scores_equal_offline_scores(e2e, fraud_tx, e2e_model, plan):
    t_all = time.monotonic()
    tx = fraud_tx
    times = tx["tx_datetime"].to_numpy(np.int64)
    backfill_end, holdout_start = day_bounds(tx, 10), day_bounds(tx, 19)
    early = tx[times < backfill_end]
    live_history = tx[(times >= backfill_end) & (times < holdout_start)]
    holdout = tx[times >= holdout_start].reset_index(drop=True)
    assert len(holdout) > 200 and len(live_history) > 500

    # 1. history: the first days by backfill (parquet), the rest + the held-out days by Kafka
    t0 = time.monotonic()
    e2e.backfill(early)
    ingest = e2e.service("ingest", "ingest", "--no-progress")
    producer = RateProducer(e2e.stack.kafka_bootstrap, e2e.codec)
    producer.produce(e2e.tx_topic, records_of(live_history) + records_of(holdout))
    producer.flush()
    wait_caught_up(e2e.stack.kafka_bootstrap, e2e.ingest_group, [e2e.tx_topic], 120,
                   check=lambda: ingest.check_alive("ingest"))
    timed(f"windows: backfill {len(early)} + ingest {len(live_history) + len(holdout)} events", t0)

    # 2. the held-out facts through the scorer
    t0 = time.monotonic()
    collector = ScoreCollector(e2e.stack.kafka_bootstrap, e2e.topics["scores"], e2e.codec)
    collector.start()
    try:
        scorer = e2e.service("score", "score")
        wait_group_members(e2e.stack.kafka_bootstrap, [e2e.score_group], 90, check=lambda: scorer.check_alive("score"))
        events = records_of(holdout)
        ids = [str(r["transaction_id"]) for r in events]
        producer.produce(e2e.topics["facts"], events)
        producer.flush()
        missing = collector.wait_for(ids, 120, check=lambda: scorer.check_alive("score"))
        assert not missing, f"{len(missing)} events unscored, e.g. {missing[:5]}\n{scorer.tail()}"
        time.sleep(0.5)  # anything extra (a duplicate) would arrive right behind
    finally:
        collector.stop()
    timed(f"scored {len(ids)} held-out events", t0)
    assert collector.duplicates == 0, "exactly-once output: no event scored twice"
    assert collector.undecodable == 0

    # 3. the offline reference
    t0 = time.monotonic()
    offline, offline_cold = offline_reference_scores(e2e_model, records_of(tx), events)
    timed("offline reference", t0)
    online = np.array([collector.seen[i].record["score"] for i in ids], np.float32)
    parity = parity_of(ids, online, offline)
    print(f"[e2e] parity over {parity.events} events: max |online - offline| = {parity.max_abs_diff:.3e}, "
          f"worst event {parity.worst_event_id}; total {time.monotonic() - t_all:.1f}s")
    assert parity.ok, parity

    # the flags agree too: the same entities took the cold-start path online and offline
    cold_cols = [k.column for k in plan.embedding_keys]
    online_cold = np.array([[c in collector.seen[i].record["cold_start"] for c in cold_cols] for i in ids], np.int8)
    np.testing.assert_array_equal(online_cold, offline_cold)
    # ... and the claim is not vacuous: windows, embeddings and cold starts all played a part
    assert 0 < online_cold.any(axis=1).sum() < len(ids), "some, not all, events should be cold starts"
    assert np.std(online) > 1e-4, "scores should differ between events"
    assert all(not collector.seen[i].record["degraded"] or all(f.startswith("embedding_missing")
               for f in collector.seen[i].record["degraded"]) for i in ids), "no window fallback was used"
