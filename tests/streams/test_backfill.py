"""Backfill from parquet through the live append path."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from rti_store import MemoryWindowStore, RedisWindowStore
from schemas.interactions import interactions_of
from streams.backfill import BackfillError, backfill
from streams.records import RecordDecoder
from streams.synthetic import synthetic_transactions


def _decoder(plan):
    return RecordDecoder(plan, {}, decode=lambda v: (_ for _ in ()).throw(AssertionError), decode_errors=())


def _reference(plan, rows):
    store = MemoryWindowStore(plan)
    store.append([a for r in rows for a in interactions_of(plan, "transactions", r)])
    return store


def _frame(events):
    df = pd.DataFrame(events)
    df["tx_datetime"] = pd.to_datetime(df["tx_datetime"], unit="ns")  # a parquet timestamp column
    df["tx_fraud"] = 0
    return df


def test_backfill_of_normalised_parquet_equals_a_single_pass(tmp_path, plan, redis_client, ih):
    events = synthetic_transactions(2500, seed=4)
    path = tmp_path / "tx.parquet"
    _frame(events).to_parquet(path, index=False)
    store = RedisWindowStore(plan, redis_client)
    report = backfill(path, _decoder(plan), store, chunk_rows=700, progress=False)
    assert (report.rows, report.interactions) == (2500, 5000)
    ih.assert_same_windows(_reference(plan, events), store, redis_client)
    # re-running is harmless: appends are idempotent
    backfill(path, _decoder(plan), store, chunk_rows=1000, progress=False)
    ih.assert_same_windows(_reference(plan, events), store, redis_client)


def test_backfill_cli_reads_the_published_simulator_schema(tmp_path, stack, plan, redis_client, ih):
    events = synthetic_transactions(1500, seed=8)
    published = pd.DataFrame({
        "TRANSACTION_ID": [e["transaction_id"] for e in events],
        "TX_DATETIME": pd.to_datetime([e["tx_datetime"] for e in events], unit="ns").floor("s"),
        "CUSTOMER_ID": [e["customer_id"] for e in events],
        "TERMINAL_ID": [e["terminal_id"] for e in events],
        "TX_AMOUNT": [e["tx_amount"] for e in events],
        "TX_FRAUD": np.zeros(len(events), np.int64),
    })
    path = tmp_path / "published.parquet"
    published.to_parquet(path, index=False)
    cfg = tmp_path / "relstream.yaml"
    cfg.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "redis": {"url": stack.redis_url}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELSTREAM")}
    out = subprocess.run([sys.executable, "-m", "relstream", "--config", str(cfg), "ingest", "--backfill", str(path),
                          "--no-progress"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["rows"] == 1500 and report["interactions"] == 3000
    expected_rows = [{"transaction_id": e["transaction_id"], "tx_datetime": e["tx_datetime"] // 10**9 * 10**9,
                      "customer_id": e["customer_id"], "terminal_id": e["terminal_id"], "tx_amount": e["tx_amount"]}
                     for e in events]
    ih.assert_same_windows(_reference(plan, expected_rows), RedisWindowStore(plan, redis_client), redis_client)


def test_backfill_names_the_bad_row_and_field(tmp_path, plan):
    df = _frame(synthetic_transactions(10, seed=1))
    df["customer_id"] = df["customer_id"].astype("Int64")
    df.loc[6, "customer_id"] = pd.NA
    path = tmp_path / "bad.parquet"
    df.to_parquet(path, index=False)
    with pytest.raises(BackfillError, match=r"row 6: transactions.customer_id: missing value"):
        backfill(path, _decoder(plan), MemoryWindowStore(plan), chunk_rows=4, progress=False)
    with pytest.raises(BackfillError, match="no such file"):
        backfill(tmp_path / "nope.parquet", _decoder(plan), MemoryWindowStore(plan), progress=False)


def test_a_lost_store_gets_the_declared_backfill_and_the_topic_back(tmp_path, plan, redis_client, ih, registry_dir,
                                                                   kafka_client_config, new_topic):
    """A store filled by a backfill file and live Kafka records, then flushed (what a Redis restart
    without persistence does): ingest reloads the declared file and replays the topic, and only
    then does the store read as complete."""
    import threading
    import time

    from rti_store import Completeness
    from streams.ingest import IngestService, IngestSettings, open_codec
    from streams.synthetic import TRANSACTIONS_SUBJECT, produce_values

    history = synthetic_transactions(1200, seed=11)
    live = synthetic_transactions(300, seed=12, first_id=10_000)
    path = tmp_path / "history.parquet"
    _frame(history).to_parquet(path, index=False)
    topic = new_topic("rebuild-tx")
    codec, errors = open_codec(registry_dir, 1 << 20)
    producer = ih.producer(kafka_client_config["bootstrap.servers"])
    produce_values(producer, topic, [codec.encode(TRANSACTIONS_SUBJECT, e) for e in live])
    store = RedisWindowStore(plan, redis_client)
    settings = IngestSettings(topics={topic: "transactions"}, dlq_topic=topic + "-dlq", group_id=f"g-{topic}",
                              batch_size=200, batch_timeout_s=0.05, state_check_interval_s=0.1,
                              backfill_sources=((str(path), None),))
    service = IngestService(plan, settings, kafka_client_config, store, codec, errors, consumer_extra=ih.FAST_GROUP)
    runner = threading.Thread(target=service.run, kwargs={"install_signals": False}, daemon=True)
    runner.start()

    def wait_complete(timeout=60.0):
        states = set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = store.marker().completeness
            states.add(state)
            if state is Completeness.COMPLETE:
                return states
            time.sleep(0.01)
        raise AssertionError(f"store not complete after {timeout}s: {store.marker()}")

    try:
        wait_complete()  # the first fill: nothing there, no marker -> a rebuild too
        expected = _reference(plan, history + live)
        ih.assert_same_windows(expected, store, redis_client)
        redis_client.flushdb()
        seen = wait_complete()
        assert Completeness.COMPLETE in seen and len(seen) > 1, seen  # it went through lost/rebuilding
        ih.assert_same_windows(expected, store, redis_client)
    finally:
        service.stop()
        runner.join(30)
