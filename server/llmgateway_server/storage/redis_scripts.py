"""The Lua scripts behind the Redis budget store: each store operation is one of them,
atomic on the server. ``redis_budgets.py`` owns the key layout and documents it.

Rules every script keeps:

- ``#!lua`` (Redis 7 script flags): without it Redis lets a script touch keys of any
  slot; with it, a script that touches two hash slots fails in cluster mode. Every key a
  script touches is the tenant's (``{tenant}`` hash tag) or its slot's (the marker, the
  index of tenants to sweep: a tag chosen to hash to that slot), so each runs on one
  slot: Redis Cluster safe. The three scripts that look at many slots
  (``MARK_ALL_SLOTS``, ``DUE_TENANTS``, ``HINT_SLOTS``) say so in their flags, run where
  one node serves every slot, and have a per-slot fallback in the client.
- The slot's marker key is checked first: missing means Redis lost its data (or was
  never initialised), and the script answers ``lost`` before touching anything (ACK
  and the index-only scripts excepted: they hold no money).
- Money and token amounts arrive as decimal strings and reach Redis unchanged through
  HINCRBY, so Redis does the arithmetic in 64-bit integers. Lua numbers are doubles:
  limit checks (the only arithmetic done in Lua) are exact while every amount stays
  below 2^53 (about 9 million USD in nano-USD), which the client enforces. A zero is
  never passed to HINCRBY with a minus sign ("-0" is not an integer to Redis).
- Counters of a reservation are stored in the reservation (``ck``: JSON list of
  [key, expire-at]) so settle and expire need only the request id.
- Values come back as the strings Redis holds (never through ``tostring`` of a Lua
  number, which keeps 14 digits).
- Every script is safe to run twice: the client resends a command once when its
  connection drops (a Redis restart leaves dead connections in the pool). Reserve and
  take carry a nonce per call, so a resent call is recognised, not counted twice.
"""

from __future__ import annotations

from typing import Final

# Reservation hash fields: s = state (held | settled | expired), u / t = reserved
# nano-USD / tokens, d = the reservation as JSON (for expire's answer), ck = counter keys.
# Counter hash fields: su / st = spent nano-USD / tokens, ru / rt = reserved.

RESERVE: Final = """#!lua
-- KEYS: 1 slot marker, 2 reservation, 3 lease zset, 4 slot index (tenant -> earliest
--       lease), 5.. counters (scope x window)
-- ARGV: 1 request id, 2 nano-USD, 3 tokens, 4 lease, 5 reservation JSON,
--       6 reservation TTL ms, 7 this call's nonce,
--       8 per counter (KEYS order) 'usd limit:token limit:expire-at;' (a limit may be
--         empty: none). One argument, not three per counter: each costs the client.
--       9 tenant
if redis.call('EXISTS', KEYS[1]) == 0 then return {'lost'} end
if redis.call('EXISTS', KEYS[2]) == 1 then
  -- The same call sent again after its connection dropped is not a second request (and
  -- its slot is hinted again: harmless, where the lost reply may have asked for it).
  if redis.call('HGET', KEYS[2], 'n') == ARGV[7] then return {'held', '1'} end
  return {'duplicate'}
end
local usd, tok = ARGV[2], ARGV[3]
local nusd, ntok = tonumber(usd), tonumber(tok)
local spec = {}
for lu, lt, at in string.gmatch(ARGV[8], '(%d*):(%d*):(%d+);') do
  spec[#spec + 1] = {lu, lt, at}
end
if #spec ~= #KEYS - 4 then return redis.error_reply('ERR counter spec does not match KEYS') end
for i = 5, #KEYS do
  local lu, lt = spec[i - 4][1], spec[i - 4][2]
  if lu ~= '' or lt ~= '' then
    local v = redis.call('HMGET', KEYS[i], 'su', 'ru', 'st', 'rt')
    local su, ru, st, rt = v[1] or '0', v[2] or '0', v[3] or '0', v[4] or '0'
    if lu ~= '' and tonumber(su) + tonumber(ru) + nusd > tonumber(lu) then
      return {'refused', tostring(i - 4), 'usd', su, ru}
    end
    if lt ~= '' and tonumber(st) + tonumber(rt) + ntok > tonumber(lt) then
      return {'refused', tostring(i - 4), 'tokens', st, rt}
    end
  end
end
local ck = {}
for i = 5, #KEYS do
  if usd ~= '0' then redis.call('HINCRBY', KEYS[i], 'ru', usd) end
  if tok ~= '0' then redis.call('HINCRBY', KEYS[i], 'rt', tok) end
  redis.call('EXPIREAT', KEYS[i], spec[i - 4][3])
  ck[#ck + 1] = {KEYS[i], spec[i - 4][3]}
end
-- cjson writes an empty table as {}: still an empty list to cjson.decode and ipairs.
redis.call('HSET', KEYS[2], 's', 'held', 'u', usd, 't', tok, 'd', ARGV[5],
  'ck', cjson.encode(ck), 'n', ARGV[7])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
-- In the same atomic step: the sweep finds this tenant by the earliest of its leases.
-- The first tenant in the slot's index asks the client to hint the slot to sweeps.
local added = redis.call('ZADD', KEYS[4], 'LT', ARGV[4], ARGV[9])
if added == 1 and redis.call('ZCARD', KEYS[4]) == 1 then return {'held', '1'} end
return {'held', '0'}
"""

