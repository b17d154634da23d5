"""Reading a serving plan: a YAML file, a built-in name or a dict becomes a checked
:class:`~schemas.plan.ServingPlan`; every refusal is a :class:`~schemas.plan.PlanError` naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

from schemas.plan import (DEFAULT_TIME_UNIT, DTYPES, NS_PER, ColumnRef, Duration, Hop, HopKey, LabelFeedback, PlanError,
                          ServingPlan, TableSpec, ValueConstraint)

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
