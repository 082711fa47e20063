-- The admission script of the Redis limiter (see redis.rs for its contract).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rid = ARGV[1]
local lease = tonumber(ARGV[2])
local r = tonumber(ARGV[3])
-- Releases of earlier requests first: a slot freed or a reservation settled before this
-- request arrived counts for its decision.
for j = 1, r do
  local op = ARGV[2 + 2 * j]
  local v = ARGV[3 + 2 * j]
  if op == 'z' then
    redis.call('ZREM', KEYS[j], v)
  else
    redis.call('INCRBY', KEYS[j], v)
  end
end
local base = 3 + 2 * r
local n = #KEYS - r
local new = {}
for i = 1, n do
  local k = KEYS[r + i]
  local kind = ARGV[base + 3 * i - 2]
  local a = tonumber(ARGV[base + 3 * i - 1])
  local b = tonumber(ARGV[base + 3 * i])
  if kind == 'g' then
    local tat = tonumber(redis.call('GET', k) or now)
    if tat < now then tat = now end
    if tat - now > b then return {0, i, tat - now - b} end
    new[i] = tat + a
  elseif kind == 'c' then
    redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
    local used = redis.call('ZCARD', k)
    if used >= a then return {0, i, 0} end
    new[i] = used + 1
  else
    local v = redis.call('GET', k)
    if not v then return {-1, i, 0} end
    v = tonumber(v)
    if v + b > a then return {0, i, 0} end
    new[i] = v + b
  end
end
local out = {1, 0, 0}
for i = 1, n do
  local k = KEYS[r + i]
  local kind = ARGV[base + 3 * i - 2]
  local a = tonumber(ARGV[base + 3 * i - 1])
  local b = tonumber(ARGV[base + 3 * i])
  if kind == 'g' then
    local ttl_ms = math.floor((new[i] - now) / 1000) + 1000
    redis.call('SET', k, new[i], 'PX', ttl_ms)
    table.insert(out, math.floor((b - (new[i] - now)) / a) + 1)
    table.insert(out, new[i] - now)
  elseif kind == 'c' then
    redis.call('ZADD', k, now + lease, rid)
    redis.call('PEXPIRE', k, math.floor(lease / 1000) + 1000)
    table.insert(out, a - new[i])
    table.insert(out, 0)
  else
    redis.call('INCRBY', k, b)
    table.insert(out, a - new[i])
    table.insert(out, 0)
  end
end
return out