# Moves a held reservation's amounts out of ``ru``/``rt`` and adds ``add_usd``/``add_tok``
# to ``su``/``st`` of each of its counters: settle (actual amounts) and expire (reserved).
_CHARGE: Final = """
local function charge(ck, u, t, add_usd, add_tok)
  for _, c in ipairs(cjson.decode(ck)) do
    local k = c[1]
    if u ~= '0' then redis.call('HINCRBY', k, 'ru', '-' .. u) end
    if t ~= '0' then redis.call('HINCRBY', k, 'rt', '-' .. t) end
    if add_usd ~= '0' then redis.call('HINCRBY', k, 'su', add_usd) end
    if add_tok ~= '0' then redis.call('HINCRBY', k, 'st', add_tok) end
    redis.call('EXPIREAT', k, c[2])
  end
end
"""

# After expire or an acknowledgement: the slot index keeps the tenant at its earliest
# lease or claim, or drops it when it holds nothing and has nothing left to report.
_REINDEX: Final = """
local function reindex(lz, uz, index, tenant)
  local nl = redis.call('ZRANGE', lz, 0, 0, 'WITHSCORES')[2]
  local nu = redis.call('ZRANGE', uz, 0, 0, 'WITHSCORES')[2]
  local nxt = nl
  if nu and (not nxt or tonumber(nu) < tonumber(nxt)) then nxt = nu end
  if nxt then redis.call('ZADD', index, nxt, tenant) else redis.call('ZREM', index, tenant) end
end
"""

SETTLE: Final = (
    """#!lua
-- KEYS: 1 slot marker, 2 reservation, 3 lease zset
-- ARGV: 1 request id, 2 actual nano-USD, 3 actual tokens, 4 TTL ms of a finished record
"""
    + _CHARGE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'lost' end
local r = redis.call('HMGET', KEYS[2], 's', 'u', 't', 'ck')
if r[1] ~= 'held' then return 'noop' end
charge(r[4], r[2], r[3], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[2], 's', 'settled')
redis.call('HDEL', KEYS[2], 'd', 'ck')
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('ZREM', KEYS[3], ARGV[1])
return 'settled'
"""
)

EXPIRE: Final = (
    """#!lua
-- KEYS: 1 slot marker, 2 lease zset, 3 unreported zset (score: claimed until),
--       4 slot index
-- ARGV: 1 now, 2 claimed until (now + claim time), 3 batch size (at most 1000),
--       4 reservation key prefix, 5 TTL ms of a finished record, 6 tenant
-- Charges held reservations whose lease <= now at their reserved amounts and moves them
-- to the unreported set; then claims unreported ones that nobody claimed (or whose
-- claim ran out: the claimer died before acknowledging) and returns them. A record
-- leaves the unreported set only by ACK, so a reply lost on the way is answered again.
"""
    + _CHARGE
    + _REINDEX
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'lost'} end
local n = tonumber(ARGV[3])
-- A lease that ends before now has passed (the SQLite store's rule too).
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1], 'LIMIT', 0, n)
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[2], id)
  local k = ARGV[4] .. id
  local r = redis.call('HMGET', k, 's', 'u', 't', 'ck')
  if r[1] == 'held' then
    charge(r[4], r[2], r[3], r[2], r[3])
    redis.call('HSET', k, 's', 'expired')
    redis.call('HDEL', k, 'ck')
    redis.call('PEXPIRE', k, ARGV[5])
    redis.call('ZADD', KEYS[3], 0, id)
  end
end
local out = {}
local claim = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1], 'LIMIT', 0, n)
for _, id in ipairs(claim) do
  local d = redis.call('HGET', ARGV[4] .. id, 'd')
  if d then
    redis.call('ZADD', KEYS[3], ARGV[2], id)
    out[#out + 1] = d
  else
    redis.call('ZREM', KEYS[3], id)  -- its record expired: nothing left to report
  end
end
local more = '0'
if #due == n or #claim == n then more = '1' end
reindex(KEYS[2], KEYS[3], KEYS[4], ARGV[6])
return {'ok', out, more}
"""
)

