-- breakwater: one global GCRA bucket (docs/global-limits.md).
-- KEYS[1]  the bucket: its theoretical arrival time (TAT), microseconds on Redis's clock
-- ARGV[1]  interval: microseconds per token (per / rate, rounded up)
-- ARGV[2]  burst: the bucket's size in tokens
-- ARGV[3]  hits: tokens asked for
-- ARGV[4]  "all": all or nothing (a request) | "some": as many as there are, up to hits (a lease)
--          | "refund": give hits tokens back (an unspent lease)
-- Returns { granted, remaining, wait_us, reset_us }: tokens taken, whole tokens left, how long
-- until what was asked for and not granted would be there (0 when all was granted), and how long
-- until the bucket is full.
-- Every number stays an exact integer in Lua's doubles: times are below 2^53 microseconds, and the
-- policy language keeps interval * burst below 2^50.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local hits = tonumber(ARGV[3])
local how = ARGV[4]
local tolerance = interval * burst
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
-- Redis's clock stepped back: an empty bucket, refilling at the usual pace (and kept so).
local clamped = false
if tat > now + tolerance then
  tat = now + tolerance
  clamped = true
end

local function store()
  if tat > now then
    redis.call('SET', KEYS[1], tat, 'PX', math.ceil((tat - now) / 1000) + 1)
  else
    redis.call('DEL', KEYS[1])
  end
end

if how == 'refund' then
  tat = math.max(now, tat - hits * interval)
  store()
  return { 0, math.floor((now + tolerance - tat) / interval), 0, tat - now }
end

local room = now + tolerance - tat
local available = math.floor(room / interval)
if available * interval > room then available = available - 1 end

local granted = hits
if available < hits then
  if how == 'some' then granted = available else granted = 0 end
end
if granted > 0 then
  tat = tat + granted * interval
end
if granted > 0 or clamped then store() end
local wait = 0
if granted < hits then
  local need = hits - granted
  if how == 'some' then need = 1 end
  wait = math.max(0, tat + need * interval - tolerance - now)
end
return { granted, available - granted, wait, tat - now }
