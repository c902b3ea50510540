-- A node found dead by a probe (a relay reported it): its beat is set back to ARGV[2]
-- (a TTL ago, never later than its real last beat), so it is stale at once and gets no
-- placement or route; its load is kept, and its next beat (heartbeat.lua, register.lua)
-- writes a real time again.
-- KEYS: 1 desc, 2 live, 3 ver, 4 chg;  ARGV: 1 node, 2 silent since (seconds), 3 now
-- Returns 0 when the node is unknown, else 1.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
local raw = redis.call('HGET', KEYS[2], ARGV[1])
local live = {}
if raw then live = cjson.decode(raw) end
local since = tonumber(ARGV[2])
if type(live['hb']) == 'number' and live['hb'] < since then since = live['hb'] end
live['hb'] = since
live['dead'] = tonumber(ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], cjson.encode(live))
touch(KEYS[3], KEYS[4], ARGV[1])
return 1
