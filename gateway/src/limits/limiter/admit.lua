-- The admission script of the Redis limiter (see mod.rs and redis.rs for its contract).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rid = ARGV[1]
local lease = tonumber(ARGV[2])
local new = {}
for i = 1, #KEYS do
  local kind = ARGV[3 * i]
  local a = tonumber(ARGV[3 * i + 1])
  local b = tonumber(ARGV[3 * i + 2])
  if kind == 'g' then
    local tat = tonumber(redis.call('GET', KEYS[i]) or now)
    if tat < now then tat = now end
    if tat - now > b then return {0, i, tat - now - b} end
    new[i] = tat + a
  elseif kind == 'c' then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    local n = redis.call('ZCARD', KEYS[i])
    if n >= a then return {0, i, 0} end
    new[i] = n + 1
  else
    local v = redis.call('GET', KEYS[i])
    if not v then return {-1, i, 0} end
    v = tonumber(v)
    if v + b > a then return {0, i, 0} end
    new[i] = v + b
  end
end
local out = {1, 0, 0}
for i = 1, #KEYS do
  local kind = ARGV[3 * i]
  local a = tonumber(ARGV[3 * i + 1])
  local b = tonumber(ARGV[3 * i + 2])
  if kind == 'g' then
    local ttl_ms = math.floor((new[i] - now) / 1000) + 1000
    redis.call('SET', KEYS[i], new[i], 'PX', ttl_ms)
    table.insert(out, math.floor((b - (new[i] - now)) / a) + 1)
    table.insert(out, new[i] - now)
  elseif kind == 'c' then
    redis.call('ZADD', KEYS[i], now + lease, rid)
    redis.call('PEXPIRE', KEYS[i], math.floor(lease / 1000) + 1000)
    table.insert(out, a - new[i])
    table.insert(out, 0)
  else
    redis.call('INCRBY', KEYS[i], b)
    table.insert(out, a - new[i])
    table.insert(out, 0)
  end
end
return out
