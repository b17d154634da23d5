"""Training rows on disk: partitioned Parquet, one row per scored event, read back in batches.

Layout of a rows directory::

    part-00000.parquet ...   one file (DuckDB, replay) or folder of files (Spark) per chunk of
                             anchor times, in anchor-time order; rows in ``row_index`` order
    _rows.json               manifest: plan name + fingerprint, engine, chunks, row counts

Columns: ``row_index`` (the event's position in the input), every plan tensor under its Triton
name (scalars as values, RTI tensors as lists of the actual window length, oldest first) and,
when embeddings were given, ``embedding:<fact>.<key>`` per embedding key: the vector of the
latest admissible snapshot, NULL for a cold start.

:func:`read_rows` yields :class:`RowBatch` es (a :class:`offline.distillation.replay.TrainingRows` plus the
batch's embeddings) so the trainer never holds all rows in memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from offline.distillation.replay import TrainingRows
from offline.rows.query import ROW_INDEX, embedding_column
from schemas.plan import ServingPlan

MANIFEST_FILE = "_rows.json"


@dataclass
class RowBatch:
    rows: TrainingRows
    embeddings: dict[str, tuple[np.ndarray, np.ndarray]]  # embedding key -> (vectors [B, dim], missing [B])

    def __len__(self) -> int:
        return len(self.rows)


def write_manifest(out: Path, manifest: dict) -> None:
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))


def read_manifest(out: str | Path) -> dict:
    path = Path(out) / MANIFEST_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: not a rows directory (no {MANIFEST_FILE}); build it with build_rows")
    return json.loads(path.read_text())


def _list_array(padded: np.ndarray, lengths: np.ndarray, value_type: pa.DataType) -> pa.ListArray:
    valid = np.arange(padded.shape[1])[None, :] < lengths[:, None]
    values = padded[valid]
    if value_type == pa.string():
        values = [v.decode("utf-8") for v in values]
    offsets = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, value_type))


_ARROW = {"int64": pa.int64(), "timestamp": pa.int64(), "float32": pa.float32(), "float64": pa.float64(),
          "string": pa.string()}


def rows_table(rows: TrainingRows, embeddings: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> pa.Table:
    """The Parquet layout of in-memory rows (what the replay engine writes)."""
    plan = rows.plan
    cols = {ROW_INDEX: pa.array(rows.row_index.astype(np.int64))}
    for spec in plan.tensors:
        typ = _ARROW[spec.dtype]
        if spec.kind == "rti":
            cols[spec.name] = _list_array(rows.sequences[spec.name], rows.lengths[spec.hop_key], typ)
        else:
            values = rows.scalars[spec.name]
            cols[spec.name] = pa.array([v.decode("utf-8") for v in values] if typ == pa.string() else values, typ)
    for key, (vectors, missing) in (embeddings or {}).items():
        missing = np.asarray(missing, bool)
        lengths = np.where(missing, 0, vectors.shape[1])  # a NULL list must be empty in Parquet
        offsets = np.zeros(len(vectors) + 1, np.int32)
        np.cumsum(lengths, out=offsets[1:])
        cols[key] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(vectors[~missing].reshape(-1), pa.float32()),
                                             mask=pa.array(missing))
    return pa.table(cols)


def _padded(arr: pa.Array, n: int, width: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int32)
    flat = arr.flatten()
    if dtype == "object":
        out = np.full((n, width), b"", dtype=object)
        values = np.array([v.encode("utf-8") for v in flat.to_pylist()] + [b""], dtype=object)[:-1]
    else:
        out = np.zeros((n, width), dtype=dtype)
        values = flat.to_numpy(zero_copy_only=False)
    starts = np.cumsum(lengths) - lengths
    row = np.repeat(np.arange(n), lengths)
    pos = np.arange(len(values)) - np.repeat(starts, lengths)
    out[row, pos] = values
    return out, lengths


def batch_to_rows(plan: ServingPlan, batch: pa.RecordBatch | pa.Table, embedding_dim: int | None = None) -> RowBatch:
    n = batch.num_rows
    rows = TrainingRows.allocate(plan, n)
    names = batch.schema.names
    missing = [t for t in plan.tensor_names if t not in names]
    if missing:
        raise ValueError(f"{missing[0]}: rows lack this tensor of plan {plan.name!r} (built for another plan?)")
    rows.row_index[:] = batch.column(ROW_INDEX).to_numpy(zero_copy_only=False)
    for spec in plan.tensors:
        col = batch.column(spec.name)
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if spec.kind == "rti":
            padded, lengths = _padded(col, n, plan.hop(spec.hop_key).max_len, spec.numpy_dtype)
            rows.sequences[spec.name][:] = padded
            rows.lengths[spec.hop_key][:] = lengths
        elif spec.numpy_dtype == "object":
            rows.scalars[spec.name][:] = [v.encode("utf-8") for v in col.to_pylist()]
        else:
            rows.scalars[spec.name][:] = col.to_numpy(zero_copy_only=False)
    embeddings = {}
    for ref in plan.embedding_keys:
        name = embedding_column(ref)
        if name not in names:
            continue
        col = batch.column(name)
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        absent = col.is_null().to_numpy(zero_copy_only=False)
        lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False)
        dim = embedding_dim if embedding_dim is not None else (int(lengths.max()) if n else 0)
        vectors = np.zeros((n, dim), np.float32)
        if (~absent).any():
            vectors[~absent] = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
        embeddings[name] = (vectors, absent)
    return RowBatch(rows, embeddings)


def part_files(out: str | Path) -> list[str]:
    """The rows' Parquet files in chunk order (Spark writes a folder of files per chunk)."""
    return sorted(pads.dataset(str(out), format="parquet", ignore_prefixes=[".", "_"]).files)


def read_rows(out: str | Path, plan: ServingPlan, batch_rows: int = 65_536) -> Iterator[RowBatch]:
    """Batches of at most ``batch_rows`` rows, chunk by chunk (anchor-time order)."""
    manifest = read_manifest(out)
    if manifest.get("plan_fingerprint") != plan.fingerprint():
        raise ValueError(f"{out}: rows were built for plan {manifest.get('plan')!r} "
                         f"(fingerprint {manifest.get('plan_fingerprint')}), not for {plan.name!r}")
    dim = manifest.get("embedding_dim")
    for path in part_files(out):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
            yield batch_to_rows(plan, batch, dim)


def load_rows(out: str | Path, plan: ServingPlan) -> RowBatch:
    """All rows in ``row_index`` order (for data that fits in memory: tests, small runs)."""
    manifest = read_manifest(out)
    table = pa.concat_tables([pq.read_table(p) for p in part_files(out)]) if part_files(out) else None
    if table is None:
        raise FileNotFoundError(f"{out}: no row files")
    table = table.sort_by(ROW_INDEX)
    return batch_to_rows(plan, table.combine_chunks(), manifest.get("embedding_dim"))
