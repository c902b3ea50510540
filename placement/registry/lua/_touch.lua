-- Shared prelude: record that a node's snapshot-visible data changed.
-- {pool}:ver is a hash {n = change counter, epoch = when the counter was created};
-- {pool}:chg is a zset node -> counter value of its last change. A reader that saw
-- (epoch, n) re-reads only the nodes scored above n; a new epoch (the pool's keys
-- were lost, e.g. a Redis restart without persistence) makes it re-read the pool.
local function touch(ver, chg, node)
  local n = redis.call('HINCRBY', ver, 'n', 1)
  if n == 1 then
    local t = redis.call('TIME')
    redis.call('HSET', ver, 'epoch', t[1] .. '.' .. t[2])
  end
  redis.call('ZADD', chg, n, node)
end

