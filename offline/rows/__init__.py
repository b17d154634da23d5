"""Point-in-time training rows at scale: the serving plan's window and embedding semantics as one
SQL query (DuckDB embedded by default, Spark for clusters), proven equal to the Python replay.

Entry point: :func:`build_rows`; reading back in batches: :func:`read_rows` / :func:`load_rows`.
"""

from offline.rows.build import ENGINES, build_rows
from offline.rows.query import RowsPlanError, RowsQuery
from offline.rows.stage import RowsInputError
from offline.rows.store import RowBatch, load_rows, read_manifest, read_rows

__all__ = ["ENGINES", "RowBatch", "RowsInputError", "RowsPlanError", "RowsQuery", "build_rows", "load_rows",
           "read_manifest", "read_rows"]
