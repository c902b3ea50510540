-- Operator state change (ready, draining, cordoned).
-- KEYS: 1 desc, 2 state, 3 ver, 4 chg;  ARGV: 1 node, 2 state
-- Returns 0 when the node is unknown, else 1.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
touch(KEYS[3], KEYS[4], ARGV[1])
return 1
