"""The Lua scripts of the Redis window store (:mod:`rti_store.redis_store`), each with its calling
convention. Kept apart from the client code: they are the store's server-side half, read and
tuned on their own (what each costs Redis per window is noted beside it)."""

# Append to many windows in one call (standalone: chunks of keys; cluster: keys of one slot).
# KEYS     the window keys
# ARGV[1], ARGV[2]  horizon in ns as (high, low) 32-bit halves, or "-1" for no age cap
# ARGV[3]  TTL in ms ("0" = no expiry)
# then per key, in KEYS order: max_len, n, n packed rows -- sorted, distinct (time, id), at most
# max_len of them (the client prunes a window's batch first: rti_store.logic.prune_batch)
# Returns the number of rows newly stored: (time, id) not stored before and kept by the caps.
# Per window this costs ZRANGE (the window is short: max_len rows), one ZADD for all new rows and
# PEXPIRE; the caps' trims and a second ZRANGE only when a cap can drop something.
APPEND_LUA = r"""
local call = redis.call
local unpack4 = struct.unpack
local sub = string.sub
local h_hi, h_lo = tonumber(ARGV[1]), tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
-- is the identity (x1..x4) after (y1..y4)? Identities are compared as four 32-bit numbers (Lua
-- string comparison follows the locale)
local function after(x1, x2, x3, x4, y1, y2, y3, y4)
  return x1 > y1 or (x1 == y1 and (x2 > y2 or (x2 == y2 and (x3 > y3 or (x3 == y3 and x4 > y4)))))
end
local a = 4
local added = 0
for k = 1, #KEYS do
  local key = KEYS[k]
  local max_len, n = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  -- the whole window (at most max_len rows): its size, oldest and newest row, and identities
  local stored = call('ZRANGE', key, 0, -1)
  local count = #stored
  local n1, n2, n3, n4 = -1, 0, 0, 0
  if count > 0 then n1, n2, n3, n4 = unpack4('>I4I4I4I4', stored[count]) end
  local have
  local zadd, fresh = {}, 0
  local f1, f2  -- time of the oldest new row
  local l1, l2, l3, l4  -- identity of the newest new row (rows come sorted, distinct)
  for i = a, a + n - 1 do
    local m = ARGV[i]
    local m1, m2, m3, m4 = unpack4('>I4I4I4I4', m)
    local new = after(m1, m2, m3, m4, n1, n2, n3, n4)  -- newer than all stored: not a redelivery
    if not new then
      if have == nil then
        have = {}
        for j = 1, count do have[sub(stored[j], 1, 16)] = true end
      end
      new = not have[sub(m, 1, 16)]
    end
    if new then
      zadd[#zadd + 1] = 0
      zadd[#zadd + 1] = m
      fresh = fresh + 1
      if fresh == 1 then f1, f2 = m1, m2 end
      l1, l2, l3, l4 = m1, m2, m3, m4
    end
  end
  a = a + n
  if fresh > 0 then
    call('ZADD', key, unpack(zadd))
    count = count + fresh
    local o1, o2 = f1, f2  -- time of the oldest row now stored
    if #stored > 0 then
      local s1, s2 = unpack4('>I4I4', stored[1])
      if s1 < o1 or (s1 == o1 and s2 < o2) then o1, o2 = s1, s2 end
    end
    if after(l1, l2, l3, l4, n1, n2, n3, n4) then n1, n2, n3, n4 = l1, l2, l3, l4 end
    local trimmed = false
    -- count cap: keep the newest max_len
    if count > max_len then
      call('ZREMRANGEBYRANK', key, 0, count - max_len - 1)
      trimmed = true
    end
    if h_hi >= 0 then
      -- age cap: drop rows older than newest - horizon, computed on the biased 64-bit time in
      -- two 32-bit halves (Lua numbers are doubles and cannot hold ns timestamps exactly)
      local hi, lo = n1 - h_hi, n2 - h_lo
      if lo < 0 then
        lo = lo + 4294967296
        hi = hi - 1
      end
      if hi >= 0 and (trimmed or o1 < hi or (o1 == hi and o2 < lo)) then
        if call('ZREMRANGEBYLEX', key, '-', '(' .. struct.pack('>I4I4', hi, lo)) > 0 then trimmed = true end
      end
    end
    -- count what was stored AND survived the caps
    if not trimmed then
      added = added + fresh
    else
      local oldest = call('ZRANGE', key, 0, 0)[1]
      if oldest then
        local q1, q2, q3, q4 = unpack4('>I4I4I4I4', oldest)
        for j = 2, #zadd, 2 do
          local r1, r2, r3, r4 = unpack4('>I4I4I4I4', zadd[j])
          if not after(q1, q2, q3, q4, r1, r2, r3, r4) then added = added + 1 end
        end
      end
    end
  end
  if ttl > 0 then
    call('PEXPIRE', key, ttl)
  end
end
return added
"""

