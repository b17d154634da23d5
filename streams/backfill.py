"""`relstream ingest --backfill FILE.parquet`: fill the windows from history.

Rows take the live path: :meth:`RecordDecoder.row_appends` (= ``schemas.interactions.interactions_of``)
then ONE ``store.append`` per chunk, retried with backoff like a live batch. Appends are
idempotent and the final window state does not depend on arrival order, so a backfill may be
re-run or overlap with live ingestion.

Accepted inputs: the plan's own column names (timestamps as parquet timestamps or int64 ns), or
a file in one of the :class:`SourceFormat` layouts the caller passes (the app passes the layouts
its data sets are published in; this module knows none of them). A bad row stops the backfill
with an error naming the row and the field; rows before it are already in the windows
(re-running after a fix is safe).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from kafka_io.retry import Backoff, retry_until
from schemas.values import RowError
from streams.records import RecordDecoder


class BackfillError(ValueError):
    pass


@dataclass(frozen=True)
class SourceFormat:
    """A file layout other than a plan table's own columns, and how to read it as that table.

    A file is read with ``to_table`` when it is a backfill of ``table`` and has the column
    ``marker``; ``to_table(path)`` returns a pandas DataFrame with the table's columns (it may
    raise ``ValueError`` naming the bad column: the backfill then stops with that message).
    """

    name: str
    table: str
    marker: str
    to_table: Callable[[Path], Any]


@dataclass(frozen=True)
class BackfillReport:
    path: str
    table: str
    rows: int
    interactions: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict:
        return {"path": self.path, "table": self.table, "rows": self.rows, "interactions": self.interactions,
                "seconds": round(self.seconds, 3), "rows_per_s": round(self.rows_per_s, 1)}


def _timestamps_to_ns(batch: pa.RecordBatch) -> pa.RecordBatch:
    cols = []
    for col, field in zip(batch.columns, batch.schema):
        if pa.types.is_timestamp(field.type):
            col = pc.cast(col, pa.timestamp("ns", tz=field.type.tz)).cast(pa.int64())
        cols.append(col)
    return pa.RecordBatch.from_arrays(cols, names=batch.schema.names)


def read_row_chunks(path: str | Path, plan_columns: list[str], table: str, chunk_rows: int,
                    formats: Sequence[SourceFormat] = ()) -> tuple[int, Iterator[tuple[int, list[dict[str, Any]]]]]:
    """(row count, iterator of (first row index, rows)) of a parquet file."""
    path = Path(path)
    if not path.exists():
        raise BackfillError(f"--backfill: no such file {path}")
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise BackfillError(f"--backfill: {path} is not a readable parquet file: {exc}") from None
    names = pf.schema_arrow.names
    for fmt in formats:
        if fmt.table == table and fmt.marker in names:
            return _format_chunks(fmt, path, plan_columns, chunk_rows)
    columns = [c for c in plan_columns if c in names]
    if not columns:
        raise BackfillError(f"--backfill: {path} has none of the columns of table {table!r} "
                            f"({', '.join(plan_columns)}); found: {', '.join(names)}")

    def chunks():
        start = 0
        for batch in pf.iter_batches(batch_size=chunk_rows, columns=columns):
            rows = _timestamps_to_ns(batch).to_pylist()
            yield start, rows
            start += len(rows)

    return pf.metadata.num_rows, chunks()


def _format_chunks(fmt: SourceFormat, path: Path, plan_columns: list[str], chunk_rows: int):
    try:
        frame = fmt.to_table(path)
    except ValueError as exc:
        raise BackfillError(f"--backfill {path} ({fmt.name}): {exc}") from None
    frame = frame[[c for c in plan_columns if c in frame.columns]]

    def chunks():
        for start in range(0, len(frame), chunk_rows):
            yield start, frame.iloc[start:start + chunk_rows].to_dict("records")

    return len(frame), chunks()


def _no_decode(_value: bytes):
    raise AssertionError("backfill reads rows, not Kafka records")


def row_decoder(plan) -> RecordDecoder:
    """The decoder of backfill: rows only, no Kafka topics."""
    return RecordDecoder(plan, {}, decode=_no_decode, decode_errors=())


def backfill(path: str | Path, decoder: RecordDecoder, store: Any, table: str | None = None,
             chunk_rows: int = 20_000, progress: bool = True, backoff: Backoff = Backoff(),
             clock=time.perf_counter, formats: Sequence[SourceFormat] = ()) -> BackfillReport:
    """Append every row of ``path`` (a table of ``decoder.plan``, or one of ``formats``) to the windows."""
    plan = decoder.plan
    table = table or plan.fact_table
    if table not in plan.tables:
        raise BackfillError(f"--backfill-table: unknown table {table!r}; plan {plan.name!r} has {sorted(plan.tables)}")
    if chunk_rows <= 0:
        raise BackfillError(f"--chunk-rows: must be > 0, got {chunk_rows}")
    total, chunks = read_row_chunks(path, list(plan.tables[table].columns), table, chunk_rows, formats)

    t0 = clock()
    rows = interactions = 0
    with tqdm(total=total, unit="row", desc=f"backfill {Path(path).name}", disable=not progress) as bar:
        for start, chunk in chunks:
            appends = []
            for i, row in enumerate(chunk):
                try:
                    appends.extend(decoder.row_appends(table, row))
                except RowError as exc:
                    raise BackfillError(f"--backfill {path}: row {start + i}: {exc}") from None
            if appends:
                retry_until(lambda: store.append(appends), what="window store append (backfill)", backoff=backoff)
            rows += len(chunk)
            interactions += len(appends)
            bar.update(len(chunk))
    return BackfillReport(str(path), table, rows, interactions, clock() - t0)
