"""The window store interface and what every implementation shares.

A window store keeps, per (hop key, entity id), the recent interactions of that entity along that
hop, and answers point-in-time reads: the window as of anchor time T is the last ``hop.max_len``
stored interactions with ``plan.rti_bounds(T)`` (``T - real_time_offset <= t < T``), oldest first.

Semantics shared by all implementations (checked by ``tests/rti_store/test_contract.py``):

* rows are ordered by (event time, event id); identity is (event time, event id), so a redelivered
  event is a no-op and a late event lands in its place;
* each window keeps at most ``hop.max_len`` rows (the newest) and drops rows older than
  ``newest event time in the window - horizon_ns`` (default ``plan.real_time_offset``). Both caps
  are event-time based, so the stored state depends only on the set of appended events;
* idle windows expire ``ttl_s`` seconds (wall clock) after their last append;
* label windows (``plan.label_hops``) are windows like the others, ordered by the time a label
  became known; their age cap and read bounds are the plan's longest label horizon
  (``plan.window_bounds``), and they live at least that long without appends;
* point-in-time reads never return a row at or after ``as_of``. A read as of a time in the past is
  exact as long as the caps have not dropped rows that were visible then.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

from schemas.interactions import HopRows, Interaction, Window
from schemas.plan import ServingPlan
from schemas.values import RowError

from rti_store.codec import RowCodec, codecs_for, coerce_entity

AppendItem = tuple[str, Any, Interaction]  # (hop key, entity id, interaction)
WindowKey = tuple[str, Any]  # (hop key, entity id)


class Completeness(str, enum.Enum):
    """Whether the store holds every interaction Kafka has (read from the store's marker).

    Kafka is the source of truth and the store a derived cache: ingest writes a marker with the
    windows, so a store that lost its data (a restart without persistence, a flush, a failover to
    an empty replica) has no marker, and every read knows it.
    """

    COMPLETE = "complete"  # the marker, and no partition still being replayed
    REBUILDING = "rebuilding"  # ingest is replaying some partitions from Kafka
    LOST = "lost"  # no marker: data lost, or never filled by ingest


@dataclass(frozen=True)
class StoreMarker:
    """The marker's content: the rebuild generation and the partitions still being replayed
    (``(topic, partition) -> replay-from timestamp in ms``)."""

    completeness: Completeness
    epoch: str | None = None
    pending: dict[tuple[str, int], int] = field(default_factory=dict)
    steps: frozenset[str] = frozenset()  # other pending work of the rebuild, e.g. "backfill"


def completeness_of(field_count: int) -> Completeness:
    """Marker fields -> completeness: none = lost, only the epoch = complete, more = rebuilding."""
    if field_count <= 0:
        return Completeness.LOST
    return Completeness.COMPLETE if field_count == 1 else Completeness.REBUILDING


def pending_field(topic: str, partition: int) -> str:
    return f"p:{partition}:{topic}"


def step_field(name: str) -> str:
    return f"s:{name}"


def parse_marker(fields: dict[str, str]) -> StoreMarker:
    pending, steps = {}, set()
    for name, value in fields.items():
        if name.startswith("p:"):
            part, topic = name[2:].split(":", 1)
            pending[(topic, int(part))] = int(value)
        elif name.startswith("s:"):
            steps.add(name[2:])
    return StoreMarker(completeness_of(len(fields)), fields.get("epoch"), pending, frozenset(steps))


@runtime_checkable
class WindowStore(Protocol):
    plan: ServingPlan

    def append(self, items: Sequence[AppendItem]) -> int:
        """Store interactions (one round trip for the batch).

        Returns how many were newly stored: not stored before and kept by the caps (a
        redelivery, or a late event already outside the caps, counts 0).
        """

    def append_rows(self, rows: Sequence[HopRows], items: Sequence[AppendItem] = ()) -> int:
        """:meth:`append` of the window rows of a decoded batch (``HopRows`` of
        ``schemas.interactions.interactions_of_columns``) plus per-row ``items``, in one round trip.
        Same effect as :meth:`append` of ``rows``' items (each hop's in batch order) followed by
        ``items``."""

    def read_many(self, keys: Sequence[WindowKey], as_of: int | Sequence[int]) -> list[Window]:
        """Windows of many (hop key, entity id) as of one or per-key anchor times (one round trip)."""

    def read(self, hop_key: str, entity_id: Any, as_of: int) -> Window:
        """One window as of ``as_of``."""

    def read_many_checked(self, keys: Sequence[WindowKey],
                          as_of: int | Sequence[int]) -> tuple[list[Window], Completeness]:
        """:meth:`read_many` plus the store's completeness read *after* the windows, in the same
        round trip: a loss that happens during the read shows as not complete."""

    def marker(self) -> StoreMarker:
        """The completeness marker as it is now."""

    def claim_rebuild(self, partitions: Sequence[tuple[str, int]], from_ms: int, epoch: str,
                      steps: Sequence[str] = ()) -> StoreMarker:
        """If there is no marker (state lost), atomically create one that lists ``partitions`` as
        pending replay from ``from_ms`` and ``steps`` as pending work (e.g. "backfill"); returns
        the marker as it is afterwards (another ingest member's, if it claimed first)."""

    def finish_rebuild(self, topic: str, partition: int, epoch: str) -> bool:
        """The partition is replayed: drop it from the pending list of generation ``epoch``
        (a no-op for another generation). True if it was pending."""

    def finish_step(self, name: str, epoch: str) -> bool:
        """Like :meth:`finish_rebuild`, for a pending step of generation ``epoch``."""

    def mark_complete(self, epoch: str) -> None:
        """Declare the store complete (a marker without pending partitions); for stores filled
        by other means than ingest, e.g. tests that write windows directly."""

    def close(self) -> None:
        """Release connections."""


class StoreUnavailable(ConnectionError):
    """The backing store cannot be reached (callers may retry: appends are idempotent)."""


class BaseWindowStore:
    """Plan-derived helpers: codecs, key validation, as_of broadcasting."""

    def __init__(self, plan: ServingPlan, horizon_ns: int | None = None, ttl_s: float | None = None):
        if not isinstance(plan, ServingPlan):
            raise TypeError(f"plan: expected a ServingPlan, got {type(plan).__name__}")
        self.plan = plan
        self.horizon_ns = plan.real_time_offset.ns if horizon_ns is None else int(horizon_ns)
        if self.horizon_ns < 0:
            raise ValueError(f"horizon_ns: must be >= 0, got {horizon_ns}")
        if ttl_s is not None and ttl_s <= 0:
            raise ValueError(f"ttl_s: must be > 0 or None (never expire), got {ttl_s}")
        self.ttl_s = ttl_s
        self.codecs: dict[str, RowCodec] = codecs_for(plan)
        self._hops = {h.key.key: h for h in plan.stored_hops}
        # age cap per window kind: RTI hops the store's horizon, label keys the longest label horizon
        self.horizons: dict[str, int] = {h.key.key: (plan.window_horizon_ns(h.key.key) if plan.is_label_hop(h.key.key)
                                                     else self.horizon_ns) for h in plan.stored_hops}

    def ttl_of(self, hop_key: str) -> float | None:
        """Idle lifetime of a window: ``ttl_s``, at least the longest label horizon for label keys
        (a label must outlive a quiet spell of its entity as long as some horizon counts it)."""
        if self.ttl_s is None or not self.plan.is_label_hop(hop_key):
            return self.ttl_s
        return max(self.ttl_s, self.horizons[hop_key] / 1e9)

    def codec(self, hop_key: str) -> RowCodec:
        try:
            return self.codecs[hop_key]
        except KeyError:
            raise RowError("hop_key", f"unknown hop key {hop_key!r}; plan {self.plan.name!r} has "
                                      f"{list(self.codecs)}") from None

    def entity(self, hop_key: str, entity_id: Any) -> int | bytes:
        return coerce_entity(self.plan, self.codec(hop_key).hop, entity_id)

    def as_of_list(self, keys: Sequence[WindowKey], as_of: int | Sequence[int]) -> list[int]:
        if isinstance(as_of, (list, tuple)) or hasattr(as_of, "__len__"):
            if len(as_of) != len(keys):
                raise ValueError(f"as_of: {len(as_of)} anchor times for {len(keys)} keys")
            return [int(t) for t in as_of]
        return [int(as_of)] * len(keys)

    def read(self, hop_key: str, entity_id: Any, as_of: int) -> Window:
        return self.read_many([(hop_key, entity_id)], as_of)[0]

    def append_rows(self, rows: Sequence[HopRows], items: Sequence[AppendItem] = ()) -> int:
        # the reference: the rows as items, through append (a store may override it vectorised)
        return self.append([a for hop in rows for a in hop.items()] + list(items))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:  # pragma: no cover - overridden where there is something to close
        pass
