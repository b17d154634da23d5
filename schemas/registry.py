"""A file-based Avro schema registry and a codec for the Confluent wire format.

Wire format (identical to Confluent's, so a Confluent Schema Registry client can replace
:class:`FileSchemaRegistry` without changing a single byte on the topics)::

    byte 0      magic byte 0
    bytes 1..4  schema id, unsigned 32-bit big-endian
    bytes 5..   Avro binary body (schemaless, i.e. no container header)

Registry layout (a plain directory, shareable by several processes)::

    <root>/ids/<id>.json          {"id", "schema", "subjects": [...]}
    <root>/subjects/<subject>.json {"subject", "versions": [id, id, ...]}   (version n = index n-1)
    <root>/.lock                  flock'ed while registering

Every file is written to a temporary file and renamed into place, so a reader never sees a half
written file; registration holds an exclusive ``flock`` so two processes never hand out the same
id. Registering a schema identical to one already registered returns its id. A changed schema of
a subject is checked for BACKWARD compatibility against the subject's latest version (Confluent's
default): a reader with the new schema must be able to read data written with the old one.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import struct
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import fastavro
from fastavro.validation import ValidationError, validate

MAGIC_BYTE = 0
HEADER = struct.Struct(">bI")
DEFAULT_MAX_BYTES = 1 << 20  # 1 MiB: larger payloads are rejected before decoding
AVRO_DIR = Path(__file__).with_name("avro")

# Built-in schema name -> subject (TopicNameStrategy-like: one value subject per stream).
BUILTIN_SUBJECTS = {
    "transaction": "transactions-value",
    "transaction_label": "transaction-labels-value",  # label events (plan `fraud_labels`)
    "interaction": "interactions-value",
    "score": "scores-value",
    "dead_letter": "dead-letters-value",
    "purchase_line": "purchase-lines-value",  # recsys session events (plan `recsys`, table transactions)
    "recommendation": "recommendations-value",  # ranked lists of the ranking scorer's Kafka path
}

_SUBJECT_RE = re.compile(r"[A-Za-z0-9._\-]+")


class SchemaRegistryError(ValueError):
    """Registry misuse: unknown subject or id, invalid schema, bad subject name."""


class IncompatibleSchemaError(SchemaRegistryError):
    """A new version of a subject that cannot read data written with the latest version."""

    def __init__(self, subject: str, problems: list[str]):
        self.subject = subject
        self.problems = problems
        super().__init__(f"schema for subject {subject!r} is not BACKWARD compatible: " + "; ".join(problems))


class DecodeError(ValueError):
    """A message that is not a valid wire-format record of a known schema.

    ``reason`` is short and machine readable: ``too_short``, ``bad_magic``, ``unknown_schema``,
    ``invalid_body``, ``oversize``, ``not_bytes``. Dead letters use the shared vocabulary of
    ``schemas.dead_letter`` (``invalid_body`` and ``not_bytes`` become ``undecodable`` there).
    """

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(f"{reason}: {message}")


class EncodeError(ValueError):
    """A record that does not fit its schema; the message names the field."""


def canonical_json(schema: Any) -> str:
    """The identity of a schema: sorted keys, no whitespace (docs and defaults included)."""
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


def _atomic_write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _read_json(path: Path) -> Any:
    with open(path) as fh:
        return json.load(fh)


class FileSchemaRegistry:
    """id <-> schema and subject -> versions, stored in a directory (see module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.root = Path(path)
        (self.root / "ids").mkdir(parents=True, exist_ok=True)
        (self.root / "subjects").mkdir(parents=True, exist_ok=True)
        self._thread_lock = threading.Lock()

    # ----- locking --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock, open(self.root / ".lock", "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # ----- reads ----------------------------------------------------------------------------
    def _id_path(self, sid: int) -> Path:
        return self.root / "ids" / f"{int(sid)}.json"

    def _subject_path(self, subject: str) -> Path:
        if not isinstance(subject, str) or not _SUBJECT_RE.fullmatch(subject):
            raise SchemaRegistryError(f"subject: invalid name {subject!r} (letters, digits, '.', '_', '-')")
        return self.root / "subjects" / f"{subject}.json"

    def ids(self) -> list[int]:
        return sorted(int(p.stem) for p in (self.root / "ids").glob("*.json"))

    def subjects(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "subjects").glob("*.json"))

    def schema(self, sid: int) -> dict:
        """The schema registered under ``sid``; :class:`SchemaRegistryError` if unknown."""
        try:
            return _read_json(self._id_path(sid))["schema"]
        except FileNotFoundError:
            raise SchemaRegistryError(f"schema id: unknown id {sid}") from None

    def subjects_of(self, sid: int) -> list[str]:
        try:
            return list(_read_json(self._id_path(sid))["subjects"])
        except FileNotFoundError:
            raise SchemaRegistryError(f"schema id: unknown id {sid}") from None

    def versions(self, subject: str) -> list[int]:
        """The schema ids of the subject's versions, oldest first."""
        path = self._subject_path(subject)
        try:
            return list(_read_json(path)["versions"])
        except FileNotFoundError:
            raise SchemaRegistryError(f"subject: unknown subject {subject!r}") from None

    def latest(self, subject: str) -> tuple[int, dict]:
        sid = self.versions(subject)[-1]
        return sid, self.schema(sid)

    # ----- writes ---------------------------------------------------------------------------
    def register(self, subject: str, schema: dict | str) -> int:
        """Register ``schema`` under ``subject`` and return its id.

        Identical schema (same canonical JSON) -> the existing id, no new version. A new schema
        for an existing subject must be BACKWARD compatible with the latest version.
        """
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as exc:
                raise SchemaRegistryError(f"schema: not valid JSON ({exc})") from None
        try:
            fastavro.parse_schema(schema, _write_hint=False, _force=True)
        except Exception as exc:  # fastavro raises several types for bad schemas
            raise SchemaRegistryError(f"schema: not a valid Avro schema ({exc})") from None
        subject_path = self._subject_path(subject)
        ident = canonical_json(schema)
        with self._locked():
            versions = _read_json(subject_path)["versions"] if subject_path.exists() else []
            for sid in versions:
                if canonical_json(self.schema(sid)) == ident:
                    return sid
            if versions:
                problems = backward_problems(reader=schema, writer=self.schema(versions[-1]))
                if problems:
                    raise IncompatibleSchemaError(subject, problems)
            sid = self._find_id(ident)
            if sid is None:
                existing = self.ids()
                sid = (existing[-1] + 1) if existing else 1
                record = {"id": sid, "schema": schema, "subjects": [subject]}
            else:
                record = _read_json(self._id_path(sid))
                if subject not in record["subjects"]:
                    record["subjects"].append(subject)
            _atomic_write_json(self._id_path(sid), record)
            _atomic_write_json(subject_path, {"subject": subject, "versions": versions + [sid]})
            return sid

    def _find_id(self, ident: str) -> int | None:
        for sid in self.ids():
            if canonical_json(self.schema(sid)) == ident:
                return sid
        return None


