"""Inputs of the SQL row generation, checked and written once as Parquet both engines read.

Events (the plan's fact table: a pandas frame or a Parquet file) get three columns:
``__row`` (position in the input: what :class:`offline.distillation.replay.TrainingRows` calls ``row_index``),
``__eid`` (the event id the window store orders equal timestamps by,
:func:`schemas.values.event_id_int` of the primary key) and ``__score`` (an anchor to build a row
for). Nulls and non-finite numbers in the columns the rows read are refused here, naming the
column, instead of surfacing as an engine error deep inside a query. Timestamps become int64 ns.

Embeddings (``embeddings.parquet``, :mod:`offline.embeddings`) keep the plan's entity types, with
the vector as ``list<float32>`` (Spark has no fixed-size lists).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from offline.embeddings import EMBEDDING_COLUMNS, EmbeddingError
from offline.rows.query import EID_COL, ROW_COL, SCORE_COL
from schemas.plan import FieldError, ServingPlan
from schemas.values import event_id_int

EVENTS_FILE = "events.parquet"
SNAPSHOTS_FILE = "snapshots.parquet"


class RowsInputError(FieldError):
    """Bad input to the row generation; the message starts with the offending column."""


@dataclass(frozen=True)
class StagedEvents:
    path: Path
    n_rows: int
    anchor_times: np.ndarray  # sorted event times of the scored rows
    event_times: np.ndarray  # sorted event times of all rows


def needed_columns(plan: ServingPlan) -> list[str]:
    fact = plan.fact
    cols = [*plan.fact_columns, fact.time_column, fact.primary_key, *(c for h in plan.hops for c in h.columns)]
    return list(dict.fromkeys(c for c in cols if c))


def _typed_batch(plan: ServingPlan, batch: pa.RecordBatch, first_row: int, mask: np.ndarray) -> pa.RecordBatch:
    fact = plan.fact
    arrays, names = [], []
    for col in needed_columns(plan):
        if col not in batch.schema.names:
            raise RowsInputError(f"{fact.name}.{col}", f"missing column (the plan reads it); have {batch.schema.names}")
        arr = batch.column(col)
        if arr.null_count:
            first = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0]) + first_row
            raise RowsInputError(f"{fact.name}.{col}", f"null value (row {first}); rows need every value")
        dtype = fact.columns[col]
        if dtype == "timestamp":
            if pa.types.is_timestamp(arr.type):
                arr = pc.cast(arr, pa.timestamp("ns")).cast(pa.int64())
            elif not pa.types.is_integer(arr.type):
                raise RowsInputError(f"{fact.name}.{col}", f"expected int64 ns or a timestamp, got {arr.type}")
        elif dtype in ("float32", "float64"):
            if not (pa.types.is_floating(arr.type) or pa.types.is_integer(arr.type)):
                raise RowsInputError(f"{fact.name}.{col}", f"expected numbers, got {arr.type}")
            if pa.types.is_floating(arr.type) and not pc.all(pc.is_finite(arr)).as_py():
                raise RowsInputError(f"{fact.name}.{col}", "non-finite value (NaN or infinity)")
        elif dtype == "int64" and not pa.types.is_integer(arr.type):
            raise RowsInputError(f"{fact.name}.{col}", f"expected integers, got {arr.type}")
        arrays.append(arr)
        names.append(col)
    pk = batch.column(fact.primary_key)
    if pa.types.is_integer(pk.type):
        eid = pc.cast(pk, pa.int64())
    else:  # the store's id for non-integer keys: a stable hash (the same function)
        eid = pa.array([event_id_int(v) for v in pk.to_pylist()], pa.int64())
    n = batch.num_rows
    arrays += [pa.array(np.arange(first_row, first_row + n, dtype=np.int64)), eid, pa.array(mask)]
    names += [ROW_COL, EID_COL, SCORE_COL]
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _times_ns(values) -> np.ndarray:
    arr = pa.array(values) if not isinstance(values, (pa.Array, pa.ChunkedArray)) else values
    if pa.types.is_timestamp(arr.type):
        arr = pc.cast(arr, pa.timestamp("ns")).cast(pa.int64())
    return np.asarray(arr.to_numpy(zero_copy_only=False) if isinstance(arr, pa.Array) else arr.to_numpy())


def stage_events(plan: ServingPlan, events: pd.DataFrame | str | Path, score_mask: np.ndarray | None,
                 out_dir: Path, batch_rows: int = 1_000_000) -> StagedEvents:
    """Write the events with ``__row``, ``__eid``, ``__score`` to ``out_dir/events.parquet``.

    Only events that can be in a window of a scored event are written (event time from the
    first anchor minus ``real_time_offset`` to the last anchor), like the replay replays."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / EVENTS_FILE
    tcol = plan.fact.time_column
    if isinstance(events, pd.DataFrame):
        missing = [c for c in needed_columns(plan) if c not in events.columns]
        if missing:
            raise RowsInputError(f"{plan.fact_table}.{missing[0]}",
                                 f"missing column (the plan reads it); have {list(events.columns)}")
        table = pa.Table.from_pandas(events[needed_columns(plan)], preserve_index=False)
        batches, n_rows = table.to_batches(batch_rows), len(events)
    else:
        source = pq.ParquetFile(events)
        present = set(source.schema_arrow.names)
        batches = source.iter_batches(batch_size=batch_rows, columns=[c for c in needed_columns(plan) if c in present])
        n_rows = source.metadata.num_rows
    if score_mask is None:
        score_mask = np.ones(n_rows, bool)
    score_mask = np.asarray(score_mask, bool)
    if score_mask.shape != (n_rows,):
        raise RowsInputError("score_mask", f"expected {n_rows} flags (one per event), got shape {score_mask.shape}")
    if not score_mask.any():
        raise RowsInputError("score_mask", "no event to score")
    if tcol not in (events.columns if isinstance(events, pd.DataFrame) else source.schema_arrow.names):
        raise RowsInputError(f"{plan.fact_table}.{tcol}", "missing column (the event time)")
    all_times = _times_ns(events[tcol].to_numpy() if isinstance(events, pd.DataFrame)
                          else pq.read_table(events, columns=[tcol]).column(tcol).combine_chunks())
    anchor_t = all_times[score_mask]
    visible = (all_times >= anchor_t.min() - plan.real_time_offset.ns) & (all_times <= anchor_t.max())
    anchors, times, first, writer = [], [], 0, None
    try:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            mask = score_mask[first:first + batch.num_rows]
            typed = _typed_batch(plan, batch, first, mask)
            typed = typed.filter(pa.array(visible[first:first + batch.num_rows]))
            first += batch.num_rows
            if typed.num_rows == 0:
                continue
            t = typed.column(tcol).to_numpy()
            anchors.append(t[typed.column(SCORE_COL).to_numpy(zero_copy_only=False)])
            times.append(t)
            if writer is None:  # a scratch file read once: fast compression (Spark misreads pyarrow's lz4)
                writer = pq.ParquetWriter(path, typed.schema, compression="snappy")
            writer.write_batch(typed)
    finally:
        if writer is not None:
            writer.close()
    return StagedEvents(path, n_rows, np.sort(np.concatenate(anchors)), np.sort(np.concatenate(times)))


