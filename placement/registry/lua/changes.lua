-- Incremental snapshot read of one pool: return expired leases' capacity, then every
-- node changed since the caller's (epoch, n), or the whole pool when the caller has
-- no cursor ('-') or the pool's counter was recreated.
-- KEYS: 1 ver, 2 chg, 3 desc, 4 live, 5 state, 6 rslots, 7 regress, 8 streams,
--       9 leases, 10 lamt
-- ARGV: 1 now_ms, 2 max leases to expire, 3 since epoch ('-' for none), 4 since n
-- Returns {epoch, n, full (0/1), ids, desc, live, state, rslots, regress, streams};
-- the last six are lists aligned with ids (false where a field is absent).
local expired = redis.call('ZRANGEBYSCORE', KEYS[9], '-inf', '(' .. ARGV[1],
  'LIMIT', 0, tonumber(ARGV[2]))
for _, sid in ipairs(expired) do
  local amt = redis.call('HGET', KEYS[10], sid)
  if amt then
    local node, slots, egress = string.match(amt, '^(%S+) (%S+) (%S+)$')
    redis.call('HINCRBY', KEYS[6], node, -tonumber(slots))
    redis.call('HINCRBYFLOAT', KEYS[7], node, -tonumber(egress))
    redis.call('HDEL', KEYS[10], sid)
    touch(KEYS[1], KEYS[2], node)
  end
  redis.call('ZREM', KEYS[9], sid)
end

local n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
local epoch = redis.call('HGET', KEYS[1], 'epoch') or ''
local since = tonumber(ARGV[4])
local full, ids = 0, nil
if ARGV[3] ~= epoch or n < since then
  full = 1
  ids = redis.call('HKEYS', KEYS[3])
elseif n == since then
  ids = {}
else
  ids = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[4], '+inf')
end

local out = {epoch, n, full, ids}
for k = 3, 8 do
  local values = {}
  -- HMGET in chunks: unpack() is bounded by Lua's C stack.
  for i = 1, #ids, 1000 do
    local part = redis.call('HMGET', KEYS[k], unpack(ids, i, math.min(i + 999, #ids)))
    for j = 1, #part do values[#values + 1] = part[j] end
  end
  out[#out + 1] = values
end
return out