# ----- BACKWARD compatibility (Avro schema resolution: can `reader` read `writer` data?) --------

_PROMOTIONS = {
    "int": {"int", "long", "float", "double"},
    "long": {"long", "float", "double"},
    "float": {"float", "double"},
    "string": {"string", "bytes"},
    "bytes": {"bytes", "string"},
}
_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


class _Names:
    """Named types (records, enums, fixed) seen while walking a schema, by full name."""

    def __init__(self) -> None:
        self.types: dict[str, dict] = {}

    def resolve(self, schema: Any, namespace: str | None) -> tuple[Any, str | None]:
        if isinstance(schema, str) and schema not in _PRIMITIVES:
            full = schema if "." in schema or not namespace else f"{namespace}.{schema}"
            found = self.types.get(full) or self.types.get(schema)
            if found is None:
                raise SchemaRegistryError(f"schema: unknown named type {schema!r}")
            return found, found.get("namespace", namespace)
        if isinstance(schema, dict) and schema.get("type") in ("record", "error", "enum", "fixed"):
            name = schema["name"]
            ns = schema.get("namespace", namespace)
            full = name if "." in name or not ns else f"{ns}.{name}"
            self.types.setdefault(full, schema)
            if "." in name:
                ns = name.rsplit(".", 1)[0]
            return schema, ns
        return schema, namespace


def _type_name(schema: Any) -> str:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        return "union"
    t = schema.get("type")
    if isinstance(t, (dict, list)):
        return _type_name(t)
    return t


def backward_problems(reader: Any, writer: Any) -> list[str]:
    """Why data written with ``writer`` cannot be read with ``reader`` (empty list = compatible)."""
    problems: list[str] = []
    _check(reader, writer, _Names(), _Names(), None, None, "$", problems, set())
    return problems


