-- Atomic reservation: check capacity, take it, write session -> node with a lease.
-- Every key carries the pool's hash tag, so this is one slot under Redis Cluster.
-- KEYS: 1 cap, 2 rslots, 3 regress, 4 leases, 5 lamt, 6 state, 7 sess, 8 ver, 9 chg
-- ARGV: 1 node, 2 sid, 3 slots, 4 egress, 5 now_ms, 6 lease_ms, 7 headroom, 8 force, 9 session json
-- Returns 1 reserved, 0 no capacity, -1 unknown node, -2 node not ready, 2 already held.
local node, sid = ARGV[1], ARGV[2]
local slots, egress = tonumber(ARGV[3]), tonumber(ARGV[4])
local now, lease = tonumber(ARGV[5]), tonumber(ARGV[6])

local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[5], 'LIMIT', 0, 64)
for _, old in ipairs(expired) do
  local amt = redis.call('HGET', KEYS[5], old)
  if amt then
    local n, s, e = string.match(amt, '^(%S+) (%S+) (%S+)$')
    redis.call('HINCRBY', KEYS[2], n, -tonumber(s))
    redis.call('HINCRBYFLOAT', KEYS[3], n, -tonumber(e))
    redis.call('HDEL', KEYS[5], old)
    touch(KEYS[8], KEYS[9], n)
  end
  redis.call('ZREM', KEYS[4], old)
end

local held = redis.call('HGET', KEYS[5], sid)
if held then
  if string.match(held, '^(%S+)') == node then return 2 end
  return 0
end
local cap = redis.call('HGET', KEYS[1], node)
if not cap then return -1 end
if ARGV[8] ~= '1' then
  local state = redis.call('HGET', KEYS[6], node)
  if state and state ~= 'ready' then return -2 end
  local cs, ce = string.match(cap, '^(%S+) (%S+)$')
  local headroom = tonumber(ARGV[7])
  local us = tonumber(redis.call('HGET', KEYS[2], node) or '0')
  local ue = tonumber(redis.call('HGET', KEYS[3], node) or '0')
  if us + slots > tonumber(cs) * headroom then return 0 end
  if ue + egress > tonumber(ce) * headroom + 1e-9 then return 0 end
end
redis.call('HINCRBY', KEYS[2], node, slots)
redis.call('HINCRBYFLOAT', KEYS[3], node, egress)
redis.call('ZADD', KEYS[4], now + lease, sid)
redis.call('HSET', KEYS[5], sid, node .. ' ' .. ARGV[3] .. ' ' .. ARGV[4])
redis.call('HSET', KEYS[7], 'data', ARGV[9], 'state', 'reserved')
redis.call('PEXPIRE', KEYS[7], lease)
touch(KEYS[8], KEYS[9], node)
return 1
