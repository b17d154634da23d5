"""Point-in-time replay: the model inputs a request would have had, for every training row.

One replay serves every plan kind. Interactions (rows of the table the plan's hops read) are
appended in event-time order to the in-memory window store of :mod:`rti_store` through
:func:`schemas.interactions.interactions_of`; each query (a fact row and its anchor time) is read
once every interaction strictly before its anchor has been appended (``window_keys`` +
``read_many``) and its tensors are built by :func:`schemas.tensors.build_tensors` -- the calls the
online scorer makes, so online and offline tensors are equal by construction.

Queries with equal anchors are read together, before any interaction at that instant is
appended: they never see each other (the store's half-open bounds ``[T - real_time_offset, T)``
would hide them anyway; reading first also keeps the store's count cap from evicting an older
row that is still visible at T).

* Scoring plans: :func:`replay_rows` -- every scored event of a fact table that is also the
  hops' interaction table, anchored at its own time.
* Ranking plans: :func:`replay_ranking_rows` -- one query per ranking example (entity, anchor,
  targets), with the candidates chosen by a callback that sees the example's windows.
* Any caller: :func:`replay_requests` -- the per-query tensors, in query order; with
  ``prefill=True`` the store first holds every given interaction, as an online re-score sees it
  (the demo's parity reference).

Label feedback (plans with ``label_feedback``): the label table is one more hop table. Its rows
are the label events, ordered by the time each label became known (given, or the fact's time +
``delay``: :func:`schemas.interactions.with_known_time`), so a query at T reads exactly the labels
known strictly before T. Without a label table the replay derives it from the fact rows' labels
(:func:`label_rows`): every fact is labelled, known at its time + ``delay``.

Rows are :class:`TrainingRows`; ``batch(idx)`` stacks them with
:func:`schemas.tensors.stack_requests`, exactly what the Triton model does with the requests of
one ``execute()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from rti_store import MemoryWindowStore
from schemas.interactions import Window, interactions_of, window_keys, with_known_time
from schemas.plan import ServingPlan
from schemas.tensors import PAD_CANDIDATE, anchor_time_of, build_tensors, stack_requests
from schemas.values import to_ns

# candidates(i, windows) -> (candidate ids, their labels): the candidates of query i, chosen with
# its windows as of the anchor (nothing later).
CandidateFn = Callable[[int, Mapping[str, Window]], tuple[Sequence[Any], Sequence[float]]]
EXAMPLE_COLUMNS = ("anchor_time", "targets")


@dataclass
class TrainingRows:
    """Per-query model inputs as built by ``build_tensors``, kept padded.

    RTI tensors are ``[N, max_len]`` (left-aligned, oldest first) with ``lengths[hop]``; ranking
    plans also keep ``candidates`` ``[N, C]`` (padded with ``PAD_CANDIDATE``), ``n_candidates``
    and per-candidate ``labels`` (1 = target). ``request(i)`` gives back query i's tensors in the
    seed's shapes, equal to what ``build_tensors`` returned; ``batch(idx)`` stacks them.
    """

    plan: ServingPlan
    row_index: np.ndarray  # [N] the caller's index of each row (frame position)
    scalars: dict[str, np.ndarray]  # anchor + fact tensors (not the candidates), [N]
    sequences: dict[str, np.ndarray]  # RTI tensors, [N, max_len]
    lengths: dict[str, np.ndarray]  # hop key -> [N] actual seq_len
    candidates: np.ndarray | None = None  # [N, C] (ranking plans)
    n_candidates: np.ndarray | None = None  # [N]
    labels: np.ndarray | None = None  # [N, C] float32

    def __len__(self) -> int:
        return len(self.row_index)

    @classmethod
    def allocate(cls, plan: ServingPlan, n: int, max_candidates: int = 0) -> "TrainingRows":
        scalars, sequences = {}, {}
        for spec in plan.tensors:
            if spec.kind == "rti":
                shape = (n, plan.hop(spec.hop_key).max_len)
                sequences[spec.name] = (np.full(shape, b"", dtype=object) if spec.numpy_dtype == "object"
                                        else np.zeros(shape, dtype=spec.numpy_dtype))
            elif spec.kind != "candidate":
                scalars[spec.name] = (np.empty(n, dtype=object) if spec.numpy_dtype == "object"
                                      else np.zeros(n, dtype=spec.numpy_dtype))
        lengths = {h: np.zeros(n, np.int32) for h in plan.hop_keys}
        rows = cls(plan, np.zeros(n, np.int64), scalars, sequences, lengths)
        if plan.is_ranking:
            rows.candidates = np.full((n, max_candidates), PAD_CANDIDATE, np.int64)
            rows.n_candidates = np.zeros(n, np.int32)
            rows.labels = np.zeros((n, max_candidates), np.float32)
        return rows

    def put(self, i: int, row_index: int, tensors: Mapping[str, np.ndarray], labels: Sequence[float] = ()) -> None:
        self.row_index[i] = row_index
        for spec in self.plan.tensors:
            arr = np.asarray(tensors[spec.name]).reshape(-1)
            if spec.kind == "rti":
                self.sequences[spec.name][i, :len(arr)] = arr
                self.lengths[spec.hop_key][i] = len(arr)
            elif spec.kind == "candidate":
                if len(arr) > self.candidates.shape[1]:
                    raise ValueError(f"{spec.name}: {len(arr)} candidates > room for {self.candidates.shape[1]}")
                self.candidates[i, :len(arr)] = arr
                self.n_candidates[i] = len(arr)
                self.labels[i, :len(arr)] = labels
            else:
                self.scalars[spec.name][i] = arr[0]

    def request(self, i: int) -> dict[str, np.ndarray]:
        out = {}
        for spec in self.plan.tensors:
            if spec.kind == "rti":
                n = int(self.lengths[spec.hop_key][i])
                out[spec.name] = self.sequences[spec.name][i, :n].reshape(1, n, 1)
            elif spec.kind == "candidate":
                n = int(self.n_candidates[i])
                out[spec.name] = self.candidates[i, :n].reshape(1, n, 1)
            else:
                out[spec.name] = self.scalars[spec.name][i:i + 1].reshape(1, 1)
        return out

    def batch(self, idx: Sequence[int]) -> dict[str, np.ndarray]:
        return stack_requests(self.plan, [self.request(int(i)) for i in idx])

    def take(self, idx) -> "TrainingRows":
        idx = np.asarray(idx)

        def pick(a):
            return None if a is None else a[idx]
        return TrainingRows(self.plan, self.row_index[idx], {k: v[idx] for k, v in self.scalars.items()},
                            {k: v[idx] for k, v in self.sequences.items()}, {k: v[idx] for k, v in self.lengths.items()},
                            pick(self.candidates), pick(self.n_candidates), pick(self.labels))

    def save(self, path: str | Path) -> None:
        def plain(v):  # strings as fixed-width bytes: loadable without pickle
            return v.astype("S") if v.dtype == object else v

        arrays = {"row_index": self.row_index}
        arrays.update({f"s|{k}": plain(v) for k, v in self.scalars.items()})
        arrays.update({f"q|{k}": plain(v) for k, v in self.sequences.items()})
        arrays.update({f"l|{k}": v for k, v in self.lengths.items()})
        if self.candidates is not None:
            arrays.update(candidates=self.candidates, n_candidates=self.n_candidates, labels=self.labels)
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: str | Path, plan: ServingPlan) -> "TrainingRows":
        z = np.load(path, allow_pickle=False)

        def back(v):
            return v.astype(object) if v.dtype.kind == "S" else v

        scalars = {k[2:]: back(z[k]) for k in z.files if k.startswith("s|")}
        sequences = {k[2:]: back(z[k]) for k in z.files if k.startswith("q|")}
        lengths = {k[2:]: z[k] for k in z.files if k.startswith("l|")}
        missing = [t.name for t in plan.tensors
                   if t.kind != "candidate" and t.name not in scalars and t.name not in sequences]
        if missing or plan.is_ranking != ("candidates" in z.files):
            what = repr(missing[0]) if missing else "candidates"
            raise ValueError(f"{path}: rows lack tensor {what} of plan {plan.name!r} (built for another plan?)")
        extra = [z[k] for k in ("candidates", "n_candidates", "labels")] if plan.is_ranking else []
        return cls(plan, z["row_index"], scalars, sequences, lengths, *extra)


# ----- the replay ------------------------------------------------------------------------------

def _interaction_tables(plan: ServingPlan) -> tuple[str, ...]:
    """The tables whose rows feed the windows (what the replay appends); the fact table if none."""
    return tuple(sorted({hop.key.target.table for hop in plan.stored_hops})) or (plan.fact_table,)


def label_rows(plan: ServingPlan, facts: pd.DataFrame) -> pd.DataFrame:
    """The label table of a plan with label feedback, from fact rows that carry the label: one
    label per fact, known at the fact's time + ``label_feedback.delay`` (what the label stream
    of a deployment with a constant delay carries)."""
    fb = plan.label_feedback
    if fb is None:
        raise ValueError(f"plan {plan.name!r} has no label_feedback")
    spec = plan.tables[fb.table]
    missing = [c for c in spec.columns if c != spec.time_column and c not in facts.columns]
    if missing:
        raise ValueError(f"facts.{missing[0]}: missing column (the label table {fb.table!r} needs it)")
    out = facts[[c for c in spec.columns if c != spec.time_column]].copy()
    out[spec.time_column] = facts[plan.fact.time_column].to_numpy(np.int64) + fb.delay.ns
    return out[list(spec.columns)]


def _known_times(plan: ServingPlan, table: str, interactions):
    """Label rows with every known time filled in (:func:`with_known_time`); others unchanged."""
    fb = plan.label_feedback
    if fb is None or table != fb.table:
        return interactions
    known, fact_time = plan.tables[table].time_column, plan.fact.time_column
    if isinstance(interactions, pd.DataFrame):
        if known not in interactions.columns:
            interactions = interactions.assign(**{known: pd.Series([None] * len(interactions), dtype=object,
                                                                   index=interactions.index)})
        col = interactions[known]
        if not col.isna().any():
            return interactions
        filled = [to_ns(v, f"{table}.{known}") if v is not None and not pd.isna(v) else
                  to_ns(t, f"{table}.{fact_time}") + fb.delay.ns
                  for v, t in zip(col.astype(object).tolist(), interactions[fact_time].tolist())]
        return interactions.assign(**{known: np.asarray(filled, np.int64)})
    return [with_known_time(plan, r) for r in interactions]


Interactions = pd.DataFrame | Sequence[Mapping]


def _by_table(plan: ServingPlan, interactions: Interactions | Mapping[str, Interactions]) -> dict[str, Interactions]:
    """``interactions`` per hop table: a mapping table -> rows, or the rows of the one hop table."""
    tables = _interaction_tables(plan)
    if isinstance(interactions, Mapping):
        missing = [t for t in tables if t not in interactions]
        if missing:
            raise ValueError(f"interactions: no rows of {missing} given; the hops read {list(tables)}")
        return {t: interactions[t] for t in tables}
    if len(tables) > 1:
        raise ValueError(f"interactions: the hops read {list(tables)}; give their rows as a mapping table -> rows")
    return {tables[0]: interactions}


def _interaction_records(plan: ServingPlan, table: str, interactions, facts: Sequence[Mapping],
                         lo: int, hi: int) -> tuple[list[dict], np.ndarray]:
    """Interaction records with ``lo <= time < hi`` that some query can read, time-sorted (ties:
    primary key, else input order); and their times."""
    spec = plan.tables[table]
    tcol = spec.time_column
    if isinstance(interactions, pd.DataFrame):
        times = interactions[tcol].to_numpy(np.int64)
        keep = (times >= lo) & (times < hi)
        if plan.stored_hops:  # windows are per entity: rows of entities no query reads are never read
            needed = np.zeros(len(interactions), bool)
            for hop in plan.stored_hops:
                if hop.key.target.table != table:
                    continue
                ids = {f[hop.key.source.column] for f in facts}
                needed |= interactions[hop.key.target.column].isin(ids).to_numpy()
            keep &= needed
        frame = interactions[keep]
        keys = [frame[spec.primary_key].to_numpy()] if spec.primary_key else []
        order = np.lexsort((np.arange(len(frame)), *keys, times[keep]))
        columns = list(plan.interaction_columns.get(table, ()))
        values = [frame[c].to_numpy()[order].tolist() for c in columns]
        return [dict(zip(columns, vals)) for vals in zip(*values)], times[keep][order]
    records = [r for r in interactions if lo <= to_ns(r[tcol], f"{table}.{tcol}") < hi]
    times = np.asarray([to_ns(r[tcol], f"{table}.{tcol}") for r in records], np.int64)
    order = np.argsort(times, kind="stable")
    return [records[i] for i in order], times[order]


def replay(plan: ServingPlan, interactions: Interactions | Mapping[str, Interactions], facts: Sequence[Mapping],
           anchors: Sequence[int] | None = None, *, candidates: CandidateFn | None = None, prefill: bool = False,
           store_factory: Callable | None = None, progress: bool = True,
           desc: str = "replay") -> Iterator[tuple[int, dict[str, np.ndarray], Sequence[float]]]:
    """``(i, tensors, labels)`` for each query i (``facts[i]`` as of ``anchors[i]``), in anchor order.

    ``interactions``: rows of the hops' interaction table (a frame or records), or a mapping
    table -> rows when the hops read several tables; only rows that can be visible to some query
    are appended. ``anchors`` default to each fact row's own event
    time. Ranking plans need ``candidates`` (see :data:`CandidateFn`); ``labels`` are what it
    returned next to the ids (empty for scoring plans).

    ``prefill``: append every interaction before the first read -- the store as an online
    re-score reads it once ingestion has committed everything, later rows included (they are
    outside ``[T - real_time_offset, T)``, but the store's count cap may already have evicted an
    older row for them). Default: only the interactions strictly before each anchor, the
    point-in-time rows a model trains on.
    """
    n = len(facts)
    if n == 0:
        raise ValueError("facts: no query to replay")
    if plan.is_ranking and candidates is None:
        raise ValueError(f"candidates: plan {plan.name!r} ranks candidates; give a candidate function")
    anchors = (np.asarray([anchor_time_of(plan, f) for f in facts], np.int64) if anchors is None
               else np.asarray(anchors, np.int64))
    if anchors.shape != (n,):
        raise ValueError(f"anchors: {anchors.shape[0]} anchors for {n} fact rows")
    lo = int(anchors.min()) - plan.lookback_ns
    if prefill:
        lo, hi = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    else:
        hi = int(anchors.max())
    # Rows of every hop table in one time order; a hop reads one table, so the order between
    # tables at equal times changes no window.
    records, times, tables = [], [], []
    for t, rows in _by_table(plan, interactions).items():
        recs, ts = _interaction_records(plan, t, _known_times(plan, t, rows), facts, lo, hi)
        records.extend(recs)
        times.append(ts)
        tables.extend([t] * len(recs))
    times = np.concatenate(times)
    merged = np.argsort(times, kind="stable")
    records, tables, times = [records[j] for j in merged], [tables[j] for j in merged], times[merged]
    store = (store_factory or MemoryWindowStore)(plan)
    order = np.argsort(anchors, kind="stable")
    bounds = np.flatnonzero(np.diff(anchors[order])) + 1
    n_hops = len(plan.stored_hops)  # windows per query: RTI hops and label keys (window_keys)
    pos = 0
    bar = tqdm(total=n, desc=desc, unit="row", disable=not progress, mininterval=1.0)
    try:
        for group in np.split(order, bounds):
            T = int(anchors[group[0]])
            end = len(records) if prefill else int(np.searchsorted(times, T, side="left"))
            if end > pos:  # every interaction strictly before T, nothing at or after it
                items = []
                for rec, t in zip(records[pos:end], tables[pos:end]):
                    items.extend(interactions_of(plan, t, rec))
                store.append(items)
                pos = end
            keys = []
            for i in group:
                keys.extend(window_keys(plan, facts[i]))
            windows = store.read_many(keys, [T] * len(keys))
            for k, i in enumerate(group.tolist()):
                wins = {hk: w for (hk, _), w in zip(keys[k * n_hops:(k + 1) * n_hops],
                                                    windows[k * n_hops:(k + 1) * n_hops])}
                labels: Sequence[float] = ()
                ids = None
                if candidates is not None:
                    ids, labels = candidates(i, wins)
                yield i, build_tensors(plan, facts[i], wins, anchor_time=T,
                                       candidates=None if ids is None else list(ids)), labels
            bar.update(len(group))
    finally:
        bar.close()
        store.close()


def replay_requests(plan: ServingPlan, interactions: pd.DataFrame | Sequence[Mapping], facts: Sequence[Mapping],
                    anchors: Sequence[int] | None = None, **kwargs) -> list[dict[str, np.ndarray]]:
    """The tensors of every query, in the order of ``facts`` (see :func:`replay`)."""
    out: list[dict | None] = [None] * len(facts)
    for i, tensors, _ in replay(plan, interactions, facts, anchors, **kwargs):
        out[i] = tensors
    return out


def build_rows(plan: ServingPlan, interactions: pd.DataFrame | Sequence[Mapping], facts: Sequence[Mapping],
               anchors: Sequence[int] | None = None, *, row_index: Sequence[int] | None = None,
               max_candidates: int = 0, **kwargs) -> TrainingRows:
    """:class:`TrainingRows` of the queries (see :func:`replay`), in the order of ``facts``."""
    rows = TrainingRows.allocate(plan, len(facts), max_candidates)
    index = np.arange(len(facts)) if row_index is None else np.asarray(row_index, np.int64)
    for i, tensors, labels in replay(plan, interactions, facts, anchors, **kwargs):
        rows.put(i, int(index[i]), tensors, labels)
    return rows


def _records(frame: pd.DataFrame, columns: Sequence[str]) -> list[dict]:
    cols = {c: frame[c].to_numpy().tolist() for c in columns}
    return [dict(zip(cols, vals)) for vals in zip(*cols.values())]


def replay_rows(plan: ServingPlan, events: pd.DataFrame, score_mask: np.ndarray | None = None,
                progress: bool = True, store_factory: Callable | None = None,
                other_tables: Mapping[str, pd.DataFrame] | None = None) -> TrainingRows:
    """Rows of the scored events (``score_mask``; default all) of a scoring plan, point-in-time.

    ``events`` is the plan's fact table; hops that read other tables (a second fact table, e.g.
    logins next to payments) get their rows from ``other_tables``. With label feedback the label
    table is ``other_tables[<label table>]`` if given, else :func:`label_rows` of ``events``.
    Rows are in the order of the frame; ``row_index`` is the position.
    """
    score_mask = np.ones(len(events), bool) if score_mask is None else np.asarray(score_mask, bool)
    if not score_mask.any():
        raise ValueError("score_mask: no event to score")
    interactions = {**(other_tables or {}), plan.fact_table: events}
    fb = plan.label_feedback
    if fb is not None and fb.table not in interactions:
        interactions[fb.table] = label_rows(plan, events)
    scored = np.flatnonzero(score_mask)
    facts = _records(events.iloc[scored], list(plan.fact.columns))
    return build_rows(plan, interactions, facts, events[plan.fact.time_column].to_numpy(np.int64)[scored],
                      row_index=scored, progress=progress, store_factory=store_factory)


def check_examples(plan: ServingPlan, examples: pd.DataFrame) -> None:
    for col in (*EXAMPLE_COLUMNS, *(hop.key.source.column for hop in plan.hops)):
        if col not in examples.columns:
            raise ValueError(f"examples.{col}: missing column (have {list(examples.columns)})")
    if len(examples) == 0:
        raise ValueError("examples: no ranking example")


def replay_ranking_rows(plan: ServingPlan, interactions: pd.DataFrame, examples: pd.DataFrame,
                        choose: Callable[[int, Any, Mapping[str, Window]], tuple[Sequence[Any], Sequence[float]]],
                        max_candidates: int, progress: bool = True, store_factory: Callable | None = None,
                        desc: str = "replay") -> TrainingRows:
    """Rows of ranking ``examples`` (columns ``anchor_time``, ``targets`` and each hop's entity
    column, e.g. ``household_id``), point-in-time, in the order of the frame.

    ``choose(i, example, windows)`` returns the candidates of example i and their labels; it
    sees the example and its windows as of the anchor (nothing later).
    """
    check_examples(plan, examples)
    records = examples.reset_index(drop=True)
    keys = list(dict.fromkeys(hop.key.source.column for hop in plan.hops))
    facts = _records(records, keys)
    return build_rows(plan, interactions, facts, records["anchor_time"].to_numpy(np.int64),
                      max_candidates=max_candidates, candidates=lambda i, w: choose(i, records.iloc[i], w),
                      progress=progress, store_factory=store_factory, desc=desc)


__all__ = ["CandidateFn", "TrainingRows", "build_rows", "check_examples", "label_rows", "replay", "replay_ranking_rows",
           "replay_requests", "replay_rows"]
