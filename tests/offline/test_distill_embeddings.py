"""Point-in-time embedding lookup: the admissible snapshot window and the missing path."""
import numpy as np
import pytest

from offline.embeddings import EmbeddingError, EmbeddingTable, write_embeddings_parquet

H = 3_600 * 10**9
DAY = 24 * H
T0 = 1_522_540_800 * 10**9  # 2018-04-01


def _table(plan, tmp_path, rows):
    types = [r[0] for r in rows]
    ids = np.array([r[1] for r in rows], np.int64)
    snaps = np.array([r[2] for r in rows], np.int64)
    vecs = np.array([r[3] for r in rows], np.float32)
    path = tmp_path / "embeddings.parquet"
    write_embeddings_parquet(path, types, ids, snaps, vecs)
    return EmbeddingTable.from_parquet(path, plan)


def test_latest_admissible_snapshot_and_bounds(plan, tmp_path):
    rows = [("customers", 7, T0 + d * DAY, [float(d), 0.0]) for d in (0, 7, 14)]
    rows.append(("customers", 8, T0, [100.0, 0.0]))  # a single snapshot at day 0
    rows.append(("terminals", 7, T0 + 3 * DAY, [-1.0, -1.0]))  # same id, other entity type
    table = _table(plan, tmp_path, rows)
    max_off, min_off = plan.max_embedding_offset.ns, plan.min_embedding_offset.ns
    cases = [  # (entity, anchor, expected first component or None for missing)
        (7, T0 + 7 * DAY + min_off, 7.0),      # day 7 exactly at the freshness bound
        (7, T0 + 7 * DAY + min_off - 1, 0.0),  # 1 ns too fresh for day 7 -> day 0
        (7, T0 + 14 * DAY + 1, 7.0),           # day 0 1 ns too stale, day 14 too fresh -> day 7
        (8, T0 + max_off, 100.0),              # exactly at the staleness bound
        (8, T0 + max_off + 1, None),           # 1 ns past it -> missing
        (7, T0 + min_off - 1, None),           # before any admissible snapshot -> missing
        (9, T0 + 7 * DAY, None),               # unknown entity -> missing
    ]
    ids = np.array([c[0] for c in cases])
    anchors = np.array([c[1] for c in cases])
    vec, missing = table.lookup("customers", ids, anchors)
    assert missing.tolist() == [c[2] is None for c in cases]
    assert vec[~missing, 0].tolist() == [c[2] for c in cases if c[2] is not None]
    assert (vec[missing] == 0).all()  # the model replaces these by its learned vector (flag set)


def test_matches_bruteforce_rule(plan, tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for eid in range(20):
        for s in rng.choice(40, size=rng.integers(0, 6), replace=False):
            rows.append(("customers", eid, T0 + int(s) * DAY + int(rng.integers(0, DAY)), list(rng.normal(size=3))))
    table = _table(plan, tmp_path, rows)
    ids = rng.integers(0, 25, 500)  # includes unknown entities
    anchors = T0 + rng.integers(0, 60 * DAY, 500)
    vec, missing = table.lookup("customers", ids, anchors)
    for i in range(500):
        lo, hi = plan.embedding_snapshot_bounds(int(anchors[i]))
        ok = [r for r in rows if r[1] == ids[i] and lo <= r[2] <= hi]
        if not ok:
            assert missing[i]
        else:
            best = max(ok, key=lambda r: r[2])
            assert not missing[i]
            np.testing.assert_array_equal(vec[i], np.float32(best[3]))


def test_errors_name_the_problem(plan, tmp_path):
    table = _table(plan, tmp_path, [("customers", 1, T0, [1.0])])
    with pytest.raises(EmbeddingError, match="entity_type"):
        table.lookup("articles", [1], [T0])
    with pytest.raises(EmbeddingError, match="not found"):
        EmbeddingTable.from_parquet(tmp_path / "nope.parquet", plan)
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"entity_id": [1]}), tmp_path / "bad.parquet")
    with pytest.raises(EmbeddingError, match="entity_type: missing column"):
        EmbeddingTable.from_parquet(tmp_path / "bad.parquet", plan)
    with pytest.raises(EmbeddingError, match="duplicate snapshot"):
        _table(plan, tmp_path, [("customers", 1, T0, [1.0]), ("customers", 1, T0, [2.0])])
