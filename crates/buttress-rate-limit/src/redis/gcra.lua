-- One GCRA decision of buttress-rate-limit's Redis backend, atomic because
-- Redis runs a script to its end before any other command.
--
-- KEYS[1]           the limit's key; its value is the theoretical arrival
--                   time (TAT) on Redis' clock, "<seconds>:<nanoseconds>"
-- ARGV[1], ARGV[2]  cost x T, seconds and nanoseconds (T: the emission
--                   interval, ceil(period / permits) nanoseconds)
-- ARGV[3], ARGV[4]  burst x T: how far the TAT may run ahead of now
-- ARGV[5]           T in nanoseconds
--
-- Returns {allowed (1 or 0), retry_after (s, ns), remaining, reset (s, ns)}:
-- retry_after is 0 when allowed; reset is the time until the key is full
-- again (after this decision), remaining the permits that could be taken
-- now (after this decision).
--
-- The math is that of Params::gcra: tat = max(tat, now) + cost x T, allowed
-- iff tat - now <= burst x T. Times are (seconds, nanoseconds) pairs: Lua
-- numbers are doubles, exact to 2^53 only, and nanoseconds since 1970 are
-- above that; each part of a pair stays far below it.

local E = 1000000000

-- Redis 7 always replicates a script's effects (the SET below, with its
-- value), never the script, so reading TIME before writing is allowed and
-- replicas share the primary's clock; Redis 5 and 6 need to be told.
if redis.replicate_commands then
  redis.replicate_commands()
end

local t = redis.call('TIME')
local now_s, now_n = tonumber(t[1]), tonumber(t[2]) * 1000

local function le(as, an, bs, bn)
  return as < bs or (as == bs and an <= bn)
end

local function sub(as, an, bs, bn)
  local s, n = as - bs, an - bn
  if n < 0 then
    return s - 1, n + E
  end
  return s, n
end

-- tat = max(stored tat, now); a missing or foreign value is a full key.
local tat_s, tat_n = now_s, now_n
local v = redis.call('GET', KEYS[1])
if v then
  local s, n = string.match(v, '^(%d+):(%d+)$')
  if s then
    s, n = tonumber(s), tonumber(n)
    if not le(s, n, now_s, now_n) then
      tat_s, tat_n = s, n
    end
  end
end

local span_s, span_n = tonumber(ARGV[3]), tonumber(ARGV[4])
local interval = tonumber(ARGV[5])

-- floor((burst x T - debt) / T); exact while burst x T < 2^53 ns (104 days).
local function remaining(ds, dn)
  if not le(ds, dn, span_s, span_n) then
    return 0
  end
  local s, n = sub(span_s, span_n, ds, dn)
  return math.floor((s * E + n) / interval)
end

local new_s, new_n = tat_s + tonumber(ARGV[1]), tat_n + tonumber(ARGV[2])
if new_n >= E then
  new_s, new_n = new_s + 1, new_n - E
end
local ahead_s, ahead_n = sub(new_s, new_n, now_s, now_n)

if le(ahead_s, ahead_n, span_s, span_n) then
  -- The key lives until it is full again (rounded up to the millisecond):
  -- an expired key and a full one decide the same.
  local px = ahead_s * 1000 + math.ceil(ahead_n / 1000000)
  redis.call('SET', KEYS[1], string.format('%.0f:%.0f', new_s, new_n),
    'PX', string.format('%.0f', px))
  return {1, 0, 0, remaining(ahead_s, ahead_n), ahead_s, ahead_n}
end

local retry_s, retry_n = sub(ahead_s, ahead_n, span_s, span_n)
local debt_s, debt_n = sub(tat_s, tat_n, now_s, now_n)
return {0, retry_s, retry_n, remaining(debt_s, debt_n), debt_s, debt_n}
