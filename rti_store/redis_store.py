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
from collections import defaultdict
from typing import Any, Callable, Iterable, Sequence

import redis

from schemas.plan import ServingPlan
from schemas.tensors import Window

from rti_store.base import AppendItem, BaseWindowStore, StoreUnavailable, WindowKey
from rti_store.codec import time_key
from rti_store.memory import _decode_grouped

# KEYS[1] window key
# ARGV[1] max_len   ARGV[2], ARGV[3] horizon (high, low 32 bits) or "-1" for none
# ARGV[4] ttl in ms ("0" = no expiry)   ARGV[5..] packed rows
# Returns the number of rows whose (time, id) was not already stored.
APPEND_LUA = r"""
local key = KEYS[1]
local added = 0
for i = 5, #ARGV do
  local m = ARGV[i]
  local ident = string.sub(m, 1, 16)
  local hit = redis.call('ZRANGEBYLEX', key, '[' .. ident, '+', 'LIMIT', 0, 1)
  if hit[1] == nil or string.sub(hit[1], 1, 16) ~= ident then
    redis.call('ZADD', key, 0, m)
    added = added + 1
  end
end
local max_len = tonumber(ARGV[1])
local n = redis.call('ZCARD', key)
if n > max_len then
  redis.call('ZREMRANGEBYRANK', key, 0, n - max_len - 1)
end
if ARGV[2] ~= '-1' and n > 0 then
  local newest = redis.call('ZRANGE', key, -1, -1)[1]
  local hi, lo = struct.unpack('>I4I4', newest)
  hi = hi - tonumber(ARGV[2])
  lo = lo - tonumber(ARGV[3])
  if lo < 0 then
    lo = lo + 4294967296
    hi = hi - 1
  end
  if hi >= 0 then
    redis.call('ZREMRANGEBYLEX', key, '-', '(' .. struct.pack('>I4I4', hi, lo))
  end
end
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  redis.call('PEXPIRE', key, ttl)
end
return added
"""

_TAG_ESCAPES = {ord("{"): "%7B", ord("}"): "%7D", ord("%"): "%25"}


def entity_token(entity: int | bytes) -> bytes:
    """The entity part of a key: decimal for ints, bytes with braces escaped for strings."""
    if isinstance(entity, int):
        return str(entity).encode()
    if b"{" in entity or b"}" in entity or b"%" in entity:
        return entity.decode("utf-8", "surrogateescape").translate(_TAG_ESCAPES).encode("utf-8", "surrogateescape")
    return entity


