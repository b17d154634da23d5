"""The reference window algebra (rti_store.logic) on raw packed rows: pruning a batch is exact."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from rti_store import logic
from rti_store.codec import identity

row = st.tuples(st.integers(-50, 200), st.integers(-3, 3), st.integers(0, 2)).map(
    lambda r: identity(r[0], r[1]) + bytes([r[2]]))  # (time, id) + one value byte
rows = st.lists(row, max_size=40)


@settings(max_examples=300, deadline=None)
@given(before=rows, batch=rows, max_len=st.integers(1, 6), horizon=st.one_of(st.none(), st.integers(0, 120)))
def test_pruned_batch_gives_the_same_window_and_count(before, batch, max_len, horizon):
    plain, pruned = [], []
    logic.insert(plain, before, max_len, horizon)
    logic.insert(pruned, before, max_len, horizon)
    n_plain = logic.insert(plain, batch, max_len, horizon)
    n_pruned = logic.insert(pruned, logic.prune_batch(batch, max_len, horizon), max_len, horizon)
    assert plain == pruned and n_plain == n_pruned
    assert len(logic.prune_batch(batch, max_len, horizon)) <= max(1, min(len(batch), max_len))


def test_select_is_half_open_and_capped():
    members = [identity(t, 0) for t in (10, 20, 30, 40)]
    assert logic.select(members, 20, 40, 10) == members[1:3]
    assert logic.select(members, 0, 100, 2) == members[2:]
    assert logic.select(members, 50, 40, 5) == []
