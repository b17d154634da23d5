"""The serving plan: the one contract between offline training and online serving.

This module holds the plan's data model and time semantics; reading and checking a plan
(YAML, built-in names) is :mod:`schemas.plan_loading`.

A plan names the tables of the relational graph (columns, dtypes, keys), the fact table whose
rows are scored, and the distillation section of the seed SDK page (embedding keys, embedding
offsets, real-time offset, real-time interactions). Every tensor name and dtype the model
accepts follows from it, so both the offline trainer and the online scorer derive tensors from
this object and nothing else.

Time semantics (shared by every package; all instants are int64 nanoseconds since the epoch):

* Embedding of entity E for anchor time T: the latest snapshot S with
  ``T - max_embedding_offset <= S <= T - min_embedding_offset``; none -> "missing embedding".
* Ranking plans (``ranking.candidate_column``): one request scores many values of one fact
  column (the candidates, e.g. products for a household) against the same anchor, fact row and
  windows. That column travels as a ragged ``[1, n_candidates, 1]`` tensor under its usual
  ``{table}.{column}`` name and the model answers one score per candidate.
* Real-time interactions (RTI) of hop H for anchor T: the last ``max_len`` interactions whose
  event time t satisfies ``T - real_time_offset <= t < T``. ``real_time_offset`` is therefore the
  look-back horizon of the real-time history; the interval is half-open so an event is never
  part of its own history. The same bounds are applied by every window store
  (:meth:`ServingPlan.rti_bounds`), offline and online alike.
* Label feedback (``label_feedback``, optional): labels of facts (e.g. chargebacks) arrive
  later on their own stream, as rows of a label table whose time column is the instant the
  label became *known* (default: the labelled fact's time + ``delay``). Per entity of each
  label key the stores keep the known labels like a window, ordered by known time; at anchor T
  horizon h counts the labels with ``T - h <= known < T`` (half-open like RTI: a label known
  exactly at T is not counted). Tensors ``label:<fact column>:<horizon>:count|positives|rate``.
* Input timestamps: a client writes a table's timestamps as ISO-8601 strings or as integers in
  the table's ``time_unit`` (default nanoseconds); they become int64 ns at the boundary
  (:mod:`schemas.values`), which also refuses instants outside a plausibility window around the
  server clock and values outside the table's ``constraints`` (e.g. ``{tx_amount: {min: 0}}``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping

import yaml

NS_PER = {
    "nanoseconds": 1,
    "microseconds": 1_000,
    "milliseconds": 1_000_000,
    "seconds": 1_000_000_000,
    "minutes": 60 * 1_000_000_000,
    "hours": 3_600 * 1_000_000_000,
    "days": 86_400 * 1_000_000_000,
}

# Plan dtype -> (Triton datatype, numpy dtype string). ``timestamp`` travels as INT64 ns.
DTYPES: dict[str, tuple[str, str]] = {
    "int64": ("INT64", "int64"),
    "float32": ("FP32", "float32"),
    "float64": ("FP64", "float64"),
    "timestamp": ("INT64", "int64"),
    "string": ("BYTES", "object"),
}

ANCHOR_TIME = "anchor_time"
# per label key and horizon: labels known, labels > 0, their ratio (0 without labels)
LABEL_STATS = ("count", "positives", "rate")
_UNIT_TAGS = {"nanoseconds": "ns", "microseconds": "us", "milliseconds": "ms", "seconds": "s", "minutes": "min",
              "hours": "h", "days": "d"}
DEFAULT_TIME_UNIT = "nanoseconds"
HOP_ARROW = "->"


class FieldError(ValueError):
    """Input refused because of one field; the message starts with the field's path. The
    contract's errors (plan, row) and those of the offline spec and row staging share it."""

    def __init__(self, field_path: str, message: str):
        self.field = field_path
        super().__init__(f"{field_path}: {message}")


class PlanError(FieldError):
    """An invalid serving plan. The message always names the offending field."""