def _check(reader, writer, rn: _Names, wn: _Names, rns, wns, path: str, out: list[str], seen: set) -> None:
    reader, rns = rn.resolve(reader, rns)
    writer, wns = wn.resolve(writer, wns)
    # A {"type": <type>} wrapper around a primitive or another schema.
    if isinstance(reader, dict) and isinstance(reader.get("type"), (dict, list)):
        return _check(reader["type"], writer, rn, wn, rns, wns, path, out, seen)
    if isinstance(writer, dict) and isinstance(writer.get("type"), (dict, list)):
        return _check(reader, writer["type"], rn, wn, rns, wns, path, out, seen)
    rt, wt = _type_name(reader), _type_name(writer)

    if wt == "union":
        for branch in writer:
            sub: list[str] = []
            _check(reader, branch, rn, wn, rns, wns, path, sub, seen)
            if sub:
                out.append(f"{path}: writer union branch {_type_name(branch)!r} cannot be read ({sub[0]})")
        return
    if rt == "union":
        for branch in reader:
            sub = []
            _check(branch, writer, rn, wn, rns, wns, path, sub, seen)
            if not sub:
                return
        out.append(f"{path}: no branch of the reader union {[_type_name(b) for b in reader]} reads writer type {wt!r}")
        return
    if rt in _PRIMITIVES or wt in _PRIMITIVES:
        if rt not in _PROMOTIONS.get(wt, {wt}):
            out.append(f"{path}: type changed from {wt!r} to {rt!r} (not an Avro promotion)")
        return
    if rt != wt:
        out.append(f"{path}: type changed from {wt!r} to {rt!r}")
        return
    if rt in ("record", "error"):
        key = (id(reader), id(writer))
        if key in seen:  # recursive types: assume compatible on the second visit
            return
        seen.add(key)
        writer_fields = {f["name"]: f for f in writer.get("fields", [])}
        for f in writer.get("fields", []):
            for alias in f.get("aliases", []):
                writer_fields.setdefault(alias, f)
        for field in reader.get("fields", []):
            name = field["name"]
            fpath = f"{path}.{name}" if path != "$" else name
            wf = writer_fields.get(name)
            if wf is None:
                for alias in field.get("aliases", []):
                    wf = writer_fields.get(alias)
                    if wf is not None:
                        break
            if wf is None:
                if "default" not in field:
                    out.append(f"field {fpath!r}: added without a default (old data has no value for it)")
                continue
            _check(field["type"], wf["type"], rn, wn, rns, wns, fpath, out, seen)
    elif rt == "enum":
        missing = [s for s in writer.get("symbols", []) if s not in reader.get("symbols", [])]
        if missing and "default" not in reader:
            out.append(f"{path}: enum symbols {missing} removed without an enum default")
    elif rt == "array":
        _check(reader["items"], writer["items"], rn, wn, rns, wns, f"{path}[]", out, seen)
    elif rt == "map":
        _check(reader["values"], writer["values"], rn, wn, rns, wns, f"{path}{{}}", out, seen)
    elif rt == "fixed":
        if reader.get("size") != writer.get("size"):
            out.append(f"{path}: fixed size changed from {writer.get('size')} to {reader.get('size')}")


# ----- the codec ---------------------------------------------------------------------------------

_OBJECT_REPR = re.compile(r"<[^<>]*? at 0x[0-9a-fA-F]+>")


def _avro_failure(exc: Exception) -> str:
    """Why fastavro could not read a body, in plain words (its messages can carry reprs such as
    ``<_io.BytesIO object at 0x...>`` and Python exception names)."""
    if isinstance(exc, (EOFError, IndexError, StopIteration)):
        return "the bytes end before the record does (truncated, or written with another schema)"
    if isinstance(exc, UnicodeDecodeError):
        return "a string field is not valid UTF-8"
    detail = _OBJECT_REPR.sub("the input", str(exc)).strip()
    return f"the bytes do not decode as this schema ({detail})" if detail else "the bytes do not decode as this schema"


