-- Free a session's capacity and forget it.
-- KEYS: 1 rslots, 2 regress, 3 leases, 4 lamt, 5 sess, 6 ver, 7 chg
-- ARGV: 1 sid
-- Returns the session's stored fields (flat list) or an empty list.
local sid = ARGV[1]
local amt = redis.call('HGET', KEYS[4], sid)
if amt then
  local n, s, e = string.match(amt, '^(%S+) (%S+) (%S+)$')
  redis.call('HINCRBY', KEYS[1], n, -tonumber(s))
  redis.call('HINCRBYFLOAT', KEYS[2], n, -tonumber(e))
  redis.call('HDEL', KEYS[4], sid)
  touch(KEYS[6], KEYS[7], n)
end
redis.call('ZREM', KEYS[3], sid)
local data = redis.call('HGETALL', KEYS[5])
redis.call('DEL', KEYS[5])
return data