@dataclass(frozen=True)
class Duration:
    value: float
    unit: str

    @property
    def ns(self) -> int:
        return int(round(self.value * NS_PER[self.unit]))

    @classmethod
    def parse(cls, raw: Any, where: str) -> "Duration":
        if not isinstance(raw, Mapping) or set(raw) != {"value", "unit"}:
            raise PlanError(where, f"expected {{value: <number>, unit: <{'|'.join(NS_PER)}>}}, got {raw!r}")
        value, unit = raw["value"], raw["unit"]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PlanError(f"{where}.value", f"expected a number, got {value!r}")
        if value < 0:
            raise PlanError(f"{where}.value", f"must be >= 0, got {value!r}")
        if unit not in NS_PER:
            raise PlanError(f"{where}.unit", f"unknown unit {unit!r}; one of {sorted(NS_PER)}")
        return cls(value, unit)

    def to_dict(self) -> dict:
        return {"value": self.value, "unit": self.unit}

    @property
    def tag(self) -> str:
        """Short form for tensor names: ``7d``, ``12h``, ``1.5d``."""
        return f"{self.value:g}{_UNIT_TAGS[self.unit]}"


@dataclass(frozen=True)
class ColumnRef:
    table: str
    column: str

    def __str__(self) -> str:
        return f"{self.table}.{self.column}"

    @classmethod
    def parse(cls, raw: Any, where: str) -> "ColumnRef":
        if not isinstance(raw, str) or not re.fullmatch(r"[A-Za-z_][\w]*\.[A-Za-z_][\w]*", raw):
            raise PlanError(where, f"expected '<table>.<column>', got {raw!r}")
        table, column = raw.split(".")
        return cls(table, column)


@dataclass(frozen=True)
class HopKey:
    """A 1-hop path ``fact.fk -> entity.pk -> interactions.fk`` (three segments, as in the seed).

    ``source`` is the foreign key on the scored fact row that names the entity, ``entity`` its
    primary key, ``target`` the column of the interaction table that points back to the entity.
    """

    source: ColumnRef
    entity: ColumnRef
    target: ColumnRef

    @cached_property  # immutable; cached because the scorer's hot path asks per event
    def key(self) -> str:
        return f"{self.source}{HOP_ARROW}{self.entity}{HOP_ARROW}{self.target}"

    def __str__(self) -> str:
        return self.key

    @classmethod
    def parse(cls, raw: Any, where: str) -> "HopKey":
        if not isinstance(raw, str):
            raise PlanError(where, f"hop key must be a string, got {raw!r}")
        parts = raw.split(HOP_ARROW)
        if len(parts) != 3:
            raise PlanError(where, f"hop key {raw!r} must have three segments 'a.x->b.y->c.z'")
        refs = [ColumnRef.parse(p.strip(), f"{where} (segment {i + 1})") for i, p in enumerate(parts)]
        return cls(*refs)


@dataclass(frozen=True)
class ValueConstraint:
    """Bounds a numeric column's values must respect, online (HTTP) and offline (training data)
    alike; enforced by :func:`schemas.values.check_column`. ``None`` = unbounded on that side."""

    min: float | None = None
    max: float | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in (("min", self.min), ("max", self.max)) if v is not None}


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: dict[str, str]  # column -> plan dtype, in declaration order
    primary_key: str | None = None
    time_column: str | None = None
    foreign_keys: dict[str, str] = field(default_factory=dict)  # column -> referenced table
    # Unit of integer timestamps a client sends for this table's timestamp columns (inside
    # relstream every instant is int64 ns); ISO-8601 strings are accepted whatever the unit.
    time_unit: str = DEFAULT_TIME_UNIT
    constraints: dict[str, ValueConstraint] = field(default_factory=dict)  # column -> bounds


