"""Executors of :class:`offline.rows.query.RowsQuery`: DuckDB (embedded, the default) and Spark.

Both read the staged Parquet inputs, run the same SQL text per chunk of anchor times and write
one Parquet part per chunk, rows in ``row_index`` order. A chunk only reads the events of
``[chunk start - real_time_offset, chunk end)``, so memory is bounded by the chunk size, not by
the data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from offline.rows.query import DUCKDB, ROW_INDEX, SPARK, RowsQuery
from schemas.plan import ServingPlan

EVENTS_VIEW, SNAPSHOTS_VIEW = "rows_events", "rows_snapshots"


def part_name(i: int) -> str:
    return f"part-{i:05d}.parquet"


def written_rows(part: Path) -> int:
    """Rows of one written part (a file, or Spark's folder of files), from Parquet metadata."""
    import pyarrow.dataset as pads

    return int(pads.dataset(str(part), format="parquet", ignore_prefixes=[".", "_"]).count_rows())


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")


class DuckDBExecutor:
    """Runs the rows query in an embedded DuckDB (spills to ``temp_dir`` beyond ``memory_limit``)."""

    name = "duckdb"

    def __init__(self, threads: int | None = None, memory_limit: str | None = None, temp_dir: str | Path | None = None):
        self.threads, self.memory_limit, self.temp_dir = threads, memory_limit, temp_dir

    def run(self, plan: ServingPlan, events: Path, snapshots: Path | None, chunks: Sequence[tuple[int, int]],
            out: Path, progress: bool = True) -> list[int]:
        import duckdb

        query = RowsQuery(plan, DUCKDB, with_embeddings=snapshots is not None)
        con = duckdb.connect()
        try:
            if self.threads:
                con.execute(f"SET threads = {int(self.threads)}")
            if self.memory_limit:
                con.execute(f"SET memory_limit = '{self.memory_limit}'")
            if self.temp_dir:
                con.execute(f"SET temp_directory = '{_sql_path(Path(self.temp_dir))}'")
            con.execute("SET preserve_insertion_order = false")  # the COPY below orders explicitly
            con.execute(f"CREATE VIEW {EVENTS_VIEW} AS SELECT * FROM read_parquet('{_sql_path(events)}')")
            if snapshots is not None:
                con.execute(f"CREATE VIEW {SNAPSHOTS_VIEW} AS SELECT * FROM read_parquet('{_sql_path(snapshots)}')")
            counts = []
            for i, (lo, hi) in enumerate(tqdm(chunks, desc="rows (duckdb)", unit="chunk", disable=not progress)):
                sql = query.sql(EVENTS_VIEW, SNAPSHOTS_VIEW if snapshots is not None else None, lo, hi)
                target = _sql_path(out / part_name(i))
                n = con.execute(f"COPY ({sql} ORDER BY {ROW_INDEX}) TO '{target}' "
                                f"(FORMAT parquet, COMPRESSION zstd)").fetchone()[0]
                counts.append(int(n))
            return counts
        finally:
            con.close()


def local_spark_session(master: str = "local[2]", shuffle_partitions: int = 4, driver_memory: str = "2g",
                        app_name: str = "relstream-rows"):
    """A small local Spark session (UI off, few shuffle partitions: starts in seconds)."""
    from pyspark.sql import SparkSession

    return (SparkSession.builder.master(master).appName(app_name)
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
            .config("spark.driver.memory", driver_memory)
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.adaptive.enabled", "true")
            .getOrCreate())


class SparkExecutor:
    """Runs the rows query on a Spark session (local in tests; any cluster via its master URL).

    Paths must be readable and writable by the executors (a shared file system or object store
    on a cluster)."""

    name = "spark"

    def __init__(self, session=None, master: str | None = None):
        self._session, self.master = session, master

    def session(self):
        if self._session is None:
            self._session = local_spark_session(self.master or "local[2]")
        return self._session

    def run(self, plan: ServingPlan, events: Path, snapshots: Path | None, chunks: Sequence[tuple[int, int]],
            out: Path, progress: bool = True) -> list[int]:
        spark = self.session()
        query = RowsQuery(plan, SPARK, with_embeddings=snapshots is not None)
        spark.read.parquet(str(events)).createOrReplaceTempView(EVENTS_VIEW)
        if snapshots is not None:
            spark.read.parquet(str(snapshots)).createOrReplaceTempView(SNAPSHOTS_VIEW)
        counts = []
        for i, (lo, hi) in enumerate(tqdm(chunks, desc="rows (spark)", unit="chunk", disable=not progress)):
            frame = spark.sql(query.sql(EVENTS_VIEW, SNAPSHOTS_VIEW if snapshots is not None else None, lo, hi))
            # one ordered file per chunk: the reader streams chunks in anchor-time order
            frame = frame.repartition(1).sortWithinPartitions(ROW_INDEX)
            frame.write.mode("overwrite").option("compression", "zstd").parquet(str(out / part_name(i)))
            counts.append(written_rows(out / part_name(i)))
        return counts