ACK: Final = (
    """#!lua
-- KEYS: 1 lease zset, 2 unreported zset, 3 slot index.
-- ARGV: 1 reservation key prefix, 2 tenant, 3.. request ids reported.
"""
    + _REINDEX
    + """
for i = 3, #ARGV do
  redis.call('ZREM', KEYS[2], ARGV[i])
  redis.call('HDEL', ARGV[1] .. ARGV[i], 'd')
end
reindex(KEYS[1], KEYS[2], KEYS[3], ARGV[2])
return #ARGV - 2
"""
)

REMAINING: Final = """#!lua
-- KEYS: 1 slot marker, 2.. counters. Returns su, ru, st, rt of each counter.
if redis.call('EXISTS', KEYS[1]) == 0 then return {'lost'} end
local out = {'ok'}
for i = 2, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'su', 'ru', 'st', 'rt')
  for j = 1, 4 do out[#out + 1] = v[j] or '0' end
end
return out
"""

TAKE: Final = """#!lua
-- KEYS: 1 slot marker, 2 the tenant's bucket hash (r, t: levels; ts: last update)
-- ARGV: 1 requests/min, 2 tokens/min ('' = no limit), 3 requests, 4 tokens,
--       5 now ('' = the Redis server's clock, the same for every replica),
--       6 this call's nonce
if redis.call('EXISTS', KEYS[1]) == 0 then return {'lost'} end
local b = redis.call('HMGET', KEYS[2], 'r', 't', 'ts', 'n')
-- The same call sent again after its connection dropped takes nothing twice.
if b[4] == ARGV[6] then return {'ok'} end
local now
if ARGV[5] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[5])
end
-- A clock that steps back (another replica's, a little behind) refills nothing.
local elapsed = 0
if b[3] then elapsed = math.max(0, now - tonumber(b[3])) end
local levels = {}
local limits = {tonumber(ARGV[1]), tonumber(ARGV[2])}
local amounts = {tonumber(ARGV[3]), tonumber(ARGV[4])}
local names = {'requests', 'tokens'}
for i = 1, 2 do
  local cap = limits[i]
  if cap then
    -- A bucket holds at most its per-minute limit and refills at limit/60 per second.
    local level = cap
    if b[i] then level = math.min(cap, tonumber(b[i]) + elapsed * cap / 60) end
    -- More than the whole bucket may be taken from a full one, leaving it in debt (else
    -- a call bigger than a minute's tokens could never run); a limit of 0 admits nothing.
    local need = amounts[i]
    if cap > 0 and need > cap then need = cap end
    if level < need then return {'short', names[i], tostring(need - level)} end
    levels[i] = level
  end
end
local fields = {'ts', tostring(now), 'n', ARGV[6]}
local full_in = 0
for i = 1, 2 do
  if limits[i] then
    local left = levels[i] - amounts[i]
    fields[#fields + 1] = i == 1 and 'r' or 't'
    fields[#fields + 1] = tostring(left)
    if limits[i] > 0 then full_in = math.max(full_in, (limits[i] - left) * 60 / limits[i]) end
  end
end
redis.call('HSET', KEYS[2], unpack(fields))
if not limits[1] then redis.call('HDEL', KEYS[2], 'r') end
if not limits[2] then redis.call('HDEL', KEYS[2], 't') end
-- Once every bucket is full again the key carries nothing: let it go then.
redis.call('PEXPIRE', KEYS[2], math.ceil(full_in * 1000) + 1000)
return {'ok'}
"""

