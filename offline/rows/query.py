"""The plan's point-in-time semantics as one SQL query, generated from the serving plan.

One query per chunk of anchor times; DuckDB and Spark run the same text (a :class:`Dialect`
differs only in function names and identifier quoting). Inputs are two relations the executor
registers under the names it passes in:

* events (staged by :mod:`offline.rows.stage`): the fact table's columns, plus ``__row`` (the
  row's position in the caller's frame), ``__eid`` (its event id, :func:`schemas.values.event_id_int`
  of the primary key) and ``__score`` (whether the row is an anchor to build a training row for);
* snapshots: ``entity_type, entity_id, snapshot_time, embedding`` (``embeddings.parquet``).

Window of hop H (entity column c) for an anchor at T — the store's rule (``rti_store.logic.select``
over members ordered by (event time, event id)): the newest ``max_len`` interactions of the
entity with ``T - real_time_offset <= t < T``, oldest first. In SQL:

1. ``list(col) OVER (PARTITION BY c ORDER BY t, eid ROWS BETWEEN max_len PRECEDING AND 1 PRECEDING)``
   is that entity's newest ``max_len`` rows ordered before the row. For the first row of a run
   of equal timestamps they are all strictly older than T; the other rows of the run ("peers":
   ``lag(t)`` equals t) are joined to the run's first row and take its lists, so equal
   timestamps never see each other (the join runs before anchors are filtered: an unscored
   first row still serves its scored peers).
2. The lists are in time order, so the window is their suffix with ``t >= T - offset``: the last
   ``count(t >= T - offset)`` entries (``<= max_len`` by construction).

Bounded work: every row aggregates at most ``max_len`` rows, however hot the entity.

Embedding of key k (entity type E) for anchor T: the latest snapshot S of the entity with
``T - max_embedding_offset <= S <= T - min_embedding_offset``: anchors (keyed at
``T - min_embedding_offset``) and snapshots (keyed at S, ordered before anchors with the same key)
in one stream per entity; the running ``max`` of snapshot times is the latest admissible from
above; it is dropped when older than ``T - max_embedding_offset``; no snapshot -> NULL (cold start).
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.plan import ANCHOR_TIME, ServingPlan

ROW_INDEX = "row_index"
EMBEDDING_PREFIX = "embedding:"
ROW_COL, EID_COL, SCORE_COL, TIME_COL = "__row", "__eid", "__score", "__t"

_SQL_TYPES = {"int64": "BIGINT", "timestamp": "BIGINT", "float32": "FLOAT", "float64": "DOUBLE", "string": "STRING"}


class RowsPlanError(ValueError):
    """A plan the SQL row generation cannot express; the message names the field."""


@dataclass(frozen=True)
class Dialect:
    name: str
    quote_char: str
    list_agg: str  # aggregate collecting a column into a list, in frame order

    def q(self, ident: str) -> str:
        return f"{self.quote_char}{ident.replace(self.quote_char, self.quote_char * 2)}{self.quote_char}"

    def last(self, lst: str, n: str) -> str:
        """The last ``n`` entries of a list (``0 <= n <= size``)."""
        if self.name == "spark":
            return f"slice({lst}, size({lst}) - {n} + 1, {n})"
        # an empty frame aggregates to NULL in DuckDB (Spark's collect_list gives []): same rows
        return f"coalesce(list_slice({lst}, len({lst}) - {n} + 1, len({lst})), [])"

    def count_at_least(self, lst: str, bound: str) -> str:
        """How many entries of a list are ``>= bound``."""
        if self.name == "spark":
            return f"size(filter({lst}, x -> x >= {bound}))"
        return f"len(list_filter(coalesce({lst}, []), lambda x: x >= {bound}))"


DUCKDB = Dialect("duckdb", '"', "list")
SPARK = Dialect("spark", "`", "collect_list")


def embedding_column(key) -> str:
    return f"{EMBEDDING_PREFIX}{key}"


def check_plan(plan: ServingPlan) -> None:
    """Refuse plans whose windows this query does not express (the message names the field)."""
    if plan.is_ranking:
        raise RowsPlanError(f"ranking.candidate_column: plan {plan.name!r} is a ranking plan; SQL rows "
                            "are built for scoring plans (use engine='replay')")
    if plan.label_feedback is not None:
        # the known-label counts are built by the replay only, for now (engine 'auto' falls back to it)
        raise RowsPlanError(f"label_feedback: plan {plan.name!r} takes known labels as inputs; SQL rows do not "
                            "build them yet (use engine='replay')")
    fact = plan.fact
    if not fact.primary_key:
        raise RowsPlanError(f"tables.{fact.name}.primary_key: SQL rows need a primary key (the event id "
                            "that orders equal timestamps, as in the window store)")
    for hop in plan.hops:
        where = f"distillation.real_time_interactions[{hop.key.key!r}]"
        if hop.key.target.table != plan.fact_table:
            raise RowsPlanError(f"{where}: SQL rows support hops whose interactions are rows of "
                                f"{plan.fact_table!r}")
        if hop.key.target.column != hop.key.source.column:
            raise RowsPlanError(f"{where}: SQL rows support hops that key the window by the same column "
                                f"on both ends ({hop.key.source} vs {hop.key.target})")


@dataclass(frozen=True)
class RowsQuery:
    """SQL text of the training rows of one plan (see the module docstring)."""

    plan: ServingPlan
    dialect: Dialect
    with_embeddings: bool = False

    def __post_init__(self):
        check_plan(self.plan)

    def _cast(self, column: str, dtype: str) -> str:
        return f"CAST({self.dialect.q(column)} AS {_SQL_TYPES[dtype]})"

    def sql(self, events: str, snapshots: str | None, anchor_lo: int, anchor_hi: int) -> str:
        """Rows of the anchors with ``anchor_lo <= T < anchor_hi`` (one output row per anchor)."""
        plan, d, q = self.plan, self.dialect, self.dialect.q
        fact = plan.fact
        off = plan.real_time_offset.ns
        # Typed columns every later step uses: the tensors' fact columns, the hop columns, keys.
        needed = dict.fromkeys([*plan.fact_columns, *(c for h in plan.hops for c in h.columns),
                                *(h.key.source.column for h in plan.hops)])
        typed = ", ".join(f"{self._cast(c, fact.columns[c])} AS {q(c)}" for c in needed)
        ev = (f"SELECT {q(ROW_COL)}, CAST({q(EID_COL)} AS BIGINT) AS {q(EID_COL)}, {q(SCORE_COL)}, "
              f"CAST({q(fact.time_column)} AS BIGINT) AS {TIME_COL}, {typed} FROM {events} "
              f"WHERE {q(fact.time_column)} >= {anchor_lo - off} AND {q(fact.time_column)} < {anchor_hi}")

        anchor_filter = f"{TIME_COL} >= {anchor_lo} AND {q(SCORE_COL)}"
        ctes = [f"pit_events AS ({ev})",
                f"pit_anchors AS (SELECT * FROM pit_events WHERE {anchor_filter})"]
        joins, outs = [], []
        # One CTE chain per hop, carrying only that hop's columns: sorting rows that carry other
        # hops' lists is what makes a single wide query slow.
        for i, hop in enumerate(plan.hops):
            key = q(hop.key.source.column)
            cols = [f"h{i}_{j}" for j in range(len(hop.columns))]
            lists = ", ".join(f"{d.list_agg}({q(col)}) OVER w AS {c}" for col, c in zip(hop.columns, cols))
            # peer: the row before in (t, event id) order has the same timestamp, so this row's
            # frame holds a row of its own instant; such rows take the run's first row's lists.
            windowed = (f"SELECT {q(ROW_COL)}, {q(SCORE_COL)}, {TIME_COL}, {key}, "
                        f"coalesce(lag({TIME_COL}, 1) OVER o = {TIME_COL}, false) AS peer, "
                        f"{lists} FROM pit_events "
                        f"WINDOW o AS (PARTITION BY {key} ORDER BY {TIME_COL}, {q(EID_COL)}), "
                        f"w AS (PARTITION BY {key} ORDER BY {TIME_COL}, {q(EID_COL)} "
                        f"ROWS BETWEEN {hop.max_len} PRECEDING AND 1 PRECEDING)")  # lag takes no frame in Spark
            time_list = cols[hop.columns.index(plan.interaction_table(hop).time_column)]
            # the window: the list entries at or after T - offset (a suffix: lists are in time order)
            n = d.count_at_least(time_list, f"{TIME_COL} - {off}")
            sliced = ", ".join(f"{d.last(c, f'h{i}_n')} AS {c}" for c in cols)
            # The run's first row serves the scored peers even when it is not scored itself; only
            # first rows of runs that have a scored peer are joined (ties are rare: a small join).
            peers = f"SELECT {q(ROW_COL)}, {key}, {TIME_COL} FROM pit_h{i}w WHERE peer AND {anchor_filter}"
            firsts = (f"SELECT {key}, {TIME_COL}, {', '.join(cols)} FROM pit_h{i}w f WHERE NOT peer "
                      f"AND EXISTS (SELECT 1 FROM pit_h{i}q p WHERE p.{key} = f.{key} AND p.{TIME_COL} = f.{TIME_COL})")
            joined = (f"SELECT p.{q(ROW_COL)}, p.{TIME_COL}, {', '.join(f'f.{c}' for c in cols)} FROM pit_h{i}q p "
                      f"JOIN ({firsts}) f ON f.{key} = p.{key} AND f.{TIME_COL} = p.{TIME_COL}")
            own = f"SELECT {q(ROW_COL)}, {TIME_COL}, {', '.join(cols)} FROM pit_h{i}w WHERE NOT peer AND {anchor_filter}"
            ctes += [f"pit_h{i}w AS ({windowed})", f"pit_h{i}q AS ({peers})",
                     f"pit_h{i}p AS ({own} UNION ALL {joined})",
                     f"pit_h{i}n AS (SELECT {q(ROW_COL)}, {', '.join(cols)}, {n} AS h{i}_n FROM pit_h{i}p)",
                     f"pit_h{i} AS (SELECT {q(ROW_COL)}, {sliced} FROM pit_h{i}n)"]
            joins.append(f" JOIN pit_h{i} ON pit_h{i}.{q(ROW_COL)} = a.{q(ROW_COL)}")
            outs += [f"pit_h{i}.{c} AS {q(f'{hop.key.key}:{col}')}" for col, c in zip(hop.columns, cols)]

        scalars = [f"a.{q(ROW_COL)} AS {ROW_INDEX}", f"a.{TIME_COL} AS {q(ANCHOR_TIME)}",
                   *(f"a.{q(c)} AS {q(f'{plan.fact_table}.{c}')}" for c in plan.fact_columns)]
        select_from = "pit_anchors a" + "".join(joins)
        if self.with_embeddings:
            if snapshots is None:
                raise ValueError("snapshots: the query was built with embeddings but got no snapshot relation")
            for k, (ref, etype) in enumerate(zip(plan.embedding_keys, plan.embedding_entity_types)):
                ctes.append(self._embedding_cte(k, ref.column, etype, snapshots, anchor_lo, anchor_hi))
                select_from += (f" LEFT JOIN pit_e{k} e{k} ON e{k}.{q(ROW_COL)} = a.{q(ROW_COL)}"
                                f" LEFT JOIN {snapshots} s{k} ON s{k}.entity_type = '{etype}'"
                                f" AND s{k}.entity_id = e{k}.e_entity AND s{k}.snapshot_time = e{k}.e_snap")
                outs.append(f"s{k}.embedding AS {q(embedding_column(ref))}")
        select = ", ".join([*scalars, *outs])  # hop list names (h*) are unique: no prefix needed
        return f"WITH {', '.join(ctes)} SELECT {select} FROM {select_from}"

    def _embedding_cte(self, k: int, column: str, etype: str, snapshots: str, anchor_lo: int, anchor_hi: int) -> str:
        plan, q = self.plan, self.dialect.q
        lo_off, hi_off = plan.max_embedding_offset.ns, plan.min_embedding_offset.ns
        # kind 0 = snapshot, 1 = anchor: a snapshot at exactly T - min_offset is admissible.
        stream = (f"SELECT {q(column)} AS e_entity, {TIME_COL} - {hi_off} AS e_at, 1 AS e_kind, {q(ROW_COL)}, "
                  f"{TIME_COL} AS e_t, CAST(NULL AS BIGINT) AS e_snap FROM pit_anchors "
                  f"UNION ALL SELECT entity_id, snapshot_time, 0, CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), "
                  f"snapshot_time FROM {snapshots} WHERE entity_type = '{etype}' "
                  f"AND snapshot_time >= {anchor_lo - lo_off} AND snapshot_time <= {anchor_hi - hi_off}")
        latest = (f"SELECT e_entity, e_kind, {q(ROW_COL)}, e_t, max(e_snap) OVER (PARTITION BY e_entity ORDER BY e_at, e_kind "
                  f"ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS e_latest FROM ({stream}) u{k}")
        return (f"pit_e{k} AS (SELECT {q(ROW_COL)}, e_entity, CASE WHEN e_latest >= e_t - {lo_off} THEN e_latest END AS e_snap "
                f"FROM ({latest}) l{k} WHERE e_kind = 1)")
