"""Redis window store: one sorted set per (hop, entity), rows ordered by their bytes.

Layout and why:

* key ``<prefix>:{<hop id>:<entity>}``. The braces are a Redis Cluster hash tag: every command on a
  window touches one key in one slot, and different entities spread over the cluster. The hop id
  is 8 hex chars of a hash of the hop key *and its row layout* (columns + dtypes), so keys stay
  short and a plan change that changes the layout never decodes old rows (they expire by TTL).
* members are the packed rows of :mod:`rti_store.codec` (big-endian biased time || id || values),
  all with score 0, so lexicographic order = (event time, event id) order at exact ns precision
  (float scores hold 53 bits; ns timestamps need 61).
* append = one Lua script call per touched window (atomic per key): idempotency check by the
  16-byte (time, id) prefix, ZADD, trim by rank (count cap) and by lex range (age cap), PEXPIRE.
  All windows of a batch go out in one pipeline (one round trip; on a cluster client redis-py
  splits the pipeline per node). Appends are idempotent, so a failed batch can simply be retried.
* as-of read = ``ZREVRANGEBYLEX key (<as_of> [<lo> LIMIT 0 max_len``: the newest ``max_len``
  rows with ``lo <= t < as_of``; all windows of a read in one pipeline, decoded per hop in one
  numpy pass.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import defaultdict
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import redis

from schemas.interactions import HopRows, Window
from schemas.plan import ServingPlan

from rti_store.base import (AppendItem, BaseWindowStore, Completeness, StoreMarker, StoreUnavailable, WindowKey,
                            completeness_of, parse_marker, pending_field, step_field)
from rti_store.codec import STORAGE_FORMAT, time_key
from rti_store.logic import prune_batch, prune_grouped
from rti_store.memory import _decode_grouped
from rti_store.redis_scripts import (APPEND_LUA, CLAIM_LUA, FINISH_LUA, MARK_COMPLETE_LUA,
                                     PACKED_APPEND_LUA)

_TAG_ESCAPES = {ord("{"): "%7B", ord("}"): "%7D", ord("%"): "%25"}


def entity_token(entity: int | bytes) -> bytes:
    """The entity part of a key: decimal for ints, bytes with braces escaped for strings."""
    if isinstance(entity, int):
        return str(entity).encode()
    if b"{" in entity or b"}" in entity or b"%" in entity:
        return entity.decode("utf-8", "surrogateescape").translate(_TAG_ESCAPES).encode("utf-8", "surrogateescape")
    return entity


class RedisWindowStore(BaseWindowStore):
    """Windows in Redis (standalone or Cluster client); see the module docstring for the layout.

    ``chunk_keys`` bounds how many windows one Lua call touches: a Lua call blocks the Redis
    event loop, so smaller chunks keep concurrent reads fast, larger ones cost fewer calls.
    """

    def __init__(self, plan: ServingPlan, client_or_url: Any, horizon_ns: int | None = None,
                 ttl_s: float | None = 7 * 86400, key_prefix: str = "rs",
                 clock: Callable[[], float] = time.time, chunk_keys: int = 256,
                 socket_timeout_s: float | None = 10.0):
        super().__init__(plan, horizon_ns=horizon_ns, ttl_s=ttl_s)
        if isinstance(client_or_url, str):
            # a hung Redis must surface as StoreUnavailable, not block forever (URL clients only;
            # a client passed in keeps its own timeouts)
            self.client = redis.Redis.from_url(client_or_url, socket_timeout=socket_timeout_s,
                                               socket_connect_timeout=socket_timeout_s)
            self._owns_client = True
        else:
            self.client = client_or_url
            self._owns_client = False
        pool_kwargs = getattr(getattr(self.client, "connection_pool", None), "connection_kwargs", {}) or {}
        if pool_kwargs.get("decode_responses"):
            raise ValueError("client_or_url: the window store needs a client with decode_responses=False "
                             "(rows are binary)")
        if not key_prefix or "{" in key_prefix or "}" in key_prefix:
            raise ValueError(f"key_prefix: must be non-empty and brace-free, got {key_prefix!r}")
        if chunk_keys < 1:
            raise ValueError(f"chunk_keys: must be >= 1, got {chunk_keys}")
        self.key_prefix = key_prefix
        # named after the stored form: a store written in an older form reads as lost (and is
        # rebuilt from Kafka), never as complete windows that are in fact empty
        self.marker_key = f"{key_prefix}:state:{STORAGE_FORMAT}".encode()
        self.chunk_keys = chunk_keys
        self.clock = clock  # Redis expires keys by its own clock; kept for interface symmetry
        self._cluster = _is_cluster(self.client)
        # the Lua scripts' first arguments per hop: age cap as two 32-bit halves, TTL in ms (label
        # keys: their own horizon and a TTL of at least it, rti_store.base)
        self._head: dict[str, tuple[bytes, bytes, bytes]] = {}
        for k in self.codecs:
            ttl, h = self.ttl_of(k), self.horizons[k]
            self._head[k] = (str(h >> 32).encode(), str(h & 0xFFFFFFFF).encode(),
                             b"0" if ttl is None else str(max(1, int(round(ttl * 1000)))).encode())
        self._key_heads = {k: f"{key_prefix}:{{{c.layout_id}:" for k, c in self.codecs.items()}
        self._int_entities = {k: self.plan.column_dtype(c.hop.key.target.table, c.hop.key.target.column)
                              in ("int64", "timestamp") for k, c in self.codecs.items()}
        self._max_len = {k: str(c.hop.max_len).encode() for k, c in self.codecs.items()}
        # hops of fixed-width rows keep a window as one string of sorted rows; others a sorted set
        self._packed = {k: not c.string_columns for k, c in self.codecs.items()}
        self._width = {k: str(c.fixed_size).encode() for k, c in self.codecs.items()}
        self._shas: dict[str, bytes] = {}

    # ----- keys -----------------------------------------------------------------------------
    def redis_key(self, hop_key: str, entity_id: Any) -> bytes:
        """The Redis key of one window: ``<prefix>:{<hop id>:<entity>}``."""
        head = self._key_heads.get(hop_key)
        if head is None:
            self.codec(hop_key)  # raises the RowError naming the unknown hop key
        if type(entity_id) is int and self._int_entities[hop_key]:
            return f"{head}{entity_id}}}".encode()  # hot path: plain int ids
        ent = self.entity(hop_key, entity_id)
        return head.encode() + (str(ent).encode() if type(ent) is int else entity_token(ent)) + b"}"

    _keyed = redis_key

    def _keys_of(self, hop_key: str, entities: np.ndarray) -> list[bytes]:
        """:meth:`redis_key` of many entities of one hop (already coerced: int64 or bytes)."""
        head = self._key_heads[hop_key]
        if entities.dtype == object:
            return [head.encode() + entity_token(e) + b"}" for e in entities.tolist()]
        if not len(entities):
            return []
        # one join and one split instead of a format per key (decimal ids never hold a NUL)
        return (head + ("}\0" + head).join(map(str, entities.tolist())) + "}").encode().split(b"\0")

    def _groups(self, keys: Sequence[bytes]) -> list[list[int]]:
        """Indices of ``keys`` per Lua call: same slot on a cluster, chunks otherwise."""
        if self._cluster:
            from redis.cluster import key_slot

            by_slot: dict[int, list[int]] = defaultdict(list)
            for i, k in enumerate(keys):
                by_slot[key_slot(k)].append(i)
            groups = list(by_slot.values())
        else:
            groups = [list(range(len(keys)))]
        n = self.chunk_keys
        return [g[i:i + n] for g in groups for i in range(0, len(g), n)]

    # ----- scripts --------------------------------------------------------------------------
    def _sha(self, script: str) -> bytes:
        sha = self._shas.get(script)
        if sha is None:
            sha = self._call(lambda: self.client.script_load(script))
            if isinstance(sha, dict):  # some cluster clients answer per node
                sha = next(iter(sha.values()))
            sha = sha if isinstance(sha, bytes) else str(sha).encode()
            self._shas[script] = sha
        return sha

    def _eval_many(self, script: str, calls: list[tuple[list[bytes], list[bytes]]]) -> list:
        """Run ``script`` once per (keys, args) call, all in one round trip; reload on NOSCRIPT."""
        return self._eval_scripts([(script, keys, args) for keys, args in calls])

    def _eval_scripts(self, calls: list[tuple[str, list[bytes], list[bytes]]]) -> list:
        """Run each (script, keys, args) call, all in one round trip; reload on NOSCRIPT.

        Appends are idempotent, so a retry after NOSCRIPT (or a lost connection) is always safe.
        """
        for attempt in range(2):
            shas = {script: self._sha(script) for script in {c[0] for c in calls}}
            try:
                return self._roundtrip([("EVALSHA", shas[script], len(keys), *keys, *args)
                                        for script, keys, args in calls])
            except redis.exceptions.NoScriptError:
                # Redis restarted, failed over or ran SCRIPT FLUSH: load again and retry.
                for script in shas:
                    self._shas.pop(script, None)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _roundtrip(self, commands: list[tuple]) -> list:
        """Send many commands in one write and read all replies (one round trip).

        On a standalone client this packs the commands with hiredis and talks to one pooled
        connection directly: redis-py's Pipeline object costs ~10 us per command in Python,
        which is most of the time of a 64-window read. Cluster clients go through their own
        pipeline, which splits the commands per node.
        """
        if self._cluster:
            def run():
                pipe = self.client.pipeline(transaction=False)
                for cmd in commands:
                    pipe.execute_command(*cmd)
                return pipe.execute()
            return self._call(run)
        packed = _pack_commands(commands)
        pool = self.client.connection_pool
        for attempt in range(2):
            try:
                conn = pool.get_connection()
            except redis.exceptions.TimeoutError as exc:
                raise StoreUnavailable(f"redis: {exc}") from exc
            except redis.exceptions.ConnectionError as exc:
                if attempt:
                    raise StoreUnavailable(f"redis: {exc}") from exc
                continue
            try:
                conn.send_packed_command([packed])
                replies = [conn.read_response() for _ in commands]
                return replies
            except redis.exceptions.TimeoutError as exc:
                conn.disconnect()  # no retry: the caller's deadline (socket_timeout) is spent
                raise StoreUnavailable(f"redis: {exc}") from exc
            except redis.exceptions.ConnectionError as exc:
                conn.disconnect()
                if attempt:  # one reconnect (stale pooled socket after a Redis restart)
                    raise StoreUnavailable(f"redis: {exc}") from exc
            except redis.exceptions.ResponseError as exc:
                conn.disconnect()  # replies after the failed one are unread: drop the socket
                self._call(lambda: _reraise(exc))
            except BaseException:
                conn.disconnect()
                raise
            finally:
                pool.release(conn)
        raise AssertionError("unreachable")

    # ----- append ---------------------------------------------------------------------------
    def append(self, items: Sequence[AppendItem]) -> int:
        rows: dict[bytes, list[bytes]] = {}
        hop_of: dict[bytes, str] = {}
        codecs = self.codecs
        for hop_key, entity_id, interaction in items:  # encode all first: bad input sends nothing
            key = self.redis_key(hop_key, entity_id)
            member = codecs[hop_key].encode(interaction)
            got = rows.get(key)
            if got is None:
                rows[key] = [member]
                hop_of[key] = hop_key
            else:
                got.append(member)
        for k, members in rows.items():
            if len(members) > 1:  # sorted, distinct: what the Lua scripts expect
                rows[k] = prune_batch(members, codecs[hop_of[k]].hop.max_len, self.horizons[hop_of[k]])
        return self._send(rows, hop_of)

    def append_rows(self, rows: Sequence[HopRows], items: Sequence[AppendItem] = ()) -> int:
        """:meth:`append` of window rows given as columns (vectorised encoding and pruning)."""
        if items or self._cluster:  # merged per window with the per-row items / grouped per slot
            return self._send(*self.encode_rows(rows, items))
        calls = self.encode_calls(rows)
        return sum(int(r) for r in self._eval_scripts(calls)) if calls else 0

    def encode_calls(self, rows: Sequence[HopRows]) -> list[tuple[str, list[bytes], list[Any]]]:
        """The Lua calls of :meth:`append_rows` (standalone Redis, no per-row items), built a hop
        at a time with numpy: the rows of every window pruned, sorted and encoded back to back."""
        calls = []
        for hop in rows:
            if not len(hop):
                continue
            hop_key = hop.hop_key
            codec = self.codec(hop_key)
            head_args = list(self._head[hop_key])
            entity = hop.entity
            if entity.dtype == object:
                entity = np.array([self.entity(hop_key, e) for e in entity.tolist()], dtype=object)
            keep, bounds, first = prune_grouped(entity, hop.event_time, hop.event_id, codec.hop.max_len,
                                                self.horizons[hop_key])
            keys = self._keys_of(hop_key, entity[first])
            if self._packed[hop_key]:
                # each window's new rows back to back: slices of one buffer, no per-row objects
                flat = codec.encode_rows_packed(hop, keep)
                offsets = (bounds * codec.fixed_size).tolist()
                for w0 in range(0, len(keys), self.chunk_keys):
                    w1 = min(w0 + self.chunk_keys, len(keys))
                    args = [*head_args, self._max_len[hop_key], self._width[hop_key]]
                    args += [flat[offsets[w]:offsets[w + 1]] for w in range(w0, w1)]
                    calls.append((PACKED_APPEND_LUA, keys[w0:w1], args))
                continue
            members = codec.encode_rows(hop, keep)
            cap = self._max_len[hop_key]
            bounds = bounds.tolist()
            for w0 in range(0, len(keys), self.chunk_keys):
                w1 = min(w0 + self.chunk_keys, len(keys))
                args = list(head_args)
                for w in range(w0, w1):
                    args.append(cap)
                    args.append(bounds[w + 1] - bounds[w])
                    args.extend(members[bounds[w]:bounds[w + 1]])
                calls.append((APPEND_LUA, keys[w0:w1], args))
        return calls

    def encode_rows(self, rows: Sequence[HopRows],
                    items: Sequence[AppendItem] = ()) -> tuple[dict[bytes, list[bytes]], dict[bytes, str]]:
        """The client-side half of :meth:`append_rows`: ``(key -> pruned members, key -> hop key)``."""
        batch: dict[bytes, list[bytes]] = {}
        hop_of: dict[bytes, str] = {}
        for hop in rows:  # encode all first: bad input sends nothing
            if not len(hop):
                continue
            codec = self.codec(hop.hop_key)
            members = codec.encode_rows(hop)
            entity = hop.entity
            if entity.dtype == object:
                entity = np.array([self.entity(hop.hop_key, e) for e in entity.tolist()], dtype=object)
            keep, bounds, first = prune_grouped(entity, hop.event_time, hop.event_id, codec.hop.max_len,
                                                self.horizons[hop.hop_key])
            keys = self._keys_of(hop.hop_key, entity[first])
            keep_list, bounds = keep.tolist(), bounds.tolist()
            hop_key = hop.hop_key
            for w, key in enumerate(keys):
                batch[key] = [members[j] for j in keep_list[bounds[w]:bounds[w + 1]]]
                hop_of[key] = hop_key
        merged: set[bytes] = set()
        for hop_key, entity_id, interaction in items:  # rows that took the per-row path
            key = self.redis_key(hop_key, entity_id)
            got = batch.setdefault(key, [])
            got.append(self.codecs[hop_key].encode(interaction))
            hop_of[key] = hop_key
            merged.add(key)
        for key in merged:
            batch[key] = prune_batch(batch[key], self.codecs[hop_of[key]].hop.max_len, self.horizons[hop_of[key]])
        return batch, hop_of

    def _send(self, rows: dict[bytes, list[bytes]], hop_of: dict[bytes, str]) -> int:
        """One round trip of Lua calls for windows whose rows are pruned (sorted, distinct)."""
        if not rows:
            return 0
        calls = []
        by_hop: dict[Any, list[bytes]] = defaultdict(list)
        for k in rows:
            # packed: one call per hop; sorted sets: hops of the same caps share calls
            by_hop[hop_of[k] if self._packed[hop_of[k]] else self._head[hop_of[k]]].append(k)
        for hop_key, keys in by_hop.items():
            for group in self._groups(keys):
                call_keys = [keys[i] for i in group]
                args = list(self._head[hop_of[call_keys[0]]])
                if isinstance(hop_key, str):  # packed: one hop per call
                    args += [self._max_len[hop_key], self._width[hop_key]]
                    args += [b"".join(rows[k]) for k in call_keys]
                    calls.append((PACKED_APPEND_LUA, call_keys, args))
                    continue
                for k in call_keys:
                    members = rows[k]
                    args.append(self._max_len[hop_of[k]])
                    args.append(len(members))
                    args.extend(members)
                calls.append((APPEND_LUA, call_keys, args))
        return sum(int(r) for r in self._eval_scripts(calls))

    # ----- reads ----------------------------------------------------------------------------
    def read_many(self, keys: Sequence[WindowKey], as_of: int | Sequence[int]) -> list[Window]:
        return self._read(keys, as_of, with_marker=False)[0]

    def read_many_checked(self, keys: Sequence[WindowKey],
                          as_of: int | Sequence[int]) -> tuple[list[Window], Completeness]:
        windows, fields = self._read(keys, as_of, with_marker=True)
        return windows, completeness_of(fields)

    def _read(self, keys: Sequence[WindowKey], as_of: int | Sequence[int],
              with_marker: bool) -> tuple[list[Window], int]:
        """Windows, and (``with_marker``) the marker's field count read after them in the same
        round trip."""
        anchors = self.as_of_list(keys, as_of)
        redis_keys = [self.redis_key(h, e) for h, e in keys]
        bounds: dict[tuple[str, int], tuple[bytes, bytes] | None] = {}
        for (hop_key, _), t in zip(keys, anchors):
            if (hop_key, t) not in bounds:
                lo, hi = self.plan.window_bounds(hop_key, t)
                bounds[(hop_key, t)] = (time_key(lo), time_key(hi)) if hi > lo else None
        commands, order = [], []
        for i, (hop_key, _) in enumerate(keys):
            b = bounds[(hop_key, anchors[i])]
            if b is None:
                continue
            if self._packed[hop_key]:  # the whole window (at most max_len rows), cut below
                commands.append(("GET", redis_keys[i]))
            else:
                commands.append(("ZREVRANGEBYLEX", redis_keys[i], b"(" + b[1], b"[" + b[0], "LIMIT", b"0",
                                 self._max_len[hop_key]))
            order.append(i)
        if with_marker:
            commands.append(("HLEN", self.marker_key))
        rows: list[Any] = [None] * len(keys)
        fields = -1
        if commands:
            replies = self._roundtrip(commands)
            if with_marker:
                fields = int(replies.pop())
            for i, reply in zip(order, replies):
                hop_key = keys[i][0]
                if self._packed[hop_key]:
                    lo, hi = bounds[(hop_key, anchors[i])]
                    rows[i] = select_packed(reply or b"", self.codecs[hop_key].fixed_size, lo, hi,
                                            self.codecs[hop_key].hop.max_len)
                else:
                    reply.reverse()  # newest first -> oldest first
                    rows[i] = reply
        return self._decode(keys, rows), fields

    def _decode(self, keys: Sequence[WindowKey], rows: list[Any]) -> list[Window]:
        """Windows from what was read: packed bytes (packed hops) or member lists (sorted sets)."""
        out: list[Window | None] = [None] * len(keys)
        by_hop: dict[str, list[int]] = defaultdict(list)
        for i, (hop_key, _) in enumerate(keys):
            by_hop[hop_key].append(i)
        for hop_key, idx in by_hop.items():
            codec = self.codec(hop_key)
            if self._packed[hop_key]:
                windows = codec.windows_packed([rows[i] or b"" for i in idx])
            else:
                windows = _decode_grouped(self, [keys[i] for i in idx], [rows[i] or [] for i in idx])
            for i, w in zip(idx, windows):
                out[i] = w
        return out  # type: ignore[return-value]

    # ----- completeness marker ---------------------------------------------------------------
    def marker(self) -> StoreMarker:
        raw = self._call(lambda: self.client.hgetall(self.marker_key))
        return parse_marker({_text(k): _text(v) for k, v in raw.items()})

    def claim_rebuild(self, partitions: Sequence[tuple[str, int]], from_ms: int, epoch: str,
                      steps: Sequence[str] = ()) -> StoreMarker:
        args = [epoch.encode()]
        for topic, partition in partitions:
            args += [pending_field(topic, partition).encode(), str(int(from_ms)).encode()]
        for name in steps:
            args += [step_field(name).encode(), b"1"]
        flat = self._eval_many(CLAIM_LUA, [([self.marker_key], args)])[0]
        return parse_marker({_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)})

    def finish_rebuild(self, topic: str, partition: int, epoch: str) -> bool:
        return self._finish(pending_field(topic, partition), epoch)

    def finish_step(self, name: str, epoch: str) -> bool:
        return self._finish(step_field(name), epoch)

    def _finish(self, name: str, epoch: str) -> bool:
        args = [epoch.encode(), name.encode()]
        return int(self._eval_many(FINISH_LUA, [([self.marker_key], args)])[0]) == 1

    def mark_complete(self, epoch: str) -> None:
        self._eval_many(MARK_COMPLETE_LUA, [([self.marker_key], [epoch.encode()])])

    def rows(self, hop_key: str, entity_id: Any) -> list[bytes]:
        """All stored packed rows of one window, oldest first (no time bounds)."""
        key = self.redis_key(hop_key, entity_id)
        if not self._packed[hop_key]:
            return self._call(lambda: self.client.zrange(key, 0, -1))
        blob = self._call(lambda: self.client.get(key)) or b""
        size = self.codecs[hop_key].fixed_size
        return [blob[i:i + size] for i in range(0, len(blob), size)]

    def dump_many(self, keys: Sequence[WindowKey]) -> list[Window]:
        """Full stored windows (no time bounds), one round trip."""
        if not keys:
            return []
        commands = [("GET", self.redis_key(h, e)) if self._packed[h] else ("ZRANGE", self.redis_key(h, e), 0, -1)
                    for h, e in keys]
        return self._decode(keys, self._roundtrip(commands))

    def ttl_ms(self, hop_key: str, entity_id: Any) -> int:
        """Remaining TTL of a window key in ms (-2 = no such key, -1 = no expiry)."""
        return int(self._call(lambda: self.client.pttl(self.redis_key(hop_key, entity_id))))

    def iter_keys(self, count: int = 1000) -> Iterable[bytes]:
        """Every window key of this store's prefix (SCAN, non-blocking)."""
        return self.client.scan_iter(match=f"{self.key_prefix}:{{*".encode(), count=count)

    # ----- plumbing -------------------------------------------------------------------------
    @staticmethod
    def _call(fn):
        try:
            return fn()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        except redis.exceptions.ResponseError as exc:
            text = str(exc)
            if text.startswith("NOSCRIPT") and not isinstance(exc, redis.exceptions.NoScriptError):
                raise redis.exceptions.NoScriptError(text) from exc
            if text.startswith(("BUSY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")):
                raise StoreUnavailable(f"redis: {exc}") from exc
            raise

    def close(self) -> None:
        if self._owns_client:
            self.client.close()


