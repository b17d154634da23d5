"""The project spec: a user's relational data, its predictive tasks and its serving plan, in YAML.

A project names every table (where its file(s) are, primary key, time column, column types),
the foreign keys that link them, the offline-only label columns with their feedback delay,
the *base* task(s) the deep model trains on, the *serving* task of the distilled model, and
the serving plan (``schemas/plans/*.yaml``, by path or inline; parsed by ``schemas.plan_loading``).
Validation happens in two steps, and every error names the offending field:

* :func:`parse_project` / :func:`load_project` — the spec alone (types, references between
  tables, columns, links, labels and tasks, the plan);
* :func:`offline.data.sources.load_tables` — the spec against the files (every declared column
  exists, values parse, each task's horizon fits the data).

Durations are written ``7 days`` / ``12 hours`` or as the plan's ``{value: 7, unit: days}``.
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from schemas.plan import Duration, FieldError, PlanError, ServingPlan
from schemas.plan_loading import load_plan, parse_plan


class SpecError(FieldError):
    """An invalid project spec (or data that does not match it); the message starts with the field."""


class ColumnType(str, Enum):
    """How a column is read and encoded (offline/encoders.py)."""

    numeric = "numeric"
    categorical = "categorical"
    id = "id"  # keys: never a model input themselves (links become edges)
    timestamp = "timestamp"
    boolean = "boolean"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*$")
_UNIT_ALIASES = {"d": "days", "day": "days", "h": "hours", "hour": "hours", "min": "minutes", "minute": "minutes",
                 "s": "seconds", "second": "seconds", "ms": "milliseconds", "w": "weeks", "week": "weeks"}


def _duration(raw: Any) -> Duration:
    """'7 days', '12h', {value: 7, unit: days} -> schemas.plan.Duration (weeks become days)."""
    if isinstance(raw, Duration):
        return raw
    if isinstance(raw, str):
        m = _DURATION.match(raw)
        if not m:
            raise ValueError(f"expected a duration like '7 days' or {{value: 7, unit: days}}, got {raw!r}")
        value, unit = float(m.group(1)), _UNIT_ALIASES.get(m.group(2), m.group(2))
        if unit == "weeks":
            value, unit = value * 7, "days"
        raw = {"value": int(value) if value.is_integer() else value, "unit": unit}
    try:
        return Duration.parse(raw, "duration")
    except PlanError as exc:
        raise ValueError(str(exc).removeprefix("duration: ").removeprefix("duration.")) from None


DurationField = Annotated[Any, Field(description="'7 days' or {value: 7, unit: days}")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class TableSpec(_Model):
    source: str  # a .parquet / .csv file, or a directory of them (relative to the spec file)
    primary_key: str | None = None
    time_column: str | None = None
    columns: dict[str, ColumnType]
    labels: dict[str, DurationField] = {}  # offline-only label column -> feedback delay
    features: list[str] | None = None  # default: columns that are not keys, time or labels

    @field_validator("labels")
    @classmethod
    def _delays(cls, v: dict) -> dict:
        return {col: _duration(d) for col, d in v.items()}

    def label_delay_ns(self, column: str) -> int:
        return self.labels[column].ns


class LinkSpec(_Model):
    """A foreign key: ``table.column`` references the primary key of ``references``."""

    table: str
    column: str
    references: str


class _TaskBase(_Model):
    name: str


class EntityAggregateTask(_TaskBase):
    """Per entity and instant t: EXISTS / COUNT of ``facts`` rows linked to the entity with
    ``filter`` (column = value, all of them) in [t, t + horizon)."""

    kind: Literal["entity_aggregate"]
    entity: str
    facts: str
    via: str | None = None  # the fact column that links to the entity (default: the only one)
    aggregate: Literal["exists", "count"] = "exists"
    filter: dict[str, Any] = {}
    horizon: DurationField

    @field_validator("horizon")
    @classmethod
    def _h(cls, v):
        return _duration(v)


class FactLabelTask(_TaskBase):
    """Per row of ``table`` at its own time: the value of ``label``."""

    kind: Literal["fact_label"]
    table: str
    label: str


class NextItemTask(_TaskBase):
    """Per entity and instant t: which ``item`` entities the entity links to through ``facts``
    rows in [t, t + horizon) (link prediction / recommendation)."""

    kind: Literal["next_item"]
    entity: str
    facts: str
    via: str | None = None
    item: str  # the fact column that references the item table
    horizon: DurationField
    # The fact column that groups rows into sessions (one basket, one visit): a ranking example
    # reveals the start of a session and asks for the rest. Default: the facts' only id column
    # that is neither their primary key nor a foreign key (Project.session_column).
    session: str | None = None

    @field_validator("horizon")
    @classmethod
    def _h(cls, v):
        return _duration(v)


TaskSpec = Annotated[Union[EntityAggregateTask, FactLabelTask, NextItemTask], Field(discriminator="kind")]


class SplitSpec(_Model):
    """The test period starts at ``test_start`` (ISO date; default: ``test_days`` before the end
    of the data). The deep model trains "at" test_start: rows before it, labels older than
    test_start - their delay."""

    test_start: str | None = None
    test_days: int = Field(7, ge=1)
    warmup_days: int = Field(30, ge=0)  # first training snapshot: features need history


class ServingSpec(_Model):
    plan: str | dict  # path of a serving plan (relative to the spec file) or the plan inline
    task: TaskSpec


class ProjectSpec(_Model):
    name: str
    tables: dict[str, TableSpec]
    links: list[LinkSpec] = []
    base_tasks: list[TaskSpec] = Field(min_length=1)
    serving: ServingSpec | None = None
    split: SplitSpec = SplitSpec()


class Project:
    """A validated project: the spec, its serving plan and where it lives."""

    def __init__(self, spec: ProjectSpec, plan: ServingPlan | None, root: Path):
        self.spec, self.plan, self.root = spec, plan, Path(root)

    @property
    def name(self) -> str:
        return self.spec.name

    def source_path(self, table: str) -> Path:
        p = Path(self.spec.tables[table].source)
        return p if p.is_absolute() else self.root / p

    def foreign_keys(self, table: str) -> dict[str, str]:
        return {link.column: link.references for link in self.spec.links if link.table == table}

    def feature_columns(self, table: str) -> list[str]:
        t = self.spec.tables[table]
        if t.features is not None:
            return list(t.features)
        keys = {t.primary_key, t.time_column, *self.foreign_keys(table)}
        return [c for c, ty in t.columns.items() if c not in keys and c not in t.labels and ty != ColumnType.id]

    @property
    def fact_tables(self) -> list[str]:
        """Tables with a time column that reference another table."""
        return [n for n, t in self.spec.tables.items() if t.time_column and self.foreign_keys(n)]

    @property
    def tasks(self) -> list:
        return list(self.spec.base_tasks)

    def task(self, name: str):
        for t in self.spec.base_tasks:
            if t.name == name:
                return t
        raise KeyError(f"base_tasks: no task {name!r}; tasks: {[t.name for t in self.spec.base_tasks]}")

    def task_label_delay_ns(self, task) -> int:
        """The longest feedback delay among the label columns a task's targets read."""
        if isinstance(task, FactLabelTask):
            return self.spec.tables[task.table].label_delay_ns(task.label)
        if isinstance(task, EntityAggregateTask):
            labels = self.spec.tables[task.facts].labels
            return max((labels[c].ns for c in task.filter if c in labels), default=0)
        return 0

    def link_column(self, facts: str, entity: str, via: str | None) -> str:
        cols = [c for c, ref in self.foreign_keys(facts).items() if ref == entity]
        return via if via is not None else cols[0]

    def session_column(self, task: NextItemTask, where: str = "serving.task") -> str:
        """The fact column grouping ``task``'s rows into sessions: ``session`` when given, else the
        only ``id`` column of the facts that is neither their primary key nor a foreign key."""
        if task.session is not None:
            return task.session
        t = self.spec.tables[task.facts]
        fks = self.foreign_keys(task.facts)
        ids = [c for c, ty in t.columns.items() if ty == ColumnType.id and c != t.primary_key and c not in fks]
        if len(ids) != 1:
            raise SpecError(f"{where}.session", f"name the column of {task.facts} that groups rows into sessions "
                                                f"(id columns that are not keys: {ids})")
        return ids[0]

    @property
    def embedding_entity_types(self) -> tuple[str, ...]:
        """The tables an embedding key of the serving plan points to (what ``embed`` writes)."""
        if self.plan is None:  # no serving plan yet: the entities (and items) of the base tasks
            types = {t.entity for t in self.tasks if hasattr(t, "entity")}
            types |= {self.foreign_keys(t.facts)[t.item] for t in self.tasks if isinstance(t, NextItemTask)}
            return tuple(sorted(types))
        return tuple(self.plan.embedding_entity_types)