REBUILD: Final = """#!lua
-- Restores one slot after a data loss. KEYS: 1 slot marker, 2 slot index, then groups.
-- ARGV: 1 number of counters C, 2 number of reservations H, 3 reservation TTL ms,
--   then C x (su, st, expire-at) for KEYS[3 .. C+2],
--   then H x (request id, nano-USD, tokens, lease, reservation JSON, counters JSON,
--   tenant) for KEYS pairs (reservation, lease zset) from C+3.
-- First rebuild of the slot (no marker): counters are set to the ledger's spend with
-- nothing reserved, then every held reservation is added. The slot already rebuilt
-- (another replica got there first): spend is left alone (it may include calls settled
-- since), and only held reservations it does not know yet are added.
local c, h = tonumber(ARGV[1]), tonumber(ARGV[2])
local fresh = redis.call('EXISTS', KEYS[1]) == 0
if fresh then
  for i = 1, c do
    local k, a = KEYS[2 + i], 3 + (i - 1) * 3
    redis.call('DEL', k)
    if ARGV[a + 1] ~= '0' then redis.call('HSET', k, 'su', ARGV[a + 1]) end
    if ARGV[a + 2] ~= '0' then redis.call('HSET', k, 'st', ARGV[a + 2]) end
    redis.call('EXPIREAT', k, ARGV[a + 3])
  end
end
local added = 0
for j = 1, h do
  local rk, lz = KEYS[2 + c + (j - 1) * 2 + 1], KEYS[2 + c + (j - 1) * 2 + 2]
  local a = 3 + c * 3 + (j - 1) * 7
  local id, usd, tok = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local state = redis.call('HGET', rk, 's')
  if fresh or not state then
    for _, cc in ipairs(cjson.decode(ARGV[a + 6])) do
      if usd ~= '0' then redis.call('HINCRBY', cc[1], 'ru', usd) end
      if tok ~= '0' then redis.call('HINCRBY', cc[1], 'rt', tok) end
      redis.call('EXPIREAT', cc[1], cc[2])
    end
    redis.call('DEL', rk)
    redis.call('HSET', rk, 's', 'held', 'u', usd, 't', tok, 'd', ARGV[a + 5], 'ck', ARGV[a + 6])
    redis.call('PEXPIRE', rk, ARGV[3])
    redis.call('ZADD', lz, ARGV[a + 4], id)
    redis.call('ZADD', KEYS[2], 'LT', ARGV[a + 4], ARGV[a + 7])
    added = added + 1
  end
end
redis.call('SET', KEYS[1], '1')
return added
"""

MARK_ALL_SLOTS: Final = """#!lua flags=allow-cross-slot-keys
-- Sets every slot's marker (where not set) in one call: on a standalone Redis, or a
-- Cluster node that serves every slot. A Cluster of several nodes refuses it (the keys
-- of other nodes' slots are not local) and the client sets them one slot at a time.
-- ARGV: 1 namespace, 2 one tag per slot, separated by commas (one argument: cheaper to
-- send than 16384).
local n = 0
for tag in string.gmatch(ARGV[2], '[^,]+') do
  redis.call('SET', ARGV[1] .. ':{' .. tag .. '}:ok', '1', 'NX')
  n = n + 1
end
return n
"""

DUE_TENANTS: Final = """#!lua flags=allow-cross-slot-keys
-- The tenants whose earliest lease or claim has come, in the slots the hint set names,
-- in one call (on a standalone Redis, or a Cluster node that serves every slot; a
-- Cluster of several nodes refuses it and the client asks slot by slot). A hinted slot
-- whose index is empty leaves the hint, in the same atomic step.
-- ARGV: 1 namespace, 2 now, 3 at most this many, 4 the hint set, 5 the tag of slot 0
-- Answers {'lost'} when a slot looked at has no marker (Redis lost its data; slot 0's
-- is always looked at), else {'ok', tenants}.
if redis.call('EXISTS', ARGV[1] .. ':{' .. ARGV[5] .. '}:ok') == 0 then return {'lost'} end
local out = {}
local limit = tonumber(ARGV[3])
for _, tag in ipairs(redis.call('SMEMBERS', ARGV[4])) do
  local slot = ARGV[1] .. ':{' .. tag .. '}:'
  if redis.call('EXISTS', slot .. 'ok') == 0 then return {'lost'} end
  if redis.call('ZCARD', slot .. 'due') == 0 then
    redis.call('SREM', ARGV[4], tag)
  elseif #out < limit then
    local due = redis.call('ZRANGEBYSCORE', slot .. 'due', '-inf', ARGV[2], 'LIMIT', 0,
      limit - #out)
    for _, t in ipairs(due) do out[#out + 1] = t end
  end
end
return {'ok', out}
"""

HINT_SLOTS: Final = """#!lua flags=allow-cross-slot-keys
-- The backstop of the hint set: adds every slot (of the tags given) whose index holds a
-- tenant. A reservation whose slot was never hinted (its client died between the
-- reserve and the hint) is found by this, at the latest one full scan later.
-- ARGV: 1 namespace, 2 the hint set, 3 tags, comma-separated (a chunk of the slots).
local n = 0
for tag in string.gmatch(ARGV[3], '[^,]+') do
  if redis.call('ZCARD', ARGV[1] .. ':{' .. tag .. '}:due') > 0 then
    redis.call('SADD', ARGV[2], tag)
    n = n + 1
  end
end
return n
"""
