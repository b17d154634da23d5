"""Distillation rows are point-in-time correct and equal to what the online path would build."""
import dataclasses

import numpy as np
import pandas as pd
import pytest

from offline.distillation.replay import TrainingRows, replay_rows
from rti_store import MemoryWindowStore
from schemas.interactions import interactions_of, window_keys
from schemas.plan_loading import builtin_plan
from schemas.tensors import build_tensors, stack_requests

T0 = 1_522_540_800 * 10**9
S = 10**9


@pytest.fixture(scope="module")
def rows(plan, tx):
    return replay_rows(plan, tx, progress=False)


def _time_col(plan, hop_key):
    return f"{hop_key}:{plan.interaction_table(plan.hop(hop_key)).time_column}"


def test_every_window_entry_is_strictly_before_the_anchor(plan, tx, rows):
    anchor = rows.scalars["anchor_time"]
    assert (anchor == tx["tx_datetime"].to_numpy()[rows.row_index]).all()
    for h in plan.hop_keys:
        t = rows.sequences[_time_col(plan, h)]
        n = rows.lengths[h]
        valid = np.arange(t.shape[1])[None, :] < n[:, None]
        lo = anchor - plan.real_time_offset.ns
        assert ((t < anchor[:, None]) | ~valid).all()
        assert ((t >= lo[:, None]) | ~valid).all()
        assert (n <= plan.hop(h).max_len).all()
        assert n.max() > 0  # the test data does exercise non-empty windows


def test_same_timestamp_events_do_not_see_each_other(plan):
    hop_c = plan.hop_keys[0]
    frame = pd.DataFrame({
        "transaction_id": [1, 2, 3, 4],
        "tx_datetime": [T0, T0 + 5 * S, T0 + 5 * S, T0 + 9 * S],
        "customer_id": [7, 7, 7, 7],
        "terminal_id": [1, 2, 3, 4],
        "tx_amount": np.array([1.0, 2.0, 3.0, 4.0], np.float32),
        "tx_fraud": [0, 0, 1, 0],
    })
    rows = replay_rows(plan, frame, progress=False)
    seen = [rows.request(i)[f"{hop_c}:terminal_id"].reshape(-1).tolist() for i in range(4)]
    assert seen == [[], [1], [1], [1, 2, 3]]  # events 2 and 3 share T0+5s: invisible to each other


def test_rows_equal_tensors_from_a_store_filled_in_another_order(plan, tx, rows):
    """Fill a store in shuffled order with every event, read as of each anchor, build tensors."""
    big = dataclasses.replace(plan, hops=tuple(dataclasses.replace(h, max_len=10_000) for h in plan.hops))
    store = MemoryWindowStore(big, horizon_ns=10**18)  # nothing is capped away: any order works
    records = tx.to_dict("records")
    rng = np.random.default_rng(1)
    items = [it for i in rng.permutation(len(records)) for it in interactions_of(plan, "transactions", records[i])]
    store.append(items)
    for i in rng.choice(len(rows), size=300, replace=False):
        row = records[int(rows.row_index[i])]
        keys = window_keys(plan, row)
        wins = dict(zip([k for k, _ in keys], store.read_many(keys, row["tx_datetime"])))
        expected = build_tensors(plan, row, wins)  # trims to the plan's max_len, newest kept
        got = rows.request(int(i))
        assert set(got) == set(expected)
        for name in expected:
            assert got[name].dtype == expected[name].dtype, name
            np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_batches_are_stack_requests_and_rows_survive_save_load(plan, rows, tmp_path):
    idx = np.arange(0, 40, 3)
    batch = rows.batch(idx)
    want = stack_requests(plan, [rows.request(int(i)) for i in idx])
    assert set(batch) == set(plan.tensor_names)
    for name in want:
        np.testing.assert_array_equal(batch[name], want[name])
    rows.save(tmp_path / "rows.npz")
    back = TrainingRows.load(tmp_path / "rows.npz", plan)
    for name in plan.tensor_names:
        np.testing.assert_array_equal(back.batch(idx)[name], batch[name])


def test_score_mask_replays_history_but_scores_only_the_mask(plan, tx, rows):
    mask = np.zeros(len(tx), bool)
    mask[len(tx) // 2:len(tx) // 2 + 50] = True
    part = replay_rows(plan, tx, score_mask=mask, progress=False)
    assert len(part) == 50
    full_pos = {int(r): i for i, r in enumerate(rows.row_index)}
    for i in range(50):
        a, b = part.request(i), rows.request(full_pos[int(part.row_index[i])])
        for name in plan.tensor_names:
            np.testing.assert_array_equal(a[name], b[name])


def test_replay_requests_equals_a_store_filled_before_the_queries(plan, tx):
    """The demo's reference scoring: history records in a store, then each live event's tensors
    as of its own time. The replay (records, not a frame; events not appended) gives the same
    tensors, in the order of the events."""
    from offline.distillation.replay import replay_requests

    records = tx.to_dict("records")
    cut = len(records) * 2 // 3
    history, events = records[:cut], records[cut:cut + 40][::-1]  # any order: results follow the input
    store = MemoryWindowStore(plan)
    store.append([a for r in history for a in interactions_of(plan, plan.fact_table, r)])
    got = replay_requests(plan, history, events, progress=False)
    assert len(got) == len(events)
    for ev, tensors in zip(events, got):
        keys = window_keys(plan, ev)
        wins = dict(zip((k for k, _ in keys), store.read_many(keys, int(ev["tx_datetime"]))))
        want = build_tensors(plan, ev, {hk: wins[hk] for hk, _ in keys})
        assert tensors.keys() == want.keys()
        for name in want:
            np.testing.assert_array_equal(tensors[name], want[name])


def test_replay_needs_candidates_for_a_ranking_plan(tx):
    from offline.distillation.replay import replay_requests

    recsys = builtin_plan("recsys")
    with pytest.raises(ValueError, match="candidates"):
        replay_requests(recsys, [], [{"household_id": 1, "transaction_timestamp": T0}], [T0])


def test_prefill_reads_a_store_holding_every_interaction(plan, tx):
    """prefill=True: the store holds every record (later ones too) before any read, as an online
    re-score sees it after ingestion committed everything; here the events are the records."""
    from offline.distillation.replay import replay_requests

    records = tx.to_dict("records")[-60:]
    store = MemoryWindowStore(plan)
    store.append([a for r in records for a in interactions_of(plan, plan.fact_table, r)])
    got = replay_requests(plan, records, records, prefill=True, progress=False)
    for ev, tensors in zip(records, got):
        keys = window_keys(plan, ev)
        wins = dict(zip((k for k, _ in keys), store.read_many(keys, int(ev["tx_datetime"]))))
        want = build_tensors(plan, ev, wins)
        for name in want:
            np.testing.assert_array_equal(tensors[name], want[name])