def stage_snapshots(plan: ServingPlan, embeddings: str | Path, out_dir: Path) -> Path:
    """The plan's entity types of ``embeddings.parquet`` with ``list<float32>`` vectors."""
    embeddings = Path(embeddings)
    if not embeddings.exists():
        raise EmbeddingError(f"embeddings file not found: {embeddings}")
    source = pq.ParquetFile(embeddings)
    for col in EMBEDDING_COLUMNS:
        if col not in source.schema_arrow.names:
            raise EmbeddingError(f"{col}: missing column in {embeddings} (has {source.schema_arrow.names})")
    types = pa.array(sorted(set(plan.embedding_entity_types)), pa.string())
    path = out_dir / SNAPSHOTS_FILE
    schema = pa.schema([("entity_type", pa.string()), ("entity_id", pa.int64()), ("snapshot_time", pa.int64()),
                        ("embedding", pa.list_(pa.float32()))])
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for batch in source.iter_batches(batch_size=500_000, columns=list(EMBEDDING_COLUMNS)):
            keep = pc.is_in(batch.column("entity_type").cast(pa.string()), value_set=types)
            batch = batch.filter(keep)
            writer.write_batch(pa.RecordBatch.from_arrays([
                batch.column("entity_type").cast(pa.string()), batch.column("entity_id").cast(pa.int64()),
                batch.column("snapshot_time").cast(pa.int64()),
                batch.column("embedding").cast(pa.list_(pa.float32()))], schema=schema))
    return path


def plan_chunks(anchor_times: np.ndarray, event_times: np.ndarray, look_back_ns: int,
                max_events: int) -> list[tuple[int, int]]:
    """Half-open anchor-time ranges ``[lo, hi)`` whose query reads about ``max_events`` events
    (those of ``[lo - look_back, hi)``: the window computation runs over all of them, so they,
    not the anchors, bound a chunk's memory). Equal timestamps stay in one chunk; a chunk holds
    at least one anchor time, and at least ``max_events / 2`` events of its own when the
    look-back alone exceeds the budget."""
    if max_events < 1:
        raise ValueError(f"chunk_events: must be >= 1, got {max_events}")
    chunks, i, n = [], 0, len(anchor_times)
    while i < n:
        lo = int(anchor_times[i])
        start = int(np.searchsorted(event_times, lo - look_back_ns, side="left"))
        # first event beyond the budget; at least half the budget is new events, so a look-back
        # longer than the budget does not shrink chunks to one instant each
        stop = max(start + max_events, int(np.searchsorted(event_times, lo, side="left")) + max_events // 2)
        cap = int(event_times[stop]) if stop < len(event_times) else int(event_times[-1]) + 1
        j = max(int(np.searchsorted(anchor_times, cap, side="left")),
                int(np.searchsorted(anchor_times, lo, side="right")))
        hi = int(anchor_times[j]) if j < n else int(anchor_times[-1]) + 1
        chunks.append((lo, hi))
        i = j
    return chunks
