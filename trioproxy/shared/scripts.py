"""The Lua scripts of the shared state: each multi-step update is one atomic call.

Rules:
- Time is Redis's own (``TIME``): hosts whose clocks disagree still share one
  window. Milliseconds for windows and leases, seconds for buckets.
- Every key of one API key's state carries the key's name as a hash tag
  (``tp:{name}:...``): one slot in a cluster, so one script may touch them all.
- The scripts follow :mod:`trioproxy.admission.quotas` rule for rule: check
  every limit first, count only an admitted request.
- Every key has a TTL but the all-time usage totals.
"""

from __future__ import annotations

__all__ = ["ADMIT", "GET_RECEIPT", "PUT_RECEIPT", "REFRESH", "SETTLE", "USAGE", "key_prefix"]


def key_prefix(name: str | None) -> str:
    """``tp:{name}:``; open mode (no keys) ``tp:{}open:``, which no key name
    makes (names are at least one byte, and every other key ends ``}:``)."""
    return "tp:{" + name + "}:" if name is not None else "tp:{}open:"


# KEYS: rpm zset, tpm hash, leases zset
# ARGV: rpm, tpm, max_streams, lease_ttl_ms, lease_id, prompt_estimate, request_member,
#       early (1: admitted already, its upstream request left: count it whatever the
#       limits say, and name the limit it overran), this host's early admissions not
#       counted yet and their tokens (a decision that is not early leaves them room)
# -> {"ok", 0, rpm count, tpm used, leases held} (after this request) |
#    {limit name, retry after ms, 0, 0, 0} (refused, nothing counted) |
#    {"over:" limit name, 0, counts...} (early and over a limit, counted)
ADMIT = """
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, tpm, streams = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local used, early, over = 0, ARGV[8] == '1', nil
local unsent, unsent_tokens = tonumber(ARGV[9] or '0'), tonumber(ARGV[10] or '0')
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
  if redis.call('ZCARD', KEYS[1]) + unsent >= rpm then
    over = 'over:rpm'
  end
  if over and not early then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {'rpm', tonumber(oldest[2]) + 60000 - now, 0, 0, 0}
  end
end
if tpm > 0 then
  local oldest = sec
  local buckets = redis.call('HGETALL', KEYS[2])
  for i = 1, #buckets, 2 do
    local s = tonumber(buckets[i])
    if sec - s >= 60 then
      redis.call('HDEL', KEYS[2], buckets[i])
    else
      used = used + tonumber(buckets[i + 1])
      if s < oldest then oldest = s end
    end
  end
  if used + unsent_tokens >= tpm then
    if not early then return {'tpm', (oldest + 60 - sec) * 1000, 0, 0, 0} end
    over = over or 'over:tpm'
  end
end
local held, requests = 0, 0
if streams > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  held = redis.call('ZCARD', KEYS[3])
  if held + unsent >= streams then
    if not early then return {'max_streams', 1000, 0, 0, 0} end
    over = over or 'over:max_streams'
  end
  redis.call('ZADD', KEYS[3], now + ttl, ARGV[5])
  redis.call('PEXPIRE', KEYS[3], ttl * 2)
  held = held + 1
end
if rpm > 0 then
  redis.call('ZADD', KEYS[1], now, ARGV[7])
  redis.call('PEXPIRE', KEYS[1], 61000)
  requests = redis.call('ZCARD', KEYS[1])
end
local estimate = tonumber(ARGV[6])
if tpm > 0 and estimate > 0 then
  redis.call('HINCRBY', KEYS[2], sec, estimate)
  redis.call('EXPIRE', KEYS[2], 61)
  used = used + estimate
end
return {over or 'ok', 0, requests, used, held}
"""

# KEYS: tpm hash, leases zset, usage hash
# ARGV: lease_id ('' = none), tpm delta, tpm on (0/1), usage counted (0/1: it reached
# an upstream), prompt, completion, estimated tokens
SETTLE = """
local sec = tonumber(redis.call('TIME')[1])
if ARGV[1] ~= '' then redis.call('ZREM', KEYS[2], ARGV[1]) end
local delta = tonumber(ARGV[2])
if ARGV[3] == '1' and delta ~= 0 then
  redis.call('HINCRBY', KEYS[1], sec, delta)
  redis.call('EXPIRE', KEYS[1], 61)
end
if ARGV[4] ~= '1' then return 1 end
local periods = {m = math.floor(sec / 60), d = math.floor(sec / 86400)}
for name, id in pairs(periods) do
  if tonumber(redis.call('HGET', KEYS[3], name) or '-1') ~= id then
    redis.call('HSET', KEYS[3], name, id, name .. '.r', 0, name .. '.p', 0, name .. '.c', 0,
      name .. '.e', 0)
  end
end
for _, name in ipairs({'m', 'd', 'a'}) do
  redis.call('HINCRBY', KEYS[3], name .. '.r', 1)
  redis.call('HINCRBY', KEYS[3], name .. '.p', ARGV[5])
  redis.call('HINCRBY', KEYS[3], name .. '.c', ARGV[6])
  redis.call('HINCRBY', KEYS[3], name .. '.e', ARGV[7])
end
return 1
"""

# KEYS: leases zset; ARGV: lease_ttl_ms, lease ids... -> how many were still held
REFRESH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local kept = 0
for i = 2, #ARGV do
  kept = kept + redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return kept
"""

# KEYS: usage hash -> {second now, field, value, ...}
USAGE = """
local all = redis.call('HGETALL', KEYS[1])
table.insert(all, 1, redis.call('TIME')[1])
return all
"""

# KEYS: receipt hash, completion-id index zset (every owner's), the owner's own index
# ARGV: document, owner ('' = none), created, completion id ('' = none), ttl seconds,
#       entries an index keeps
# -> 1 stored, 0 an id that exists (insert-only)
# An index keeps the newest entries only, and none older than the ttl (their receipts
# are gone): servers that reuse ids (chatcmpl-NNN) cannot grow it, and one owner's
# receipts are found in its own index however many other owners share the id.
PUT_RECEIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'doc', ARGV[1], 'owner', ARGV[2], 'created', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
if ARGV[4] ~= '' then
  local keep = tonumber(ARGV[6])
  for i = 2, #KEYS do
    redis.call('ZADD', KEYS[i], ARGV[3], KEYS[1])
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', tonumber(ARGV[3]) - tonumber(ARGV[5]))
    redis.call('ZREMRANGEBYRANK', KEYS[i], 0, -keep - 1)
    redis.call('EXPIRE', KEYS[i], ARGV[5])
  end
end
return 1
"""

# KEYS: receipt hash (by receipt id), completion-id index zset (the reader's own, or
# every owner's for an admin or open mode)
# ARGV: owner, any ('1': an admin or open mode reads every row)
# -> the document, or nil (unknown, or another key's: the same answer)
GET_RECEIPT = """
local function readable(key)
  local row = redis.call('HMGET', key, 'doc', 'owner')
  if not row[1] then return nil end
  if ARGV[2] == '1' or row[2] == ARGV[1] then return row[1] end
  return false
end
local found = readable(KEYS[1])
if found ~= nil then return found end
local ids = redis.call('ZREVRANGE', KEYS[2], 0, 63)
for _, key in ipairs(ids) do
  found = readable(key)
  if found then return found end
end
return false
"""
