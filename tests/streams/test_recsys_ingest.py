"""Session events of the recsys plan through the one ingest path, on the real Kafka + Redis."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rti_store import RedisWindowStore
from schemas.plan_loading import builtin_plan
from streams.sessions import PURCHASE_LINES_SUBJECT, synthetic_purchase_lines
from streams.synthetic import TRANSACTIONS_SUBJECT, produce_values, synthetic_transactions


pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def recsys():
    return builtin_plan("recsys")


def test_purchase_lines_fill_household_windows_in_session_order(stack, new_topic, redis_client, recsys, codec,
                                                               registry_dir, ih):
    topic, dlq = new_topic("lines", partitions=2), new_topic("lines-dlq")
    lines = synthetic_purchase_lines(250, seed=3, n_households=40)
    values = ih.encode_all(codec, PURCHASE_LINES_SUBJECT, lines)
    keys = [str(r["household_id"]).encode() for r in lines]
    # upstream redelivers some lines (duplicates are no-ops); a fraud transaction on this topic is
    # not a purchase line (dead letter naming the missing field), garbage bytes neither
    wrong = codec.encode(TRANSACTIONS_SUBJECT, synthetic_transactions(1)[0])
    sent = values + values[:120] + [wrong, b"\x00garbage"]
    produce_values(ih.producer(stack.kafka_bootstrap), topic, sent, keys=keys + keys[:120] + [None, None])
    ends = ih.end_offsets(stack.kafka_bootstrap, topic, 2)
    assert sum(ends.values()) == len(sent)

    store = RedisWindowStore(recsys, redis_client)
    group = f"g-{topic}"
    run = ih.Running(ih.make_service(recsys, stack.kafka_bootstrap, registry_dir, store, topic, dlq, group,
                                     batch_size=400))
    probe = ih.GroupProbe(stack.kafka_bootstrap, group, topic, 2)
    try:
        probe.wait_for(ends)
    finally:
        stats = run.stop()
        probe.close()
    assert stats.records == len(sent) and stats.dead_letters == 2
    assert stats.interactions == len(values) + 120  # one hop: one append per good line

    expected = ih.single_pass(recsys, codec, values)
    assert ih.assert_same_windows(expected, store, redis_client) == len({r["household_id"] for r in lines})

    # Session semantics: as of line r of a basket, the window ends with exactly lines 0..r-1 of it.
    # (Checked on each household's newest basket: the store keeps the newest max_len lines, so
    # reads far in the past may miss lines the caps dropped.)
    hop = recsys.hops[0].key.key
    newest: dict[int, list[dict]] = {}
    for r in lines:
        basket = newest.get(r["household_id"])
        if basket is None or basket[0]["basket_id"] != r["basket_id"]:
            newest[r["household_id"]] = basket = []
        basket.append(r)
    checked = 0
    for basket in (b for b in newest.values() if len(b) >= 3):
        for r in (0, 2, len(basket) - 1):
            w = store.read(hop, basket[r]["household_id"], basket[r]["transaction_timestamp"])
            tail_basket = w.columns["basket_id"][len(w) - r:] if r else np.array([], np.int64)
            assert list(tail_basket) == [basket[0]["basket_id"]] * r
            assert list(w.columns["product_id"][len(w) - r:] if r else []) == [x["product_id"] for x in basket[:r]]
            assert basket[0]["basket_id"] not in set(w.columns["basket_id"][:len(w) - r].tolist())
            checked += 1
    assert checked >= 30, checked


def test_relstream_ingest_cli_with_the_recsys_plan(stack, new_topic, redis_client, recsys, codec, ih, tmp_path):
    """`relstream ingest --plan recsys`: the configured interaction topic maps onto the plan's
    one interaction table (transactions) without any other setting."""
    topic, dlq = new_topic("cli-lines"), new_topic("cli-dlq")
    lines = synthetic_purchase_lines(40, seed=5, n_households=6)
    produce_values(ih.producer(stack.kafka_bootstrap), topic, ih.encode_all(codec, PURCHASE_LINES_SUBJECT, lines))
    env = {**os.environ, "RELSTREAM__KAFKA__BOOTSTRAP_SERVERS": stack.kafka_bootstrap,
           "RELSTREAM__REDIS__URL": stack.redis_url, "RELSTREAM__RUN_DIR": str(tmp_path / "run"),
           "RELSTREAM__TOPICS__INTERACTIONS": f"[{topic}]", "RELSTREAM__TOPICS__DLQ": dlq}
    proc = subprocess.run([sys.executable, "-m", "relstream.cli", "ingest", "--plan", "recsys", "--group",
                           f"cli-{topic}", "--exit-when-idle", "3", "--kafka-config", "session.timeout.ms=6000"],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats["records"] == len(lines) and stats["dead_letters"] == 0
    store = RedisWindowStore(recsys, redis_client)
    expected = ih.single_pass(recsys, codec, ih.encode_all(codec, PURCHASE_LINES_SUBJECT, lines))
    ih.assert_same_windows(expected, store, redis_client)
