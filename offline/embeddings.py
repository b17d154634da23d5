"""Point-in-time lookup of the deep model's entity embeddings (``embeddings.parquet``).

One implementation, used by distillation (training rows) and inside the exported Triton model
(vendored into the bundle), so offline and online pick the same snapshot for the same request.

File format (written by ``offline/models/embed.py``, schema :func:`embedding_schema`): one row per (entity, snapshot) with columns
``entity_type`` (string: the entity table, e.g. ``customers``), ``entity_id`` int64,
``snapshot_time`` int64 ns (the snapshot used only data strictly older than it) and
``embedding`` fixed_size_list<float32>[dim].

Rule (see :meth:`schemas.plan.ServingPlan.embedding_snapshot_bounds`): for anchor time T the
admissible snapshot is the latest S with ``T - max_embedding_offset <= S <= T - min_embedding_offset``.
No admissible snapshot (unknown entity, too old, too fresh) -> ``missing=True``; the model then
uses a learned "no embedding" vector plus a flag, never a silent zero.

Only numpy, pyarrow and :mod:`schemas.plan` are imported: the bundle runs in a stock Triton
Python backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

EMBEDDING_COLUMNS = ("entity_type", "entity_id", "snapshot_time", "embedding")


class EmbeddingError(ValueError):
    """A bad embeddings file or lookup; the message names the column or entity type."""


@dataclass
class _EntityIndex:
    """Snapshots of one entity type, sorted by (entity, snapshot time), searchable in one call."""

    ids: np.ndarray  # sorted distinct entity ids
    snap_values: np.ndarray  # sorted distinct snapshot times (the rank table)
    composite: np.ndarray  # sorted entity_index * (n_snaps + 1) + snapshot rank, one per row
    snapshot: np.ndarray  # int64 snapshot time per row (same order as composite)
    vectors: np.ndarray  # float32 [rows, dim] (same order)

    @classmethod
    def build(cls, ids: np.ndarray, snaps: np.ndarray, vectors: np.ndarray) -> "_EntityIndex":
        uniq = np.unique(ids)
        snap_values = np.unique(snaps)
        ent = np.searchsorted(uniq, ids)
        rank = np.searchsorted(snap_values, snaps)
        composite = ent.astype(np.int64) * (len(snap_values) + 1) + rank
        order = np.argsort(composite, kind="stable")
        composite = composite[order]
        if len(composite) > 1 and (np.diff(composite) == 0).any():
            dup = int(np.flatnonzero(np.diff(composite) == 0)[0])
            raise EmbeddingError(f"snapshot_time: duplicate snapshot for entity_id {int(ids[order][dup])}")
        return cls(uniq, snap_values, composite, snaps[order].astype(np.int64),
                   np.ascontiguousarray(vectors[order], dtype=np.float32))

    def lookup(self, ids: np.ndarray, lo: np.ndarray, hi: np.ndarray, dim: int):
        n = len(ids)
        out = np.zeros((n, dim), np.float32)
        if len(self.ids) == 0 or n == 0:
            return out, np.ones(n, bool)
        ent = np.searchsorted(self.ids, ids)
        ent_c = np.minimum(ent, len(self.ids) - 1)
        known = self.ids[ent_c] == ids
        # Rows of the entity with snapshot <= hi end right before this composite value.
        n_le = np.searchsorted(self.snap_values, hi, side="right")
        pos = np.searchsorted(self.composite, ent_c.astype(np.int64) * (len(self.snap_values) + 1) + n_le,
                              side="left") - 1
        pos_c = np.maximum(pos, 0)
        same_entity = (pos >= 0) & (self.composite[pos_c] // (len(self.snap_values) + 1) == ent_c)
        found = known & same_entity & (self.snapshot[pos_c] >= lo) & (self.snapshot[pos_c] <= hi)
        out[found] = self.vectors[pos_c[found]]
        return out, ~found


class EmbeddingTable:
    """Entity embeddings by entity type, looked up point-in-time for batches of anchors."""

    def __init__(self, plan, dim: int, indexes: dict[str, _EntityIndex]):
        self.plan = plan
        self.dim = int(dim)
        self._indexes = indexes

    # ----- construction ----------------------------------------------------------------------
    @classmethod
    def from_arrays(cls, plan, entity_type, entity_id, snapshot_time, vectors) -> "EmbeddingTable":
        entity_type = np.asarray(entity_type, dtype=object)
        entity_id = np.asarray(entity_id, dtype=np.int64)
        snapshot_time = np.asarray(snapshot_time, dtype=np.int64)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise EmbeddingError(f"embedding: expected a [rows, dim] matrix, got shape {vectors.shape}")
        if not (len(entity_type) == len(entity_id) == len(snapshot_time) == len(vectors)):
            raise EmbeddingError("entity_type/entity_id/snapshot_time/embedding: columns differ in length")
        if not np.isfinite(vectors).all():
            raise EmbeddingError("embedding: non-finite values")
        wanted = plan.embedding_entity_types
        indexes = {}
        for etype in dict.fromkeys(wanted):
            sel = entity_type == etype
            indexes[etype] = _EntityIndex.build(entity_id[sel], snapshot_time[sel], vectors[sel])
        return cls(plan, vectors.shape[1], indexes)

    @classmethod
    def from_parquet(cls, path: str | Path, plan) -> "EmbeddingTable":
        import pyarrow.parquet as pq

        path = Path(path)
        if not path.exists():
            raise EmbeddingError(f"embeddings file not found: {path}")
        table = pq.read_table(path)
        for col in EMBEDDING_COLUMNS:
            if col not in table.column_names:
                raise EmbeddingError(f"{col}: missing column in {path} (has {table.column_names})")
        emb = table.column("embedding").combine_chunks()
        dim = getattr(emb.type, "list_size", None)
        if dim is None:
            raise EmbeddingError(f"embedding: expected fixed_size_list<float32>[dim], got {emb.type}")
        flat = emb.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        vectors = flat.reshape(len(emb), dim)
        return cls.from_arrays(
            plan,
            table.column("entity_type").to_numpy(zero_copy_only=False).astype(object),
            table.column("entity_id").to_numpy(zero_copy_only=False).astype(np.int64),
            table.column("snapshot_time").to_numpy(zero_copy_only=False).astype(np.int64),
            vectors,
        )

    # ----- queries -----------------------------------------------------------------------------
    @property
    def entity_types(self) -> tuple[str, ...]:
        return tuple(self._indexes)

    def lookup(self, entity_type: str, ids, anchor_times) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors float32[n, dim], missing bool[n])`` for entities at their anchor times."""
        if entity_type not in self._indexes:
            raise EmbeddingError(f"entity_type: no embeddings indexed for {entity_type!r}; have {list(self._indexes)}")
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        anchor = np.asarray(anchor_times, dtype=np.int64).reshape(-1)
        if ids.shape != anchor.shape:
            raise EmbeddingError(f"ids and anchor_times differ in length: {ids.shape} vs {anchor.shape}")
        lo, hi = self.plan.embedding_snapshot_bounds(anchor)  # the contract's closed interval
        return self._indexes[entity_type].lookup(ids, lo, hi, self.dim)


