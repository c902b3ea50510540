-- A node renews the leases of the sessions it is serving.
-- KEYS: 1 leases, 2 lamt, 3.. one sess key per session id in ARGV[4..]
-- ARGV: 1 node, 2 now_ms, 3 lease_ms, 4.. session ids
-- Returns the ids this pool does not hold for that node.
local node, now, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local missing = {}
for i = 4, #ARGV do
  local sid = ARGV[i]
  local key = KEYS[i - 1]
  local amt = redis.call('HGET', KEYS[2], sid)
  local score = redis.call('ZSCORE', KEYS[1], sid)
  if amt and score and tonumber(score) >= now and string.match(amt, '^(%S+)') == node
      and redis.call('EXISTS', key) == 1 then
    redis.call('ZADD', KEYS[1], now + lease, sid)
    redis.call('PEXPIRE', key, lease)
    redis.call('HSET', key, 'state', 'live')
  else
    table.insert(missing, sid)
  end
end
return missing