def _is_cluster(client: Any) -> bool:
    try:
        from redis.cluster import RedisCluster
    except ImportError:  # pragma: no cover
        return False
    return isinstance(client, RedisCluster)


def _reraise(exc: BaseException):
    raise exc


try:  # hiredis packs commands in C; the pure-Python fallback keeps the store usable without it
    from hiredis import pack_command as _pack_one
except ImportError:  # pragma: no cover
    def _pack_one(cmd: tuple) -> bytes:
        parts = [b"*%d\r\n" % len(cmd)]
        for arg in cmd:
            arg = arg if isinstance(arg, bytes) else str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
        return b"".join(parts)


def _pack_commands(commands: list[tuple]) -> bytes:
    return b"".join([_pack_one(cmd) for cmd in commands])


def select_packed(blob: bytes, size: int, lo: bytes, hi: bytes, max_len: int) -> bytes:
    """The newest ``max_len`` rows of a packed window with ``lo <= time key < hi`` (8-byte keys)."""
    n = len(blob) // size
    if n == 0:
        return b""
    if blob[:8] >= lo and blob[(n - 1) * size:(n - 1) * size + 8] < hi:  # all of it (the usual case)
        i, j = 0, n
    else:
        def key(r: int) -> bytes:
            return blob[r * size:r * size + 8]
        j = bisect_left(range(n), hi, key=key)
        i = bisect_left(range(j), lo, key=key)
    return blob[max(i, j - max_len) * size:j * size]


__all__ = ["RedisWindowStore", "entity_token", "select_packed"]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
