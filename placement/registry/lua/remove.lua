-- Remove a node (an operator's decommission): its descriptor, beat, state, capacity
-- and streams. Its reservation counters stay: leases still held on it are returned
-- to them as they end, and a node registering again under the id starts from them.
-- KEYS: 1 desc, 2 live, 3 state, 4 cap, 5 streams, 6 ver, 7 chg
-- ARGV: 1 node
-- Returns 1, or 0 when the pool holds no such node.
local node = ARGV[1]
if redis.call('HDEL', KEYS[1], node) == 0 then return 0 end
for k = 2, 5 do redis.call('HDEL', KEYS[k], node) end
touch(KEYS[6], KEYS[7], node)
return 1
