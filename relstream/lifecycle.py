"""Model lifecycle: which version of a model takes which traffic (pure logic + the state file).

Every export of a model is a numbered Triton version in one model directory. The routing state
says which versions take traffic behind the one endpoint that never changes:

* ``primary``         the version that answers everybody not in the canary cohort;
* ``canary``          an optional second version, answering ``canary_percent`` % of entities;
* ``previous``        the primary before the last promotion (what ``rollback`` goes back to).

Traffic is split by a stable hash of the entity id (blake2b, not Python's salted ``hash``), so
one entity always sees one version, in every process and after every restart; ramping the
canary from 10 % to 50 % keeps the first 10 % in the canary. The hash is salted with the canary
version so each rollout draws a fresh cohort instead of the same customers every time.

State transitions are pure functions ``(state, ...) -> new state``; they raise
:class:`LifecycleError` (naming the rule) on a transition that is not allowed. The state lives in
a small JSON file (default ``<model_repository>/<model>/routing.json``: Triton ignores files
other than ``config.pbtxt`` in a model directory), written atomically, so the scorer and the HTTP
server read it with :func:`load_routing` and call :func:`route` per request.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

ROUTING_FILE = "routing.json"
BUCKETS = 10_000  # split granularity: 0.01 %
STATE_FORMAT = 1


class LifecycleError(ValueError):
    """A transition or state that breaks a lifecycle rule; the message names the rule."""


@dataclass(frozen=True)
class VersionInfo:
    """What the control plane recorded about a version when it was deployed."""

    fingerprint: str = ""
    deployed_at_ns: int = 0
    embeddings_newest_ns: int | None = None
    warmup_requests: int = 0
    source: str = ""  # e.g. "export", "refresh-embeddings from 3"


@dataclass(frozen=True)
class RoutingState:
    model: str
    primary: int | None = None
    canary: int | None = None
    canary_percent: float = 0.0
    previous: int | None = None
    updated_at_ns: int = 0
    versions: Mapping[int, VersionInfo] = field(default_factory=dict)
    history: tuple[Mapping[str, Any], ...] = ()

    # ----- derived ------------------------------------------------------------------------
    @property
    def serving_versions(self) -> tuple[int, ...]:
        """Versions that must be loaded in Triton (primary first)."""
        return tuple(v for v in (self.primary, self.canary) if v is not None)

    def split(self) -> dict[int, float]:
        """Share of entities per serving version, in percent."""
        if self.primary is None:
            return {}
        if self.canary is None:
            return {self.primary: 100.0}
        return {self.primary: 100.0 - self.canary_percent, self.canary: self.canary_percent}

    # ----- (de)serialisation --------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "model": self.model,
            "primary": self.primary,
            "canary": self.canary,
            "canary_percent": self.canary_percent,
            "previous": self.previous,
            "updated_at_ns": self.updated_at_ns,
            "versions": {str(v): asdict(info) for v, info in sorted(self.versions.items())},
            "history": list(self.history),
        }

    @classmethod
    def from_dict(cls, raw: Any, where: str = "routing") -> "RoutingState":
        if not isinstance(raw, Mapping):
            raise LifecycleError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        if raw.get("format", STATE_FORMAT) != STATE_FORMAT:
            raise LifecycleError(f"{where}.format: unsupported state format {raw.get('format')!r}")
        model = raw.get("model")
        if not isinstance(model, str) or not model:
            raise LifecycleError(f"{where}.model: expected the model name, got {model!r}")

        def version(key: str) -> int | None:
            value = raw.get(key)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LifecycleError(f"{where}.{key}: expected a version number >= 1, got {value!r}")
            return value

        pct = raw.get("canary_percent", 0.0)
        if isinstance(pct, bool) or not isinstance(pct, (int, float)):
            raise LifecycleError(f"{where}.canary_percent: expected a number, got {pct!r}")
        versions = {}
        for key, info in (raw.get("versions") or {}).items():
            try:
                versions[int(key)] = VersionInfo(**info)
            except (TypeError, ValueError) as exc:
                raise LifecycleError(f"{where}.versions.{key}: {exc}") from None
        state = cls(model=model, primary=version("primary"), canary=version("canary"),
                    canary_percent=float(pct), previous=version("previous"),
                    updated_at_ns=int(raw.get("updated_at_ns", 0)), versions=versions,
                    history=tuple(raw.get("history") or ()))
        validate(state, where)
        return state


def validate(state: RoutingState, where: str = "routing") -> None:
    if not 0.0 <= state.canary_percent <= 100.0:
        raise LifecycleError(f"{where}.canary_percent: must be within [0, 100], got {state.canary_percent}")
    if state.canary is not None and state.primary is None:
        raise LifecycleError(f"{where}.canary: a canary needs a primary version")
    if state.canary is not None and state.canary == state.primary:
        raise LifecycleError(f"{where}.canary: version {state.canary} is already the primary")
    if state.canary is None and state.canary_percent != 0.0:
        raise LifecycleError(f"{where}.canary_percent: {state.canary_percent} without a canary version")


# ----- routing -------------------------------------------------------------------------------

def entity_bucket(entity_id: Any, salt: str = "") -> int:
    """A stable bucket in ``[0, BUCKETS)`` for an entity id (same in every process and run).

    Integers and their decimal strings share a bucket (``42`` and ``"42"``): an id keeps its
    cohort whether it arrives from Avro (int) or JSON (string).
    """
    raw = entity_id if isinstance(entity_id, bytes) else str(entity_id).encode("utf-8")
    digest = hashlib.blake2b(raw, digest_size=8, person=b"relstream-route",
                             key=salt.encode("utf-8")).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def route(entity_id: Any, state: RoutingState | None) -> int | None:
    """The model version that scores ``entity_id``; ``None`` = no routing state (Triton's default)."""
    if state is None or state.primary is None:
        return None
    if state.canary is None or state.canary_percent <= 0.0:
        return state.primary
    cut = round(state.canary_percent * BUCKETS / 100.0)
    return state.canary if entity_bucket(entity_id, f"canary-{state.canary}") < cut else state.primary


SLOT_SEPARATOR = "__v"


def triton_model_name(model: str, version: int) -> str:
    """The Triton model that serves ``version`` of ``model`` (one Triton model per live version).

    Loading a version as its own Triton model never touches the others: re-loading one model
    with a changed ``version_policy`` re-initialises the running version too (measured: its
    statistics restart, the load takes twice as long); a per-version model loads beside it
    (bench/bench_canary_rollout.py).
    """
    return f"{model}{SLOT_SEPARATOR}{int(version)}"


def parse_triton_model_name(name: str, model: str) -> int | None:
    """The version of a per-version Triton model name of ``model``; None for other names."""
    prefix = f"{model}{SLOT_SEPARATOR}"
    tail = name[len(prefix):] if name.startswith(prefix) else ""
    return int(tail) if tail.isdigit() else None


def route_target(entity_id: Any, state: RoutingState | None) -> tuple[str, int] | None:
    """``(triton model name, version)`` to score ``entity_id`` with; None without routing state."""
    version = route(entity_id, state)
    if version is None:
        return None
    return triton_model_name(state.model, version), version


def routing_entity(plan, fact_row: Mapping[str, Any]) -> Any:
    """The id a fact row is routed by: its first embedding key (the customer, for fraud)."""
    col = plan.embedding_keys[0].column if plan.embedding_keys else plan.hops[0].key.source.column
    if col not in fact_row:
        raise LifecycleError(f"{plan.fact_table}.{col}: missing field (needed to route the request)")
    return fact_row[col]


# ----- transitions (pure) --------------------------------------------------------------------

def _check_percent(percent: float) -> float:
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0.0 < percent <= 100.0:
        raise LifecycleError(f"canary percent must be within (0, 100], got {percent!r}")
    return float(percent)


def _event(state: RoutingState, action: str, now_ns: int, **details) -> tuple:
    entry = {"at_ns": now_ns, "action": action, **details}
    return (state.history + (entry,))[-50:]  # a short audit trail, not a log store


def deploy(state: RoutingState, version: int, info: VersionInfo, now_ns: int,
           canary_percent: float | None = None) -> RoutingState:
    """Bring ``version`` in: as the primary when there is none, else as (or ramping) the canary.

    ``canary_percent=None`` with an existing primary is refused: replacing the primary outright
    is ``deploy --canary 100`` followed by ``promote``, so every switch is observable first.
    """
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise LifecycleError(f"version must be an integer >= 1, got {version!r}")
    versions = {**state.versions, version: info}
    if state.primary is None:
        if canary_percent is not None:
            raise LifecycleError("no primary version yet: deploy the first version without --canary")
        return replace(state, primary=version, versions=versions, updated_at_ns=now_ns,
                       history=_event(state, "deploy", now_ns, version=version, role="primary"))
    if version == state.primary:
        raise LifecycleError(f"version {version} is already the primary")
    if canary_percent is None:
        raise LifecycleError(f"primary {state.primary} is serving: deploy {version} with --canary PERCENT, "
                             "then promote")
    pct = _check_percent(canary_percent)
    if state.canary is not None and state.canary != version:
        raise LifecycleError(f"canary {state.canary} is already in progress: promote or rollback it before "
                             f"deploying {version}")
    action = "ramp" if state.canary == version else "deploy"
    return replace(state, canary=version, canary_percent=pct, versions=versions, updated_at_ns=now_ns,
                   history=_event(state, action, now_ns, version=version, role="canary", percent=pct))


def set_canary_percent(state: RoutingState, percent: float, now_ns: int) -> RoutingState:
    if state.canary is None:
        raise LifecycleError("no canary in progress")
    pct = _check_percent(percent)
    return replace(state, canary_percent=pct, updated_at_ns=now_ns,
                   history=_event(state, "ramp", now_ns, version=state.canary, percent=pct))


def promote(state: RoutingState, now_ns: int) -> RoutingState:
    """The canary becomes the primary; the old primary is remembered for rollback."""
    if state.canary is None:
        raise LifecycleError("no canary to promote: deploy VERSION --canary PERCENT first")
    return replace(state, primary=state.canary, previous=state.primary, canary=None, canary_percent=0.0,
                   updated_at_ns=now_ns,
                   history=_event(state, "promote", now_ns, version=state.canary, replaced=state.primary))


def rollback(state: RoutingState, now_ns: int) -> RoutingState:
    """Undo the last step: drop a running canary, else return to the previous primary."""
    if state.canary is not None:
        return replace(state, canary=None, canary_percent=0.0, updated_at_ns=now_ns,
                       history=_event(state, "rollback", now_ns, dropped=state.canary, primary=state.primary))
    if state.previous is None:
        raise LifecycleError("nothing to roll back: no canary and no previous primary")
    return replace(state, primary=state.previous, previous=None, updated_at_ns=now_ns,
                   history=_event(state, "rollback", now_ns, dropped=state.primary, primary=state.previous))


# ----- the state file (I/O edge) ---------------------------------------------------------------

def default_routing_path(model_repository: str | Path, model: str) -> Path:
    return Path(model_repository) / model / ROUTING_FILE


def load_routing(path: str | Path) -> RoutingState | None:
    """The routing state in ``path``; ``None`` when the file does not exist (nothing deployed)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LifecycleError(f"{path}: not valid JSON ({exc})") from None
    return RoutingState.from_dict(raw, where=str(path))


def save_routing(path: str | Path, state: RoutingState) -> None:
    """Write atomically (temp file + rename): readers see the old or the new state, never half."""
    validate(state)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".routing-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(state.to_dict(), fh, indent=2, sort_keys=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RoutingWatcher:
    """Re-reads the state file when it changes, at most every ``interval`` seconds.

    For request paths: ``watcher.current()`` costs one ``stat`` per interval, so a promote or
    rollback reaches every scorer process within ``interval`` seconds without a restart.
    """

    def __init__(self, path: str | Path, interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.path = Path(path)
        self.interval = interval
        self._clock = clock
        self._checked = float("-inf")
        self._stamp: tuple[int, int] | None = None
        self._state: RoutingState | None = None

    def current(self) -> RoutingState | None:
        now = self._clock()
        if now - self._checked < self.interval:
            return self._state
        self._checked = now
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_ino)
        except FileNotFoundError:
            self._stamp, self._state = None, None
            return None
        if stamp != self._stamp:
            try:
                self._state = load_routing(self.path)
                self._stamp = stamp
            except LifecycleError:
                pass  # keep serving with the last good state; the operator sees the error in status
        return self._state

    def route(self, entity_id: Any) -> int | None:
        return route(entity_id, self.current())

    def target(self, entity_id: Any) -> tuple[str, int] | None:
        return route_target(entity_id, self.current())


__all__ = [
    "BUCKETS", "LifecycleError", "ROUTING_FILE", "RoutingState", "RoutingWatcher", "VersionInfo",
    "SLOT_SEPARATOR", "default_routing_path", "deploy", "parse_triton_model_name", "route_target",
    "triton_model_name", "entity_bucket", "load_routing", "promote", "rollback", "route",
    "routing_entity", "save_routing", "set_canary_percent", "validate",
]
