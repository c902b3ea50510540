-- Return the capacity held by expired leases in one pool.
-- KEYS: 1 rslots, 2 regress, 3 leases (zset sid -> expiry ms), 4 lamt (sid -> "node slots egress")
-- ARGV: 1 now_ms, 2 max sessions to expire in this call
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, sid in ipairs(expired) do
  local amt = redis.call('HGET', KEYS[4], sid)
  if amt then
    local node, slots, egress = string.match(amt, '^(%S+) (%S+) (%S+)$')
    redis.call('HINCRBY', KEYS[1], node, -tonumber(slots))
    redis.call('HINCRBYFLOAT', KEYS[2], node, -tonumber(egress))
    redis.call('HDEL', KEYS[4], sid)
  end
  redis.call('ZREM', KEYS[3], sid)
end
return #expired