# ----- parsing ------------------------------------------------------------------------------------

def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("entity_aggregate", "fact_label", "next_item", "function-after[_h(), any]"):
            continue  # pydantic's name of the union member, not a field of the user's file
        else:
            out += ("." if out else "") + str(part)
    return out or "project"


def parse_project(raw: Any, root: str | Path = ".") -> Project:
    """Validate a spec mapping (``root``: directory relative sources and plan paths start from)."""
    if not isinstance(raw, dict):
        raise SpecError("project", f"expected a mapping, got {type(raw).__name__}")
    try:
        spec = ProjectSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        raise SpecError(_where(err["loc"]), msg) from None
    root = Path(root)
    _check_references(spec)
    plan = _load_serving_plan(spec, root)
    if plan is not None:
        _check_plan(spec, plan)
    return Project(spec, plan, root)


def load_project(path: str | Path) -> Project:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError("project", f"file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise SpecError("project", f"{path} is not valid YAML: {exc}") from None
    return parse_project(raw, path.parent)


def _check_references(spec: ProjectSpec) -> None:
    tables = spec.tables
    for name, t in tables.items():
        where = f"tables.{name}"
        for key in ("primary_key", "time_column"):
            col = getattr(t, key)
            if col is not None and col not in t.columns:
                raise SpecError(f"{where}.{key}", f"unknown column {col!r}; columns: {sorted(t.columns)}")
        if t.time_column is not None and t.columns[t.time_column] != ColumnType.timestamp:
            raise SpecError(f"{where}.columns.{t.time_column}", "the time column must have type timestamp")
        for col in t.labels:
            if col not in t.columns:
                raise SpecError(f"{where}.labels.{col}", f"unknown column {col!r}; columns: {sorted(t.columns)}")
            if t.time_column is None:
                raise SpecError(f"{where}.labels.{col}", "label columns need the table's time_column "
                                                         "(their feedback delay counts from it)")
        for i, col in enumerate(t.features or []):
            if col not in t.columns:
                raise SpecError(f"{where}.features[{i}]", f"unknown column {col!r}; columns: {sorted(t.columns)}")
            if col in t.labels:
                raise SpecError(f"{where}.features[{i}]", f"{col!r} is a label column (offline only, "
                                                          "known after its feedback delay): never a feature")
    referenced = set()
    for i, link in enumerate(spec.links):
        where = f"links[{i}]"
        if link.table not in tables:
            raise SpecError(f"{where}.table", f"unknown table {link.table!r}; tables: {sorted(tables)}")
        if link.column not in tables[link.table].columns:
            raise SpecError(f"{where}.column", f"unknown column {link.column!r} of {link.table}")
        if link.references not in tables:
            raise SpecError(f"{where}.references", f"foreign key {link.table}.{link.column} to unknown table "
                                                   f"{link.references!r}; tables: {sorted(tables)}")
        if tables[link.references].primary_key is None:
            raise SpecError(f"tables.{link.references}.primary_key",
                            f"needed because {link.table}.{link.column} references it")
        if link.column in tables[link.table].labels:
            raise SpecError(f"{where}.column", f"{link.column!r} is a label column; it cannot be a key")
        referenced.add(link.table)
    targets = {link.references for link in spec.links}
    for name in referenced - targets:  # rows that point at entities and nothing points at: facts
        if tables[name].time_column is None:
            raise SpecError(f"tables.{name}.time_column",
                            f"{name} is a fact table (it has foreign keys and no table references it) but has "
                            "no time column: its rows cannot be placed in time, so nothing could tell what "
                            "was known when")
    for i, task in enumerate(spec.base_tasks):
        _check_task(spec, task, f"base_tasks[{i}]")
    names = [t.name for t in spec.base_tasks]
    if len(set(names)) != len(names):
        raise SpecError("base_tasks", f"task names must be unique, got {names}")
    if spec.serving is not None:
        _check_task(spec, spec.serving.task, "serving.task")
    if spec.split.test_start is not None:
        try:
            import pandas as pd

            pd.Timestamp(spec.split.test_start)
        except ValueError:
            raise SpecError("split.test_start", f"not an ISO date: {spec.split.test_start!r}") from None


def _fks(spec: ProjectSpec, table: str) -> dict[str, str]:
    return {link.column: link.references for link in spec.links if link.table == table}


def _check_task(spec: ProjectSpec, task, where: str) -> None:
    tables = spec.tables

    def table(field: str, name: str):
        if name not in tables:
            raise SpecError(f"{where}.{field}", f"unknown table {name!r}; tables: {sorted(tables)}")
        return tables[name]

    if isinstance(task, FactLabelTask):
        t = table("table", task.table)
        if task.label not in t.labels:
            raise SpecError(f"{where}.label", f"{task.label!r} is not a label column of {task.table} "
                                              f"(tables.{task.table}.labels: {sorted(t.labels)})")
        return
    table("entity", task.entity)
    facts = table("facts", task.facts)
    if facts.time_column is None:
        raise SpecError(f"{where}.facts", f"{task.facts} has no time column; a horizon needs one")
    links = [c for c, ref in _fks(spec, task.facts).items() if ref == task.entity]
    if not links:
        raise SpecError(f"{where}.facts", f"{task.facts} has no foreign key to {task.entity} (links)")
    if task.via is not None and task.via not in links:
        raise SpecError(f"{where}.via", f"{task.facts}.{task.via} is not a foreign key to {task.entity}; "
                                        f"candidates: {links}")
    if task.via is None and len(links) > 1:
        raise SpecError(f"{where}.via", f"{task.facts} links to {task.entity} by {links}: say which")
    if task.horizon.ns <= 0:
        raise SpecError(f"{where}.horizon", "must be > 0")
    if isinstance(task, EntityAggregateTask):
        for col in task.filter:
            if col not in facts.columns:
                raise SpecError(f"{where}.filter.{col}", f"unknown column {col!r} of {task.facts}")
    else:
        fk = _fks(spec, task.facts)
        if task.item not in fk:
            raise SpecError(f"{where}.item", f"{task.facts}.{task.item} must be a foreign key to the item table")
        if task.session is not None and task.session not in facts.columns:
            raise SpecError(f"{where}.session", f"unknown column {task.session!r} of {task.facts}")


def _load_serving_plan(spec: ProjectSpec, root: Path) -> ServingPlan | None:
    if spec.serving is None:
        return None
    try:
        if isinstance(spec.serving.plan, dict):
            return parse_plan(spec.serving.plan)
        path = Path(spec.serving.plan)
        return load_plan(path if path.is_absolute() else root / path)
    except PlanError as exc:
        raise SpecError(f"serving.plan.{exc.field}", str(exc).removeprefix(f"{exc.field}: ")) from None


def _check_plan(spec: ProjectSpec, plan: ServingPlan) -> None:
    """The plan's tables are project tables with the same keys, and no project label column is
    a real-time input (the plan only knows its own single label). A plan's label table (label
    feedback) need not be a project table: its rows are the fact table's labels, known after the
    plan's delay; its label must then be a label column of the fact table."""
    fb = plan.label_feedback
    if fb is not None and fb.table not in spec.tables and fb.label not in spec.tables[plan.fact_table].labels:
        raise SpecError("serving.plan.label_feedback.label",
                        f"{plan.fact_table}.{fb.label} is not a label column of the project (the label table "
                        f"{fb.table!r} is derived from it)")
    for name, pt in plan.tables.items():
        if fb is not None and name == fb.table and name not in spec.tables:
            continue
        where = f"serving.plan.tables.{name}"
        if name not in spec.tables:
            raise SpecError(where, f"not a table of the project; tables: {sorted(spec.tables)}")
        t = spec.tables[name]
        for col in pt.columns:
            if col not in t.columns:
                raise SpecError(f"{where}.columns.{col}", f"unknown column {col!r} of project table {name}")
        if pt.primary_key != t.primary_key:
            raise SpecError(f"{where}.primary_key", f"{pt.primary_key!r} != the project's {t.primary_key!r}")
        if pt.time_column != t.time_column:
            raise SpecError(f"{where}.time_column", f"{pt.time_column!r} != the project's {t.time_column!r}")
        for col, ref in pt.foreign_keys.items():
            if _fks(spec, name).get(col) != ref:
                raise SpecError(f"{where}.foreign_keys.{col}", f"not a link of the project ({name}.{col} -> {ref})")
    for hop in plan.hops:
        table = hop.key.target.table
        labels = spec.tables[table].labels
        for col in hop.columns:
            if col in labels:
                raise SpecError(f"serving.plan.distillation.real_time_columns.{hop.key.key}",
                                f"{table}.{col} is a label column (known only after its feedback delay): "
                                "never in a real-time window")
    for col in plan.fact_columns:
        if col in spec.tables[plan.fact_table].labels:
            raise SpecError("serving.plan.fact_columns", f"{plan.fact_table}.{col} is a label column: never a model input")


__all__ = ["ColumnType", "EntityAggregateTask", "FactLabelTask", "LinkSpec", "NextItemTask", "Project",
           "ProjectSpec", "ServingSpec", "SpecError", "SplitSpec", "TableSpec", "TaskSpec", "load_project",
           "parse_project"]
