"""Command-line flags that override a configuration section, derived from the section's model.

A command lists which fields of its section get a flag (:class:`Flag`); the flag's type comes
from the field's annotation, its help names the setting it overrides, and the values given are
validated by the model itself, so ``--max-batch 0`` is refused exactly as ``score.max_batch: 0``
is, with the flag named.
"""
from __future__ import annotations

import argparse
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import CliError

T = TypeVar("T", bound=BaseModel)
_PREFIX = "override__"


@dataclass(frozen=True)
class Flag:
    """``--flag`` overrides ``field``; ``const``: a flag without a value that sets this one."""

    field: str
    flag: str
    help: str
    metavar: str | None = None
    const: Any = None


def _scalar(annotation: Any) -> Any:
    """int / float / str / Path / bool of an annotation such as ``int | None``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _scalar(inner[0]) if len(inner) == 1 else str
    return annotation if annotation in (int, float, str, bool, Path) else str


def add_flags(parser: argparse.ArgumentParser, section: str, model: type[BaseModel], flags: Sequence[Flag]) -> None:
    for f in flags:
        where = f"{f.help} ({section}.{f.field})"
        dest = _PREFIX + f.field
        kind = _scalar(model.model_fields[f.field].annotation)
        if f.const is not None:
            parser.add_argument(f.flag, dest=dest, action="store_const", const=f.const, help=where)
        elif kind is bool:
            parser.add_argument(f.flag, dest=dest, action="store_true", default=None, help=where)
        else:
            parser.add_argument(f.flag, dest=dest, type=kind, metavar=f.metavar, help=where)


def apply_flags(settings: T, args: argparse.Namespace, flags: Sequence[Flag]) -> tuple[T, dict[str, Any]]:
    """``(settings with the given flags applied, {field: value} of the flags given)``;
    a value the model refuses raises CliError naming the flag."""
    given = {f.field: getattr(args, _PREFIX + f.field) for f in flags
             if getattr(args, _PREFIX + f.field, None) is not None}
    if not given:
        return settings, given
    try:
        return type(settings).model_validate({**settings.model_dump(), **given}), given
    except ValidationError as exc:
        by_field = {f.field: f.flag for f in flags}
        lines = [f"{by_field.get(str(e['loc'][0]), '.'.join(map(str, e['loc'])))}: {e['msg']}"
                 + (f" (got {e['input']!r})" if not isinstance(e.get("input"), (dict, list)) else "")
                 for e in exc.errors()]
        raise CliError("; ".join(lines)) from None
