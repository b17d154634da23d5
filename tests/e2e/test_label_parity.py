"""Label feedback end to end: label events on their own topic -> `relstream ingest` -> Redis label
windows -> `relstream score` (read through the same window path as the interactions) -> Triton,
against the offline replay of the same events scored in-process by the exported bundle.

The model is an untrained export of the `fraud_labels` plan: its inputs include the known-label
counts, so an online/offline difference in them would show in the scores.
"""
from __future__ import annotations

import random
import time

import numpy as np
import pytest

from offline.distillation.replay import label_rows, replay_requests
from relstream.demo.events import RateProducer, ScoreCollector, label_records, wait_caught_up, wait_group_members
from relstream.demo.reference import offline_reference_scores
from relstream.demo.report import parity_of
from relstream.demo.tools import LABEL_SUBJECT, load_model

from .conftest import E2E, day_bounds, records_of, timed

LABEL_MODEL = "e2e_label_model"


@pytest.fixture(scope="module")
def label_plan():
    from schemas.plan_loading import builtin_plan
    return builtin_plan("fraud_labels")


@pytest.fixture(scope="module")
def label_model(stack, label_plan, fraud_tx, tmp_path_factory):
    from offline.embeddings import random_embeddings, write_embeddings_parquet
    from offline.export import export_untrained
    from relstream.demo.tools import latest_version_dir

    ids = {"customers": np.unique(fraud_tx["customer_id"].to_numpy()),
           "terminals": np.unique(fraud_tx["terminal_id"].to_numpy())}
    path = tmp_path_factory.mktemp("e2e-label-emb") / "embeddings.parquet"
    write_embeddings_parquet(path, *random_embeddings(label_plan, ids, [day_bounds(fraud_tx, d) for d in range(1, 23)],
                                                      dim=8, seed=2))
    export_untrained(label_plan, stack.model_repository, model_name=LABEL_MODEL, embeddings=path, seed=5)
    load_model(stack.triton_http_url, LABEL_MODEL)
    return latest_version_dir(stack.model_repository, LABEL_MODEL)


def test_label_feedback_online_scores_equal_offline_scores(stack, tmp_path, fraud_tx, label_plan, label_model):
    t_all = time.monotonic()
    e2e = E2E(stack, tmp_path, model_name=LABEL_MODEL, plan="fraud_labels")
    try:
        tx = fraud_tx
        times = tx["tx_datetime"].to_numpy(np.int64)
        backfill_end, holdout_start = day_bounds(tx, 10), day_bounds(tx, 18)
        labels = label_rows(label_plan, tx)
        known = labels["label_known_at"].to_numpy(np.int64)
        rng = random.Random(5)
        # labels known before the backfill's end are backfilled (with their known time); the
        # others stream on the label topic: half without a known time (ingest applies the delay),
        # the rest known 1-9 days after the transaction, in shuffled order, some twice
        early_labels = labels[known < backfill_end]
        streamed = label_records(labels[known >= backfill_end], known_times=False)
        for r in streamed:
            if rng.random() < 0.5:
                r["label_known_at"] = r["tx_datetime"] + rng.randint(1, 9) * 86_400 * 10**9
        streamed += rng.sample(streamed, len(streamed) // 10)
        rng.shuffle(streamed)

        t0 = time.monotonic()
        e2e.backfill(tx[times < backfill_end])
        e2e.backfill(early_labels, table="transaction_labels")
        ingest = e2e.service("ingest", "ingest", "--no-progress")
        producer = RateProducer(stack.kafka_bootstrap, e2e.codec)
        producer.produce(e2e.tx_topic, records_of(tx[times >= backfill_end]))
        producer.produce(e2e.topics["labels"], streamed, subject=LABEL_SUBJECT)
        producer.flush()
        wait_caught_up(stack.kafka_bootstrap, e2e.ingest_group, [e2e.tx_topic, e2e.topics["labels"]], 120,
                       check=lambda: ingest.check_alive("ingest"))
        timed(f"windows + labels: {len(early_labels)} backfilled, {len(streamed)} label events streamed", t0)

        holdout = tx[times >= holdout_start].reset_index(drop=True)
        events = records_of(holdout)
        ids = [str(r["transaction_id"]) for r in events]
        collector = ScoreCollector(stack.kafka_bootstrap, e2e.topics["scores"], e2e.codec)
        collector.start()
        try:
            scorer = e2e.service("score", "score")
            wait_group_members(stack.kafka_bootstrap, [e2e.score_group], 90, check=lambda: scorer.check_alive("score"))
            producer.produce(e2e.topics["facts"], events)
            producer.flush()
            missing = collector.wait_for(ids, 120, check=lambda: scorer.check_alive("score"))
            assert not missing, f"{len(missing)} events unscored, e.g. {missing[:5]}\n{scorer.tail()}"
        finally:
            collector.stop()
        assert collector.duplicates == 0

        window_records = {"transactions": records_of(tx),
                          "transaction_labels": label_records(early_labels) + streamed}
        offline, _ = offline_reference_scores(label_model, window_records, events)
        online = np.array([collector.seen[i].record["score"] for i in ids], np.float32)
        parity = parity_of(ids, online, offline)
        # not vacuous: the held-out events read known labels, and not all the same counts
        reqs = replay_requests(label_plan, window_records, events, prefill=True, progress=False)
        counts = np.array([r["label:transactions.terminal_id:30d:count"][0, 0] for r in reqs])
        print(f"[e2e] label parity over {parity.events} events: max |online - offline| = {parity.max_abs_diff:.3e}; "
              f"terminal 30 d label counts {counts.min():.0f}..{counts.max():.0f}; total {time.monotonic() - t_all:.1f}s")
        assert parity.ok, parity
        assert counts.max() > 0 and len(np.unique(counts)) > 1
        assert all(not collector.seen[i].record["degraded"] or all(f.startswith("embedding_missing")
                   for f in collector.seen[i].record["degraded"]) for i in ids), "no window fallback was used"
    finally:
        e2e.close()