@dataclass(frozen=True)
class TensorSpec:
    """One model input: its Triton name, Triton datatype, numpy dtype and where it comes from."""

    name: str
    kind: str  # "anchor" | "fact" | "candidate" | "rti" | "label"
    dtype: str  # plan dtype
    column: str | None = None
    hop_key: str | None = None
    horizon_ns: int | None = None  # label tensors: the horizon they count over
    stat: str | None = None  # label tensors: one of LABEL_STATS

    @property
    def triton_dtype(self) -> str:
        return DTYPES[self.dtype][0]

    @property
    def numpy_dtype(self) -> str:
        return DTYPES[self.dtype][1]

    @property
    def dims(self) -> list[int]:
        """Per-request dims without the batch dimension, as written into config.pbtxt."""
        return [-1, 1] if self.ragged else [1]

    @property
    def ragged(self) -> bool:
        """Variable length per request: RTI history, and the candidates of a ranking plan."""
        return self.kind in ("rti", "candidate")


@dataclass(frozen=True)
class OutputSpec:
    """One model output: name, Triton datatype and per-request dims (``-1`` = one per candidate)."""

    name: str
    triton_dtype: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class Hop:
    key: HopKey
    max_len: int
    columns: tuple[str, ...]  # columns of the interaction table carried in the window


@dataclass(frozen=True)
class LabelFeedback:
    """Known labels as a live input (see the module docstring for the time rule).

    ``table``: the label table (its rows are the label events; its time column is when the label
    became known, its other columns are columns of the fact table with the same name and dtype:
    the fact's primary key, its time column, the entity keys and ``label``). ``hops``: one per
    label key, ``fact.fk -> entity.pk -> table.fk``; ``max_len`` = most labels kept per entity.
    """

    table: str
    label: str
    delay: Duration
    horizons: tuple[Duration, ...]
    hops: tuple[Hop, ...]

    @property
    def max_horizon_ns(self) -> int:
        return max(h.ns for h in self.horizons)

    def to_dict(self) -> dict:
        return {"table": self.table, "label": self.label, "delay": self.delay.to_dict(),
                "horizons": [h.to_dict() for h in self.horizons],
                "keys": {h.key.key: h.max_len for h in self.hops}}