class AvroCodec:
    """Encode/decode records in the Confluent wire format against a registry.

    Parsed schemas are cached by id (ids are immutable); a subject's latest id is cached on first
    use (call :meth:`refresh` to pick up newly registered versions).
    """

    def __init__(self, registry: FileSchemaRegistry, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 validate: bool = True):
        self.registry = registry
        self.max_bytes = max_bytes
        self.validate = validate
        self._parsed: dict[int, Any] = {}
        self._subject_of: dict[int, str] = {}
        self._latest: dict[str, int] = {}

    def refresh(self) -> None:
        self._latest.clear()

    def _parsed_schema(self, sid: int) -> Any:
        parsed = self._parsed.get(sid)
        if parsed is None:
            parsed = fastavro.parse_schema(self.registry.schema(sid), _force=True)
            self._parsed[sid] = parsed
            self._subject_of[sid] = self.registry.subjects_of(sid)[0]
        return parsed

    def schema_id(self, subject: str) -> int:
        sid = self._latest.get(subject)
        if sid is None:
            sid = self.registry.latest(subject)[0]
            self._latest[subject] = sid
        return sid

    def encode(self, subject: str, record: dict, *, schema_id: int | None = None) -> bytes:
        """``record`` as wire bytes with the subject's latest schema (or ``schema_id``)."""
        sid = self.schema_id(subject) if schema_id is None else schema_id
        parsed = self._parsed_schema(sid)
        if self.validate:
            _validate_record(parsed, record, subject)
        buf = io.BytesIO()
        buf.write(HEADER.pack(MAGIC_BYTE, sid))
        try:
            fastavro.schemaless_writer(buf, parsed, record)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise EncodeError(f"{subject}: record does not fit schema {sid}: {exc}") from None
        return buf.getvalue()

    def decode(self, data: bytes) -> tuple[str, dict]:
        """``(subject, record)`` of wire bytes; :class:`DecodeError` names what is wrong."""
        subject, record, _ = self.decode_with_id(data)
        return subject, record

    def decode_with_id(self, data: bytes) -> tuple[str, dict, int]:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise DecodeError("not_bytes", f"expected bytes, got {type(data).__name__}")
        n = len(data)
        if n > self.max_bytes:
            raise DecodeError("oversize", f"payload of {n} bytes exceeds the limit of {self.max_bytes}")
        if n < HEADER.size:
            raise DecodeError("too_short", f"{n} bytes; a wire-format record has at least {HEADER.size}")
        magic, sid = HEADER.unpack_from(data)
        if magic != MAGIC_BYTE:
            raise DecodeError("bad_magic", f"magic byte is {magic & 0xFF}, expected {MAGIC_BYTE}")
        try:
            parsed = self._parsed_schema(sid)
        except SchemaRegistryError:
            raise DecodeError("unknown_schema", f"schema id {sid} is not in the registry") from None
        buf = io.BytesIO(data)
        buf.seek(HEADER.size)
        try:
            record = fastavro.schemaless_reader(buf, parsed)
        except Exception as exc:  # EOFError, StopIteration, UnicodeDecodeError, ValueError, ...
            raise DecodeError("invalid_body", f"Avro body does not match schema {sid}: {_avro_failure(exc)}") from None
        if buf.tell() != n:
            raise DecodeError("invalid_body", f"{n - buf.tell()} trailing bytes after the Avro body of schema {sid}")
        return self._subject_of[sid], record, sid


def _validate_record(parsed: Any, record: Any, subject: str) -> None:

    if isinstance(parsed, dict) and parsed.get("type") == "record":
        if not isinstance(record, dict):
            raise EncodeError(f"{subject}: expected a record (dict), got {type(record).__name__}")
        for field in parsed["fields"]:
            if field["name"] not in record and "default" not in field:
                raise EncodeError(f"{subject}: field {field['name']!r}: missing (no default in the schema)")
    try:
        validate(record, parsed, raise_errors=True)
    except ValidationError as exc:
        fields = []
        for err in exc.errors:
            # fastavro reports "<record>.<field> is <value> of type <type> expected <schema>"
            fields.append(str(err))
        raise EncodeError(f"{subject}: invalid record: {'; '.join(fields)}") from None


def load_builtin_schemas(registry: FileSchemaRegistry) -> dict[str, int]:
    """Register the shipped ``schemas/avro/*.avsc`` files; returns ``{name: schema id}``.

    Each file goes to its subject in :data:`BUILTIN_SUBJECTS` (``<name>-value`` otherwise).
    """
    out = {}
    for path in sorted(AVRO_DIR.glob("*.avsc")):
        name = path.stem
        subject = BUILTIN_SUBJECTS.get(name, f"{name}-value")
        out[name] = registry.register(subject, _read_json(path))
    return out


def builtin_schema(name: str) -> dict:
    """The shipped schema ``schemas/avro/<name>.avsc`` as a dict."""
    path = AVRO_DIR / f"{name}.avsc"
    if not path.exists():
        raise SchemaRegistryError(f"schema: no built-in schema {name!r}; have {sorted(p.stem for p in AVRO_DIR.glob('*.avsc'))}")
    return _read_json(path)


__all__ = [
    "AVRO_DIR", "AvroCodec", "BUILTIN_SUBJECTS", "DEFAULT_MAX_BYTES", "DecodeError", "EncodeError",
    "FileSchemaRegistry", "IncompatibleSchemaError", "MAGIC_BYTE", "SchemaRegistryError",
    "backward_problems", "builtin_schema", "canonical_json", "load_builtin_schemas",
]
