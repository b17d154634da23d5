"""One entry point for point-in-time training rows, whatever the engine.

``build_rows(plan, events, embeddings, score_mask, engine, out)`` writes the rows directory of
:mod:`offline.rows.store`:

* ``engine="duckdb"`` (default): the plan's query (:mod:`offline.rows.query`) in embedded DuckDB;
* ``engine="spark"``: the same query on a Spark session (``spark=`` a session or a master URL);
* ``engine="replay"``: the Python replay through the window store
  (:func:`offline.distillation.replay.replay_rows`), the oracle the SQL engines are tested against.

All three give the same rows (tests/offline/test_rows_equal.py).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from offline.distillation.replay import replay_rows
from offline.embeddings import EmbeddingTable
from offline.rows.engines import DuckDBExecutor, SparkExecutor, part_name
from offline.rows.query import check_plan, embedding_column
from offline.rows.stage import plan_chunks, stage_events, stage_snapshots
from offline.rows.store import rows_table, write_manifest
from schemas.plan import ServingPlan

ENGINES = ("duckdb", "spark", "replay")
DEFAULT_CHUNK_EVENTS = 3_000_000


def _replay(plan: ServingPlan, events, embeddings, score_mask, out: Path, progress: bool) -> list[int]:
    frame = events if isinstance(events, pd.DataFrame) else pd.read_parquet(events)
    rows = replay_rows(plan, frame, score_mask=score_mask, progress=progress)
    vectors = {}
    if embeddings is not None:
        table = EmbeddingTable.from_parquet(embeddings, plan)
        anchors = rows.scalars["anchor_time"]
        for ref, etype in zip(plan.embedding_keys, plan.embedding_entity_types):
            ids = rows.scalars[f"{plan.fact_table}.{ref.column}"]
            vectors[embedding_column(ref)] = table.lookup(etype, ids, anchors)
    pq.write_table(rows_table(rows, vectors), out / part_name(0), compression="zstd")
    return [len(rows)]


def _embedding_dim(embeddings) -> int | None:
    field = pq.read_schema(embeddings).field("embedding").type
    if getattr(field, "list_size", None):
        return int(field.list_size)
    first = pq.ParquetFile(embeddings).read_row_group(0, columns=["embedding"]).column(0) \
        if pq.ParquetFile(embeddings).num_row_groups else None
    return len(first[0].as_py()) if first is not None and len(first) else None


def build_rows(plan: ServingPlan, events: pd.DataFrame | str | Path, embeddings: str | Path | None = None,
               score_mask: np.ndarray | None = None, engine: str = "duckdb", out: str | Path = "rows",
               chunk_events: int = DEFAULT_CHUNK_EVENTS, spark=None, duckdb_memory_limit: str | None = None,
               work_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Training rows of the scored events (``score_mask``, default all) into ``out``; returns the manifest.

    ``events`` is the plan's fact table (a frame or a Parquet file); ``row_index`` in the rows is
    a row's position in it. ``embeddings`` (``embeddings.parquet``) adds the admissible snapshot's
    vector per embedding key. ``chunk_events`` bounds the events one query reads (its anchors'
    events plus their look-back): memory follows it, not the data; one output part per chunk.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine: unknown engine {engine!r}; one of {list(ENGINES)}")
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    info: dict = {}
    if engine == "replay":
        counts, chunks = _replay(plan, events, embeddings, score_mask, out, progress), None
    else:
        check_plan(plan)  # before staging: a plan the query cannot express fails fast
        with tempfile.TemporaryDirectory(prefix="rows-stage-", dir=work_dir) as tmp:
            tmp = Path(tmp)
            staged = stage_events(plan, events, score_mask, tmp)
            snapshots = stage_snapshots(plan, embeddings, tmp) if embeddings is not None else None
            chunks = plan_chunks(staged.anchor_times, staged.event_times, plan.real_time_offset.ns, chunk_events)
            info["seconds_stage"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            if engine == "duckdb":
                executor = DuckDBExecutor(memory_limit=duckdb_memory_limit, temp_dir=tmp / "spill")
            else:
                executor = SparkExecutor(session=None if isinstance(spark, str) else spark,
                                         master=spark if isinstance(spark, str) else None)
            counts = executor.run(plan, staged.path, snapshots, chunks, out, progress=progress)
            info["seconds_query"] = time.perf_counter() - t1
            expected = [int(((staged.anchor_times >= lo) & (staged.anchor_times < hi)).sum()) for lo, hi in chunks]
            if counts != expected:
                raise RuntimeError(f"rows: chunks wrote {counts} rows, expected {expected} (one per scored event; "
                                   "duplicate snapshots of one entity at one time?)")
    manifest = {
        "plan": plan.name, "plan_fingerprint": plan.fingerprint(), "engine": engine, "rows": int(sum(counts)),
        "chunks": [{"file": part_name(i), "rows": n, **({"anchor_lo": lo, "anchor_hi": hi} if chunks else {})}
                   for i, (n, (lo, hi)) in enumerate(zip(counts, chunks or [(None, None)] * len(counts)))],
        "embeddings": [embedding_column(r) for r in plan.embedding_keys] if embeddings is not None else [],
        "embedding_dim": _embedding_dim(embeddings) if embeddings is not None else None,
        "seconds": time.perf_counter() - t0, **info,
    }
    write_manifest(out, manifest)
    return manifest