# The same for windows of fixed-width rows, each kept as ONE string of its rows, sorted: per window
# a GET and a SET (with the TTL), the rows merged in by binary search on the identities. Redis runs
# this for every window an ingest batch touches, so it decodes as little as it can: the newest
# stored row once per window, the high half of a row's time during the search (it differs almost
# always), and the tables are reused across windows (-17 % instructions per event against decoding
# whole identities, measured with callgrind on the ingest benchmark's stream).
# KEYS: windows of ONE hop; ARGV[1..3] as above, ARGV[4] max_len, ARGV[5] row width; then per key
# the new rows back to back in one string (sorted, distinct (time, id), at most max_len of them).
PACKED_APPEND_LUA = r"""
local call = redis.call
local unpack4 = struct.unpack
local sub, floor = string.sub, math.floor
local h_hi, h_lo = tonumber(ARGV[1]), tonumber(ARGV[2])
local ttl = ARGV[3]
local expire = tonumber(ttl) > 0
local max_len, w = tonumber(ARGV[4]), tonumber(ARGV[5])
local added = 0
local pieces, fresh = {}, {}
for k = 1, #KEYS do
  local key = KEYS[k]
  local new = ARGV[5 + k]
  local blob = call('GET', key) or ''
  local count = floor(#blob / w)
  local np, nf = 0, 0  -- entries of pieces / fresh in use (the tables are reused)
  local z1, z2, z3, z4 = -1, 0, 0, 0  -- the newest stored row
  if count > 0 then z1, z2, z3, z4 = unpack4('>I4I4I4I4', blob, (count - 1) * w + 1) end
  local copied, lo, merged = 0, 0, 0  -- stored rows copied out; search start; rows out so far
  local y1, y2 = -1, 0  -- time of the newest fresh row
  for i = 0, floor(#new / w) - 1 do
    local m1, m2, m3, m4 = unpack4('>I4I4I4I4', new, i * w + 1)
    -- the first stored row not before this one (identities compared as four 32-bit numbers: Lua string
    -- comparison follows the locale)
    local l, h = lo, count
    if z1 < m1 or (z1 == m1 and (z2 < m2 or (z2 == m2 and (z3 < m3 or (z3 == m3 and z4 < m4))))) then
      l = count  -- in time order (the usual case): after the newest stored row
    end
    while l < h do
      local mid = floor((l + h) / 2)
      local s1 = unpack4('>I4', blob, mid * w + 1)  -- the high half of the time: differs almost always
      if s1 < m1 then
        l = mid + 1
      elseif s1 > m1 then
        h = mid
      else
        local s2, s3, s4 = unpack4('>I4I4I4', blob, mid * w + 5)
        if s2 < m2 or (s2 == m2 and (s3 < m3 or (s3 == m3 and s4 < m4))) then l = mid + 1 else h = mid end
      end
    end
    local seen = false
    if l < count and unpack4('>I4', blob, l * w + 1) == m1 then
      local s2, s3, s4 = unpack4('>I4I4I4', blob, l * w + 5)
      seen = s2 == m2 and s3 == m3 and s4 == m4  -- a redelivery
    end
    if not seen then
      if l > copied then
        np = np + 1
        pieces[np] = sub(blob, copied * w + 1, l * w)
        merged = merged + l - copied
        copied = l
      end
      np = np + 1
      pieces[np] = #new == w and new or sub(new, i * w + 1, i * w + w)
      nf = nf + 1
      fresh[nf] = merged
      y1, y2 = m1, m2  -- rows come sorted: the last fresh one is the newest
      merged = merged + 1
    end
    lo = l
  end
  if nf > 0 then
    if copied < count then
      np = np + 1
      pieces[np] = sub(blob, copied * w + 1, count * w)
      merged = merged + count - copied
    end
    local out = table.concat(pieces, '', 1, np)
    -- count cap: keep the newest max_len
    local drop = 0
    if merged > max_len then drop = merged - max_len end
    if h_hi >= 0 then
      -- age cap: drop rows older than newest - horizon, on the biased 64-bit time in two 32-bit
      -- halves (Lua numbers are doubles and cannot hold ns timestamps exactly)
      local n1, n2 = z1, z2  -- the newest row: the newest stored one or the newest fresh one
      if y1 > n1 or (y1 == n1 and y2 > n2) then n1, n2 = y1, y2 end
      local hi, lo2 = n1 - h_hi, n2 - h_lo
      if lo2 < 0 then
        lo2 = lo2 + 4294967296
        hi = hi - 1
      end
      local o1, o2 = unpack4('>I4I4', out, drop * w + 1)
      if hi >= 0 and (o1 < hi or (o1 == hi and o2 < lo2)) then  -- the oldest kept row is too old
        local l, h = drop, merged
        while l < h do
          local mid = floor((l + h) / 2)
          local t1, t2 = unpack4('>I4I4', out, mid * w + 1)
          if t1 < hi or (t1 == hi and t2 < lo2) then l = mid + 1 else h = mid end
        end
        drop = l
      end
    end
    -- count what was stored AND survived the caps
    for j = 1, nf do
      if fresh[j] >= drop then added = added + 1 end
    end
    if drop > 0 then out = sub(out, drop * w + 1) end
    if expire then
      call('SET', key, out, 'PX', ttl)
    else
      call('SET', key, out)
    end
  elseif expire and count > 0 then
    call('PEXPIRE', key, ttl)  -- a redelivery is an append too: the window stays alive
  end
end
return added
"""

# Completeness marker (rti_store.base.Completeness), one hash per key prefix: ``epoch`` plus one
# ``p:<partition>:<topic>`` field per partition still being replayed. No TTL: it must outlive
# idle windows, and vanish only with the data set (restart without persistence, FLUSHALL, an
# empty replica taking over).
# KEYS[1] marker; ARGV[1] epoch; ARGV[2..] field, value pairs. Creates the marker only if absent.
CLAIM_LUA = r"""
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'epoch', unpack(ARGV))
end
return redis.call('HGETALL', KEYS[1])
"""
# KEYS[1] marker; ARGV[1] epoch; ARGV[2] pending field. Only the generation that listed it may clear it.
FINISH_LUA = r"""
if redis.call('HGET', KEYS[1], 'epoch') == ARGV[1] then
  return redis.call('HDEL', KEYS[1], ARGV[2])
end
return 0
"""
MARK_COMPLETE_LUA = r"""
redis.call('DEL', KEYS[1])
return redis.call('HSET', KEYS[1], 'epoch', ARGV[1])
"""
