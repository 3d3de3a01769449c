"""What the Redis backend keeps on the server: the names of a lock's keys and the Lua scripts that change them."""

from __future__ import annotations

import hashlib

__all__ = ["EXTEND", "HANDOFF_MS", "INSPECT", "OBTAIN", "RELEASE", "REMAINING", "UNRESERVE", "Keys", "Script", "ms"]


class Script:
    __slots__ = ("body", "sha")

    def __init__(self, body: str) -> None:
        self.body = body
        self.sha = hashlib.sha1(body.encode()).hexdigest()


#: How long a released lock stays reserved for a waiter that was woken by the release, in ms.
HANDOFF_MS = 50


# KEYS[1] lock, KEYS[2] fence counter; ARGV[1] token, ARGV[2] TTL in ms, ARGV[3] "1" if the caller has
# been waiting (so it may take a lock reserved for the waiters).
# Granted: {1, fencing token}. Busy: {0, the holder's remaining ms}.
# The fencing token is one more than the last one, and never below the server clock in microseconds, so
# it keeps increasing when Redis loses the counter (restart without persistence, failover to a replica
# that lagged). That also lets the counter expire: after a minute nothing below the clock is left to beat.
OBTAIN = Script("""
local held = redis.call('get', KEYS[1])
if not held or (held == 'handoff' and ARGV[3] == '1') then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  local now = redis.call('time')
  local floor = tonumber(now[1]) * 1000000 + tonumber(now[2])
  local fence = tonumber(redis.call('get', KEYS[2]) or '0') + 1
  if fence < floor then fence = floor end
  redis.call('set', KEYS[2], string.format('%d', fence), 'PX', math.max(tonumber(ARGV[2]), 60000))
  return {1, fence}
end
return {0, redis.call('pttl', KEYS[1])}
""")


# KEYS[1] lock; ARGV[1] token, ARGV[2] hand-off reservation in ms. 1 if it was ours and is released now.
# While reserved, the key holds 'handoff' (tokens are hex, never that).
# Waiters hear of it on the lock's channel. If anyone listens, the lock stays reserved for them for a
# moment, so that the releasing client cannot take it straight back and starve them.
RELEASE = Script("""
if redis.call('get', KEYS[1]) == ARGV[1] then
  if redis.call('publish', KEYS[1], '') > 0 then
    redis.call('set', KEYS[1], 'handoff', 'PX', ARGV[2])
  else
    redis.call('del', KEYS[1])
  end
  return 1
end
return 0
""")


# KEYS[1] lock. The last waiter of a locker gave up: free a reservation it may have been woken for.
UNRESERVE = Script("""
if redis.call('get', KEYS[1]) == 'handoff' then
  redis.call('del', KEYS[1])
  redis.call('publish', KEYS[1], '')
end
return 0
""")


# KEYS[1] lock; ARGV[1] token, ARGV[2] TTL in ms. 1 if it was ours and has its full TTL again.
EXTEND = Script("""
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
""")


# KEYS[1] lock; ARGV[1] token. Remaining ms if it is ours, else -2.
REMAINING = Script("""
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pttl', KEYS[1])
end
return -2
""")


# KEYS[1] lock, KEYS[2] fence counter. {1 if held, the holder's remaining ms or -2, the counter or ''}.
# A hand-off reservation counts as free: it lasts HANDOFF_MS and goes to whoever was waiting.
INSPECT = Script("""
local held = redis.call('get', KEYS[1])
local fence = redis.call('get', KEYS[2]) or ''
if held and held ~= 'handoff' then
  return {1, redis.call('pttl', KEYS[1]), fence}
end
return {0, -2, fence}
""")


def ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class Keys:
    __slots__ = ("fence", "lock")

    def __init__(self, namespace: str, key: str) -> None:
        # The braces make a Cluster hash tag: both keys live in the slot of the user's key. A "}" in the
        # key would end the tag early (or leave it empty, so that each key hashed whole, into different
        # slots): it is written "%7D", and "%" as "%25" so that no two keys share a name.
        tag = key.replace("%", "%25").replace("}", "%7D")
        self.lock = f"{namespace}:{{{tag}}}"
        self.fence = self.lock + ":fence"