def embedding_schema(dim: int):
    """The ``embeddings.parquet`` columns (:data:`EMBEDDING_COLUMNS`) as a pyarrow schema."""
    import pyarrow as pa

    return pa.schema([("entity_type", pa.string()), ("entity_id", pa.int64()), ("snapshot_time", pa.int64()),
                      ("embedding", pa.list_(pa.float32(), dim))])


def write_embeddings_parquet(path: str | Path, entity_type, entity_id, snapshot_time, vectors) -> None:
    """Write the ``embeddings.parquet`` format (used by tests and the untrained export)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    vectors = np.asarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    emb = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim)
    table = pa.Table.from_arrays([
        pa.array([str(t) for t in entity_type], pa.string()),
        pa.array(np.asarray(entity_id, np.int64), pa.int64()),
        pa.array(np.asarray(snapshot_time, np.int64), pa.int64()),
        emb,
    ], schema=embedding_schema(dim))
    pq.write_table(table, path)


def random_embeddings(plan, ids_by_type: dict[str, np.ndarray], snapshot_times, dim: int = 16, seed: int = 0):
    """Random embeddings of the exact file format: every entity at every snapshot time."""
    rng = np.random.default_rng(seed)
    types, ids, snaps = [], [], []
    for etype, eids in ids_by_type.items():
        for s in snapshot_times:
            types.extend([etype] * len(eids))
            ids.append(np.asarray(eids, np.int64))
            snaps.append(np.full(len(eids), int(s), np.int64))
    ids_arr = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    snaps_arr = np.concatenate(snaps) if snaps else np.zeros(0, np.int64)
    vectors = rng.normal(size=(len(ids_arr), dim)).astype(np.float32)
    return types, ids_arr, snaps_arr, vectors