class RedisWindowStore(BaseWindowStore):
    """Windows in Redis (standalone or Cluster client); see the module docstring for the layout."""

    def __init__(self, plan: ServingPlan, client_or_url: Any, horizon_ns: int | None = None,
                 ttl_s: float | None = 7 * 86400, key_prefix: str = "rs",
                 clock: Callable[[], float] = time.time):
        super().__init__(plan, horizon_ns=horizon_ns, ttl_s=ttl_s)
        if isinstance(client_or_url, str):
            self.client = redis.Redis.from_url(client_or_url)
            self._owns_client = True
        else:
            self.client = client_or_url
            self._owns_client = False
        if not key_prefix or "{" in key_prefix or "}" in key_prefix:
            raise ValueError(f"key_prefix: must be non-empty and brace-free, got {key_prefix!r}")
        self.key_prefix = key_prefix
        self.clock = clock  # Redis expires by its own clock; kept for interface symmetry
        self._ttl_ms = b"0" if ttl_s is None else str(max(1, int(round(ttl_s * 1000)))).encode()
        h = self.horizon_ns
        self._horizon = (b"-1", b"-1") if h is None else (str(h >> 32).encode(), str(h & 0xFFFFFFFF).encode())
        self._key_heads = {k: f"{key_prefix}:{{{c.layout_id}:".encode() for k, c in self.codecs.items()}
        self._max_len = {k: str(c.hop.max_len).encode() for k, c in self.codecs.items()}
        self._append_sha: bytes | None = None

    # ----- keys -----------------------------------------------------------------------------
    def redis_key(self, hop_key: str, entity_id: Any) -> bytes:
        """The Redis key of one window: ``<prefix>:{<hop id>:<entity>}``."""
        head = self._key_heads.get(hop_key)
        if head is None:
            self.codec(hop_key)  # raises the RowError naming the unknown hop key
        ent = self.entity(hop_key, entity_id)
        return head + (str(ent).encode() if type(ent) is int else entity_token(ent)) + b"}"

    _keyed = redis_key

    # ----- append ---------------------------------------------------------------------------
    def _sha(self) -> bytes:
        if self._append_sha is None:
            sha = self._call(lambda: self.client.script_load(APPEND_LUA))
            if isinstance(sha, dict):  # cluster clients answer per node
                sha = next(iter(sha.values()))
            self._append_sha = sha if isinstance(sha, bytes) else str(sha).encode()
        return self._append_sha

    def append(self, items: Sequence[AppendItem]) -> int:
        grouped: dict[bytes, list[bytes]] = defaultdict(list)
        max_len: dict[bytes, bytes] = {}
        for hop_key, entity_id, interaction in items:  # encode all first: bad input sends nothing
            key = self._keyed(hop_key, entity_id)
            grouped[key].append(self.codecs[hop_key].encode(interaction))
            max_len[key] = self._max_len[hop_key]
        if not grouped:
            return 0
        for attempt in range(2):
            sha = self._sha()
            try:
                results = self._call(lambda: self._run_append(sha, grouped, max_len))
            except redis.exceptions.NoScriptError:
                # Redis restarted or SCRIPT FLUSH: reload and retry (appends are idempotent).
                self._append_sha = None
                if attempt:
                    raise
                continue
            return sum(int(r) for r in results)
        raise AssertionError("unreachable")

    def _run_append(self, sha: bytes, grouped: dict[bytes, list[bytes]], max_len: dict[bytes, bytes]) -> list:
        pipe = self.client.pipeline(transaction=False)
        h_hi, h_lo = self._horizon
        for key, members in grouped.items():
            pipe.execute_command("EVALSHA", sha, 1, key, max_len[key], h_hi, h_lo, self._ttl_ms, *members)
        return pipe.execute()

    # ----- reads ----------------------------------------------------------------------------
    def read_many(self, keys: Sequence[WindowKey], as_of: int | Sequence[int]) -> list[Window]:
        anchors = self.as_of_list(keys, as_of)
        if not keys:
            return []
        pipe = self.client.pipeline(transaction=False)
        for (hop_key, entity_id), t in zip(keys, anchors):
            lo, hi = self.plan.rti_bounds(t)
            pipe.execute_command("ZREVRANGEBYLEX", self._keyed(hop_key, entity_id), b"(" + time_key(hi),
                                 b"[" + time_key(lo), b"LIMIT", 0, self._max_len[hop_key])
        replies = self._call(pipe.execute)
        rows = []
        for (_, _), reply, t in zip(keys, replies, anchors):
            lo, hi = self.plan.rti_bounds(t)
            rows.append(reply[::-1] if hi > lo else [])
        return _decode_grouped(self, keys, rows)

    def rows(self, hop_key: str, entity_id: Any) -> list[bytes]:
        """All stored packed rows of one window, oldest first (no time bounds)."""
        return self._call(lambda: self.client.zrange(self._keyed(hop_key, entity_id), 0, -1))

    def dump_many(self, keys: Sequence[WindowKey]) -> list[Window]:
        """Full stored windows (no time bounds), one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for hop_key, entity_id in keys:
            pipe.zrange(self._keyed(hop_key, entity_id), 0, -1)
        return _decode_grouped(self, keys, self._call(pipe.execute) if keys else [])

    def ttl_ms(self, hop_key: str, entity_id: Any) -> int:
        """Remaining TTL of a window key in ms (-2 = no such key, -1 = no expiry)."""
        return int(self._call(lambda: self.client.pttl(self._keyed(hop_key, entity_id))))

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
            if "NOSCRIPT" in str(exc) and not isinstance(exc, redis.exceptions.NoScriptError):
                raise redis.exceptions.NoScriptError(str(exc)) from exc
            if "BUSY" in str(exc) or "LOADING" in str(exc):
                raise StoreUnavailable(f"redis: {exc}") from exc
            raise

    def close(self) -> None:
        if self._owns_client:
            self.client.close()


__all__ = ["APPEND_LUA", "RedisWindowStore", "entity_token"]