@dataclass(frozen=True)
class ServingPlan:
    name: str
    fact_table: str
    tables: dict[str, TableSpec]
    embedding_keys: tuple[ColumnRef, ...]
    min_embedding_offset: Duration
    max_embedding_offset: Duration
    real_time_offset: Duration
    hops: tuple[Hop, ...]
    label: str | None = None  # offline-only column of the fact table; never a tensor
    fact_columns: tuple[str, ...] = ()
    candidate_column: str | None = None  # ranking plans: the fact column a request carries many values of
    max_candidates: int = 0
    label_feedback: LabelFeedback | None = None

    # ----- derived names -------------------------------------------------------------------
    @property
    def fact(self) -> TableSpec:
        return self.tables[self.fact_table]

    @cached_property  # derived from frozen fields: computed once per plan
    def hop_keys(self) -> tuple[str, ...]:
        return tuple(h.key.key for h in self.hops)

    @cached_property
    def label_hops(self) -> tuple[Hop, ...]:
        """The label keys' windows (known labels per entity); none without label feedback."""
        return self.label_feedback.hops if self.label_feedback else ()

    @cached_property
    def stored_hops(self) -> tuple[Hop, ...]:
        """Every window a store keeps and a fact row reads: RTI hops, then label keys."""
        return self.hops + self.label_hops

    @cached_property
    def _hops_by_key(self) -> dict[str, Hop]:
        return {h.key.key: h for h in self.stored_hops}

    def hop(self, key: str) -> Hop:
        h = self._hops_by_key.get(key)
        if h is None:
            raise KeyError(f"unknown hop key {key!r}; plan has {list(self._hops_by_key)}")
        return h

    @cached_property
    def label_hop_keys(self) -> frozenset[str]:
        return frozenset(h.key.key for h in self.label_hops)

    def is_label_hop(self, key: str) -> bool:
        return key in self.label_hop_keys

    @cached_property  # derived from frozen fields: ingestion asks per event
    def hops_by_interaction_table(self) -> dict[str, tuple[Hop, ...]]:
        """The windows each table feeds (tables that feed none are absent); the label table
        feeds the label keys."""
        out: dict[str, list[Hop]] = {}
        for hop in self.stored_hops:
            out.setdefault(hop.key.target.table, []).append(hop)
        return {t: tuple(h) for t, h in out.items()}

    @cached_property
    def interaction_columns(self) -> dict[str, tuple[str, ...]]:
        """Per interaction table, every column an append needs: hop columns, join keys, time, id
        (label table: also the fact time, the default of a missing known time)."""
        out = {}
        for table, hops in self.hops_by_interaction_table.items():
            spec = self.tables[table]
            cols = dict.fromkeys(c for h in hops for c in (*h.columns, h.key.target.column))
            cols[spec.time_column] = None
            if spec.primary_key:
                cols[spec.primary_key] = None
            if self.label_feedback and table == self.label_feedback.table:
                cols[self.fact.time_column] = None
            out[table] = tuple(cols)
        return out

    def interaction_table(self, hop: Hop) -> TableSpec:
        return self.tables[hop.key.target.table]

    def column_dtype(self, table: str, column: str) -> str:
        return self.tables[table].columns[column]

    @property
    def is_ranking(self) -> bool:
        return self.candidate_column is not None

    @cached_property
    def candidate_tensor(self) -> str | None:
        """Name of the candidates tensor of a ranking plan (``{fact_table}.{candidate_column}``)."""
        return f"{self.fact_table}.{self.candidate_column}" if self.is_ranking else None

    @cached_property
    def outputs(self) -> tuple[OutputSpec, ...]:
        """What the exported model answers per request.

        Scoring plans: ``score`` [1] and, with embedding keys, ``cold_start`` [K] (1 = that key
        had no admissible embedding). Ranking plans: ``score`` [n_candidates] (padding positions
        of a stacked batch score ``-inf``) and ``cold_start`` [K] where the candidate key's flag
        is 1 when any candidate had no embedding; per-candidate flags in ``candidate_cold_start``.
        """
        outs = [OutputSpec("score", "FP32", (-1,) if self.is_ranking else (1,))]
        if self.embedding_keys:
            outs.append(OutputSpec("cold_start", "INT8", (len(self.embedding_keys),)))
        if self.is_ranking:
            outs.append(OutputSpec("candidate_cold_start", "INT8", (-1,)))
        return tuple(outs)

    @cached_property  # derived from frozen fields: computed once per plan
    def tensors(self) -> tuple[TensorSpec, ...]:
        specs = [TensorSpec(ANCHOR_TIME, "anchor", "int64")]
        for col in self.fact_columns:
            kind = "candidate" if col == self.candidate_column else "fact"
            specs.append(TensorSpec(f"{self.fact_table}.{col}", kind, self.fact.columns[col], column=col))
        for hop in self.hops:
            table = self.interaction_table(hop)
            for col in hop.columns:
                specs.append(
                    TensorSpec(f"{hop.key.key}:{col}", "rti", table.columns[col], column=col, hop_key=hop.key.key)
                )
        if self.label_feedback:
            for hop in self.label_hops:
                for horizon in self.label_feedback.horizons:
                    for stat in LABEL_STATS:
                        specs.append(TensorSpec(f"label:{hop.key.source}:{horizon.tag}:{stat}", "label", "float32",
                                                hop_key=hop.key.key, horizon_ns=horizon.ns, stat=stat))
        return tuple(specs)

    @cached_property  # derived from frozen fields: computed once per plan
    def tensor_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors)

    # ----- time semantics (the single definition; see module docstring) --------------------
    def rti_bounds(self, anchor_time_ns: int) -> tuple[int, int]:
        """Half-open event-time interval ``[lo, hi)`` of interactions visible at the anchor."""
        return anchor_time_ns - self.real_time_offset.ns, anchor_time_ns

    def window_bounds(self, hop_key: str, anchor_time_ns: int) -> tuple[int, int]:
        """Half-open interval ``[lo, hi)`` of the rows of window ``hop_key`` visible at the anchor:
        :meth:`rti_bounds` for RTI hops; for label keys the known times within the longest horizon."""
        if hop_key in self.label_hop_keys:
            return anchor_time_ns - self.label_feedback.max_horizon_ns, anchor_time_ns
        return self.rti_bounds(anchor_time_ns)

    def window_horizon_ns(self, hop_key: str) -> int:
        """How far back from its newest row a window must keep rows (the store's age cap)."""
        lo, hi = self.window_bounds(hop_key, 0)
        return hi - lo

    @cached_property
    def lookback_ns(self) -> int:
        """The longest look-back of any window (what a rebuild replays)."""
        return max([self.real_time_offset.ns] + [self.window_horizon_ns(h.key.key) for h in self.label_hops])

    def embedding_snapshot_bounds(self, anchor_time_ns: int) -> tuple[int, int]:
        """Closed interval ``[lo, hi]`` of admissible embedding snapshot times for the anchor."""
        return anchor_time_ns - self.max_embedding_offset.ns, anchor_time_ns - self.min_embedding_offset.ns

    @property
    def embedding_entity_types(self) -> tuple[str, ...]:
        """The entity table each embedding key points to (order of ``embedding_keys``)."""
        return tuple(self.fact.foreign_keys[k.column] for k in self.embedding_keys)

    # ----- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict:
        tables = {}
        for t in self.tables.values():
            d: dict[str, Any] = {"columns": dict(t.columns)}
            if t.primary_key:
                d["primary_key"] = t.primary_key
            if t.time_column:
                d["time_column"] = t.time_column
            if t.foreign_keys:
                d["foreign_keys"] = dict(t.foreign_keys)
            if t.time_unit != DEFAULT_TIME_UNIT:
                d["time_unit"] = t.time_unit
            if t.constraints:
                d["constraints"] = {c: v.to_dict() for c, v in t.constraints.items()}
            tables[t.name] = d
        out: dict[str, Any] = {
            "name": self.name,
            "fact_table": self.fact_table,
            "fact_columns": list(self.fact_columns),
            "tables": tables,
            "distillation": {
                "embedding_keys": [str(k) for k in self.embedding_keys],
                "max_embedding_offset": self.max_embedding_offset.to_dict(),
                "min_embedding_offset": self.min_embedding_offset.to_dict(),
                "real_time_offset": self.real_time_offset.to_dict(),
                "real_time_interactions": {h.key.key: h.max_len for h in self.hops},
                "real_time_columns": {h.key.key: list(h.columns) for h in self.hops},
            },
        }
        if self.label:
            out["label"] = self.label
        if self.is_ranking:
            out["ranking"] = {"candidate_column": self.candidate_column, "max_candidates": self.max_candidates}
        if self.label_feedback:
            out["label_feedback"] = self.label_feedback.to_dict()
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def fingerprint(self) -> str:
        """A stable hash of everything that shapes tensors; equal fingerprints = compatible."""

        payload = {
            "tensors": [(t.name, t.dtype) for t in self.tensors],
            "max_len": {h.key.key: h.max_len for h in self.hops},
            "offsets": [self.min_embedding_offset.ns, self.max_embedding_offset.ns, self.real_time_offset.ns],
            "embedding_keys": [str(k) for k in self.embedding_keys],
        }
        if self.is_ranking:  # absent for scoring plans: their fingerprints are unchanged
            payload["ranking"] = [self.candidate_column, self.max_candidates]
        if self.label_feedback:  # absent without label feedback: those fingerprints are unchanged
            payload["label_feedback"] = self.label_feedback.to_dict()
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
