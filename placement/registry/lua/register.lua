-- Upsert a node: descriptor, liveness beat, capacity, streams; an operator-set state is kept.
-- KEYS: 1 desc, 2 live, 3 state, 4 cap, 5 streams, 6 ver, 7 chg
-- ARGV: 1 node, 2 descriptor json, 3 live json, 4 initial state, 5 "slots egress",
--       6 streams json (absent: leave the node's streams as they are)
local node = ARGV[1]
redis.call('HSET', KEYS[1], node, ARGV[2])
redis.call('HSET', KEYS[2], node, ARGV[3])
redis.call('HSETNX', KEYS[3], node, ARGV[4])
redis.call('HSET', KEYS[4], node, ARGV[5])
if #ARGV >= 6 then redis.call('HSET', KEYS[5], node, ARGV[6]) end
touch(KEYS[6], KEYS[7], node)
return 1
