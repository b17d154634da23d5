"""The serving plan: the one contract between offline training and online serving.

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
from pathlib import Path
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


# ----- parsing -------------------------------------------------------------------------------

_TOP_KEYS = {"name", "fact_table", "fact_columns", "tables", "distillation", "label", "ranking", "label_feedback"}
_LABEL_FEEDBACK_KEYS = {"table", "label", "delay", "horizons", "keys"}
_RANKING_KEYS = {"candidate_column", "max_candidates"}
_TABLE_KEYS = {"columns", "primary_key", "time_column", "foreign_keys", "time_unit", "constraints"}
_CONSTRAINT_KEYS = {"min", "max"}
_NUMERIC_DTYPES = ("int64", "float32", "float64")
_DIST_KEYS = {
    "embedding_keys",
    "max_embedding_offset",
    "min_embedding_offset",
    "real_time_offset",
    "real_time_interactions",
    "real_time_columns",
}


def _reject_unknown(raw: Mapping, allowed: set[str], where: str) -> None:
    for key in raw:
        if key not in allowed:
            prefix = f"{where}." if where else ""
            raise PlanError(f"{prefix}{key}", f"unknown field; allowed: {sorted(allowed)}")


def _mapping(raw: Any, where: str) -> Mapping:
    if not isinstance(raw, Mapping):
        raise PlanError(where, f"expected a mapping, got {type(raw).__name__}")
    return raw


def _parse_table(name: str, raw: Any) -> TableSpec:
    where = f"tables.{name}"
    raw = _mapping(raw, where)
    _reject_unknown(raw, _TABLE_KEYS, where)
    cols = _mapping(raw.get("columns"), f"{where}.columns")
    if not cols:
        raise PlanError(f"{where}.columns", "a table needs at least one column")
    for col, dtype in cols.items():
        if dtype not in DTYPES:
            raise PlanError(f"{where}.columns.{col}", f"unknown dtype {dtype!r}; one of {sorted(DTYPES)}")
    pk, tcol = raw.get("primary_key"), raw.get("time_column")
    for label, col in (("primary_key", pk), ("time_column", tcol)):
        if col is not None and col not in cols:
            raise PlanError(f"{where}.{label}", f"column {col!r} is not in the table's columns")
    if tcol is not None and cols[tcol] != "timestamp":
        raise PlanError(f"{where}.time_column", f"column {tcol!r} must have dtype timestamp")
    fks = dict(_mapping(raw.get("foreign_keys") or {}, f"{where}.foreign_keys"))
    for col in fks:
        if col not in cols:
            raise PlanError(f"{where}.foreign_keys.{col}", "column is not in the table's columns")
    unit = raw.get("time_unit", DEFAULT_TIME_UNIT)
    if unit not in NS_PER:
        raise PlanError(f"{where}.time_unit", f"unknown unit {unit!r}; one of {sorted(NS_PER)}")
    constraints = {col: _parse_constraint(cols, col, c, f"{where}.constraints.{col}")
                   for col, c in _mapping(raw.get("constraints") or {}, f"{where}.constraints").items()}
    return TableSpec(name=name, columns=dict(cols), primary_key=pk, time_column=tcol, foreign_keys=fks,
                     time_unit=unit, constraints=constraints)


def _parse_constraint(cols: Mapping, col: str, raw: Any, where: str) -> ValueConstraint:
    if col not in cols:
        raise PlanError(where, "column is not in the table's columns")
    if cols[col] not in _NUMERIC_DTYPES:
        raise PlanError(where, f"constraints apply to numeric columns ({', '.join(_NUMERIC_DTYPES)}), "
                               f"{col!r} is {cols[col]}")
    raw = _mapping(raw, where)
    _reject_unknown(raw, _CONSTRAINT_KEYS, where)
    if not raw:
        raise PlanError(where, "expected min and/or max")
    bounds = {}
    for key in ("min", "max"):
        value = raw.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise PlanError(f"{where}.{key}", f"expected a number, got {value!r}")
        bounds[key] = value
    if "min" in bounds and "max" in bounds and bounds["min"] > bounds["max"]:
        raise PlanError(where, f"min {bounds['min']} is larger than max {bounds['max']}")
    return ValueConstraint(**bounds)


def _parse_hop_key(key: Any, max_len: Any, where: str, tables: Mapping[str, TableSpec], fact: TableSpec,
                   fact_columns: tuple[str, ...]) -> HopKey:
    """A hop key ``fact.fk -> entity.pk -> table.fk`` and its ``max_len``, checked against the tables."""
    fact_name = fact.name
    hop = HopKey.parse(key, where)
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len <= 0:
        raise PlanError(where, f"max_len must be an integer > 0, got {max_len!r}")
    for seg_name, ref in (("segment 1", hop.source), ("segment 2", hop.entity), ("segment 3", hop.target)):
        if ref.table not in tables:
            raise PlanError(f"{where} ({seg_name})", f"unknown table {ref.table!r}")
        if ref.column not in tables[ref.table].columns:
            raise PlanError(f"{where} ({seg_name})", f"unknown column {ref}")
    if hop.source.table != fact_name:
        raise PlanError(f"{where} (segment 1)", f"must start at the fact table {fact_name!r}")
    if tables[hop.entity.table].primary_key != hop.entity.column:
        raise PlanError(f"{where} (segment 2)", f"{hop.entity} must be the primary key of {hop.entity.table}")
    if fact.foreign_keys.get(hop.source.column) != hop.entity.table:
        raise PlanError(f"{where} (segment 1)",
                        f"{hop.source} must be a foreign key to {hop.entity.table} in tables.{fact_name}.foreign_keys")
    target = tables[hop.target.table]
    if target.foreign_keys.get(hop.target.column) != hop.entity.table:
        raise PlanError(f"{where} (segment 3)",
                        f"{hop.target} must be a foreign key to {hop.entity.table}")
    if target.time_column is None:
        raise PlanError(f"tables.{target.name}.time_column", f"interaction table of hop {key!r} needs a time column")
    if hop.source.column not in fact_columns:
        raise PlanError(f"{where} (segment 1)", f"{hop.source} must be a fact column: windows are looked up by it")
    return hop


def _parse_label_feedback(raw: Any, tables: Mapping[str, TableSpec], fact: TableSpec, fact_columns: tuple[str, ...],
                          hops: list[Hop], ranking: bool) -> LabelFeedback | None:
    if raw is None:
        return None
    raw = _mapping(raw, "label_feedback")
    _reject_unknown(raw, _LABEL_FEEDBACK_KEYS, "label_feedback")
    for key in sorted(_LABEL_FEEDBACK_KEYS):
        if key not in raw:
            raise PlanError(f"label_feedback.{key}", "missing required field")
    if ranking:
        raise PlanError("label_feedback", "ranking plans do not take label feedback")
    name = raw["table"]
    if not isinstance(name, str) or name not in tables:
        raise PlanError("label_feedback.table", f"unknown table {name!r}; tables are {sorted(tables)}")
    if name == fact.name:
        raise PlanError("label_feedback.table", "the label table is not the fact table (labels arrive on their own stream)")
    spec = tables[name]
    where = f"tables.{name}"
    if spec.time_column is None:
        raise PlanError(f"{where}.time_column", "the label table's time column is when a label became known")
    if fact.primary_key is None or spec.primary_key != fact.primary_key:
        raise PlanError(f"{where}.primary_key",
                        f"must be the fact table's primary key {fact.primary_key!r} (one label per fact)")
    for col, dtype in spec.columns.items():
        if col == spec.time_column:
            continue
        if col not in fact.columns:
            raise PlanError(f"{where}.columns.{col}", f"must be a column of the fact table {fact.name!r} "
                                                      "(a label row is its fact's row plus the known time)")
        if fact.columns[col] != dtype:
            raise PlanError(f"{where}.columns.{col}", f"dtype {dtype} differs from {fact.name}.{col} ({fact.columns[col]})")
    if spec.time_column in fact.columns:
        raise PlanError(f"{where}.time_column", f"{spec.time_column!r} is a fact column; the known time needs its own name")
    if fact.time_column not in spec.columns:
        raise PlanError(f"{where}.columns", f"needs the labelled fact's time {fact.time_column!r} "
                                            "(a label without a known time is known at fact time + delay)")
    label = raw["label"]
    if not isinstance(label, str) or label not in spec.columns or label == spec.time_column:
        raise PlanError("label_feedback.label", f"{label!r} is not a column of {name}")
    if spec.columns[label] not in _NUMERIC_DTYPES:
        raise PlanError("label_feedback.label", f"must be numeric ({', '.join(_NUMERIC_DTYPES)}), {label!r} is "
                                                f"{spec.columns[label]}")
    if label in fact_columns:
        raise PlanError("label_feedback.label", f"{label!r} is a model input of the fact row; a label never is")
    for hop in hops:
        if hop.key.target.table == name:
            raise PlanError("distillation.real_time_interactions",
                            f"hop {hop.key.key!r} reads the label table; labels are inputs only through label_feedback")
    delay = Duration.parse(raw["delay"], "label_feedback.delay")
    horizons_raw = raw["horizons"]
    if not isinstance(horizons_raw, list) or not horizons_raw:
        raise PlanError("label_feedback.horizons", "expected a non-empty list of durations")
    horizons = []
    for i, h in enumerate(horizons_raw):
        d = Duration.parse(h, f"label_feedback.horizons[{i}]")
        if d.ns <= 0:
            raise PlanError(f"label_feedback.horizons[{i}]", "must be > 0")
        if any(d.ns == o.ns or d.tag == o.tag for o in horizons):
            raise PlanError(f"label_feedback.horizons[{i}]", f"{d.value} {d.unit} is listed twice")
        horizons.append(d)
    keys = _mapping(raw["keys"], "label_feedback.keys")
    if not keys:
        raise PlanError("label_feedback.keys", "expected at least one label key 'fact.fk->entity.pk->labels.fk: max_labels'")
    label_hops, sources = [], set()
    for key, max_len in keys.items():
        kw = f"label_feedback.keys[{key!r}]"
        hk = _parse_hop_key(key, max_len, kw, tables, fact, fact_columns)
        if hk.target.table != name:
            raise PlanError(f"{kw} (segment 3)", f"must end in the label table {name!r}")
        if hk.source.column in sources:
            raise PlanError(kw, f"{hk.source} already keys a label window")
        sources.add(hk.source.column)
        label_hops.append(Hop(key=hk, max_len=max_len, columns=(label, spec.time_column)))
    return LabelFeedback(table=name, label=label, delay=delay, horizons=tuple(horizons), hops=tuple(label_hops))


def parse_plan(raw: Any) -> ServingPlan:
    """Validate a plan dict (as loaded from YAML) and return the typed plan."""
    raw = _mapping(raw, "plan")
    _reject_unknown(raw, _TOP_KEYS, "")
    for key in ("name", "fact_table", "tables", "distillation"):
        if key not in raw:
            raise PlanError(key, "missing required field")
    tables = {name: _parse_table(name, t) for name, t in _mapping(raw["tables"], "tables").items()}
    for t in tables.values():
        for col, ref in t.foreign_keys.items():
            if ref not in tables:
                raise PlanError(f"tables.{t.name}.foreign_keys.{col}", f"unknown table {ref!r}")
            if tables[ref].primary_key is None:
                raise PlanError(f"tables.{ref}.primary_key", f"needed because {t.name}.{col} references it")
    fact_name = raw["fact_table"]
    if fact_name not in tables:
        raise PlanError("fact_table", f"unknown table {fact_name!r}; tables are {sorted(tables)}")
    fact = tables[fact_name]
    if fact.time_column is None:
        raise PlanError(f"tables.{fact_name}.time_column", "the fact table needs a time column (the anchor time)")

    label = raw.get("label")
    if label is not None and label not in fact.columns:
        raise PlanError("label", f"column {label!r} is not a column of {fact_name}")
    if "fact_columns" in raw:
        fact_columns = tuple(raw["fact_columns"])
        for i, col in enumerate(fact_columns):
            if col not in fact.columns:
                raise PlanError(f"fact_columns[{i}]", f"unknown column {col!r} of {fact_name}")
            if col == label:
                raise PlanError(f"fact_columns[{i}]", "the label is never a model input")
    else:
        fact_columns = tuple(c for c in fact.columns if c != label)

    dist = _mapping(raw["distillation"], "distillation")
    _reject_unknown(dist, _DIST_KEYS, "distillation")
    for key in ("embedding_keys", "max_embedding_offset", "min_embedding_offset", "real_time_offset",
                "real_time_interactions"):
        if key not in dist:
            raise PlanError(f"distillation.{key}", "missing required field")

    emb_raw = dist["embedding_keys"]
    if not isinstance(emb_raw, list):
        raise PlanError("distillation.embedding_keys", "expected a list of '<table>.<column>'")
    embedding_keys = []
    for i, item in enumerate(emb_raw):
        where = f"distillation.embedding_keys[{i}]"
        ref = ColumnRef.parse(item, where)
        if ref.table != fact_name:
            raise PlanError(where, f"embedding keys are columns of the fact table {fact_name!r}, got {item!r}")
        if ref.column not in fact.columns:
            raise PlanError(where, f"unknown column {ref.column!r} of {fact_name}")
        if ref.column not in fact.foreign_keys:
            raise PlanError(where, f"{item} must be a foreign key (tables.{fact_name}.foreign_keys)")
        if ref.column not in fact_columns:
            raise PlanError(where, f"{item} must be a fact column: the model looks embeddings up by it")
        embedding_keys.append(ref)

    min_off = Duration.parse(dist["min_embedding_offset"], "distillation.min_embedding_offset")
    max_off = Duration.parse(dist["max_embedding_offset"], "distillation.max_embedding_offset")
    if min_off.ns > max_off.ns:
        raise PlanError("distillation.min_embedding_offset",
                        f"{min_off.value} {min_off.unit} is larger than max_embedding_offset "
                        f"{max_off.value} {max_off.unit}")
    rt_off = Duration.parse(dist["real_time_offset"], "distillation.real_time_offset")
    if rt_off.ns <= 0:
        raise PlanError("distillation.real_time_offset", "must be > 0 (it is the look-back horizon of RTI)")

    rti = _mapping(dist["real_time_interactions"], "distillation.real_time_interactions")
    rti_cols = _mapping(dist.get("real_time_columns") or {}, "distillation.real_time_columns")
    for key in rti_cols:
        if key not in rti:
            raise PlanError(f"distillation.real_time_columns.{key}", "hop key not in real_time_interactions")
    hops = []
    for key, max_len in rti.items():
        where = f"distillation.real_time_interactions[{key!r}]"
        hop = _parse_hop_key(key, max_len, where, tables, fact, fact_columns)
        target = tables[hop.target.table]
        if key in rti_cols:
            cols = tuple(rti_cols[key])
            for i, col in enumerate(cols):
                if col not in target.columns:
                    raise PlanError(f"distillation.real_time_columns.{key}[{i}]", f"unknown column {col!r} of {target.name}")
                if col == label:
                    raise PlanError(f"distillation.real_time_columns.{key}[{i}]", "labels are never real-time inputs")
        else:
            # Default, as in the seed request: the interaction table's columns minus its primary
            # key, the join column (constant within a window) and the label (not known in real time).
            cols = tuple(c for c in target.columns
                         if c not in (target.primary_key, hop.target.column, label))
        if target.time_column not in cols:
            cols = cols + (target.time_column,)  # relative time encodings need the event time
        hops.append(Hop(key=hop, max_len=max_len, columns=cols))

    candidate_column, max_candidates = _parse_ranking(raw.get("ranking"), fact, fact_columns, hops)
    label_feedback = _parse_label_feedback(raw.get("label_feedback"), tables, fact, fact_columns, hops,
                                           candidate_column is not None)

    return ServingPlan(
        name=str(raw["name"]),
        fact_table=fact_name,
        tables=tables,
        embedding_keys=tuple(embedding_keys),
        min_embedding_offset=min_off,
        max_embedding_offset=max_off,
        real_time_offset=rt_off,
        hops=tuple(hops),
        label=label,
        fact_columns=fact_columns,
        candidate_column=candidate_column,
        max_candidates=max_candidates,
        label_feedback=label_feedback,
    )


def _parse_ranking(raw: Any, fact: TableSpec, fact_columns: tuple[str, ...], hops) -> tuple[str | None, int]:
    if raw is None:
        return None, 0
    raw = _mapping(raw, "ranking")
    _reject_unknown(raw, _RANKING_KEYS, "ranking")
    for key in ("candidate_column", "max_candidates"):
        if key not in raw:
            raise PlanError(f"ranking.{key}", "missing required field")
    col, most = raw["candidate_column"], raw["max_candidates"]
    if col not in fact.columns:
        raise PlanError("ranking.candidate_column", f"unknown column {col!r} of {fact.name}")
    if col not in fact_columns:
        raise PlanError("ranking.candidate_column", f"{col!r} must be a fact column (the model reads it)")
    if col not in fact.foreign_keys:
        raise PlanError("ranking.candidate_column",
                        f"{col!r} must be a foreign key: candidates are entities (tables.{fact.name}.foreign_keys)")
    if fact.columns[col] == "timestamp" or col == fact.time_column:
        raise PlanError("ranking.candidate_column", "the time column cannot be the candidate column")
    for hop in hops:
        if hop.key.source.column == col:
            # Windows are read once per request; a per-candidate window would multiply the reads.
            raise PlanError("ranking.candidate_column",
                            f"{col!r} keys the real-time hop {hop.key.key!r}; candidates cannot key windows")
    if isinstance(most, bool) or not isinstance(most, int) or not 1 <= most <= 100_000:
        raise PlanError("ranking.max_candidates", f"expected an integer in [1, 100000], got {most!r}")
    return col, most


def load_plan(path: str | Path) -> ServingPlan:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PlanError("plan", f"file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise PlanError("plan", f"{path} is not valid YAML: {exc}") from None
    return parse_plan(raw)


PLANS_DIR = Path(__file__).parent / "plans"


def builtin_plan(name: str) -> ServingPlan:
    """A plan shipped with relstream (``fraud``, ``recsys``)."""
    path = PLANS_DIR / f"{name}.yaml"
    if not path.exists():
        raise PlanError("plan", f"no built-in plan {name!r}; available: {sorted(p.stem for p in PLANS_DIR.glob('*.yaml'))}")
    return load_plan(path)


DEFAULT_PLAN = "fraud"


def resolve_plan(ref: str | Path | None) -> ServingPlan:
    """The plan a command names: a YAML path, or a built-in name; none: the built-in default.

    The one resolver of every command (``--plan`` / ``score.plan`` / ``serve.plan`` / the
    top-level ``plan`` of the configuration are chosen by the caller)."""
    if ref is None:
        return builtin_plan(DEFAULT_PLAN)
    path = Path(ref)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return load_plan(path)
    return builtin_plan(str(ref))
