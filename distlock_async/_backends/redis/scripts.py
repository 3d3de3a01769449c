"""What the Redis backend keeps on the server: the names of a lock's keys and the Lua scripts that change them."""

from __future__ import annotations

import hashlib

__all__ = [
    "EXTEND",
    "INSPECT",
    "LEAVE",
    "OBTAIN",
    "RELEASE",
    "REMAINING",
    "TOUCH",
    "WAITER_TTL_MS",
    "Keys",
    "Script",
    "holder_of",
    "ms",
    "owner",
    "owner_of_notice",
]


class Script:
    __slots__ = ("body", "sha")

    def __init__(self, body: str) -> None:
        self.body = body
        self.sha = hashlib.sha1(body.encode()).hexdigest()


#: How long a waiter's place in a lock's queue lasts unless its locker keeps it alive (every attempt
#: does, and a waiter whose attempts are further apart touches it in between), and how long a lock
#: handed to the head of the queue waits for it to confirm: a waiter that died holds the queue up at
#: most this long.
WAITER_TTL_MS = 3000

# An obtain's *owner* is its token, a space and its holder label (see ``owner``): the lock's value while
# it holds the lock, its member in the queue while it waits. Every script compares it whole, so ownership
# is the token's (the label only rides along), and a hand-off to the head of the queue carries the head's
# label into the lock's value with no extra key or command.
#
# The queue scripts: KEYS[1] lock, KEYS[2] fence counter, KEYS[3] queue (zset: waiter's owner -> arrival
# number), KEYS[4] waiters' deadlines (zset: waiter's owner -> server ms when the entry dies unless kept
# alive); ARGV[1] owner, ARGV[2] WAITER_TTL_MS. Every deadline is on the server's clock (TIME), never a
# client's. The prelude drops dead waiters and defines what the scripts share.
#
# The fencing token is one more than the last one, and never below the server clock in microseconds, so
# it keeps increasing when Redis loses the counter (restart without persistence, failover to a replica
# that lagged). That also lets the counter expire: after a minute nothing below the clock is left to beat.
_PRELUDE = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local grace = tonumber(ARGV[2])
-- Whether anyone waits; the waiters who are not kept alive are dropped first.
local function waiting()
  if redis.call('exists', KEYS[4]) == 0 then
    return false
  end
  local dead = redis.call('zrangebyscore', KEYS[4], '-inf', now)
  if #dead > 0 then
    redis.call('zrem', KEYS[3], unpack(dead))
    redis.call('zrem', KEYS[4], unpack(dead))
  end
  return redis.call('exists', KEYS[3]) == 1
end
local function leave(owner)
  redis.call('zrem', KEYS[3], owner)
  redis.call('zrem', KEYS[4], owner)
end
local function grant(owner, ttl)
  redis.call('set', KEYS[1], owner, 'PX', ttl)
  local floor = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local fence = tonumber(redis.call('get', KEYS[2]) or '0') + 1
  if fence < floor then fence = floor end
  redis.call('set', KEYS[2], string.format('%d', fence), 'PX', math.max(tonumber(ttl), 60000))
  return fence
end
-- The first live waiter, or nil.
local function first()
  return waiting() and redis.call('zrange', KEYS[3], 0, 0)[1] or nil
end
-- The lock goes to ``head`` (for ``grace``, until it confirms), who hears of it; with no head it is free.
local function hand_to(head)
  if head then
    local fence = grant(head, grace)
    leave(head)
    redis.call('publish', KEYS[1], head .. ' ' .. string.format('%d', fence))
  else
    redis.call('del', KEYS[1])
  end
  return head
end
local function keep(owner)
  local deadline = now + grace
  redis.call('zadd', KEYS[4], deadline, owner)
  redis.call('pexpireat', KEYS[3], deadline)
  redis.call('pexpireat', KEYS[4], deadline)
end
"""

# ARGV[3] TTL in ms. {1, fencing token}: ours, taken now or handed to us by a release (and confirmed
# now: it gets our TTL in full). {0, the holder's remaining ms}: taken; we are in the queue, at the back
# the first time. A free lock goes to the head of the queue only: when an expiry freed it, it is handed
# to the head here, whoever asked.
OBTAIN = Script(
    _PRELUDE
    + """
local held = redis.call('get', KEYS[1])
if held == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[3])
  return {1, tonumber(redis.call('get', KEYS[2]))}
end
if not held then
  local head = first()
  if not head or head == ARGV[1] then
    local fence = grant(ARGV[1], ARGV[3])
    if head then leave(ARGV[1]) end
    return {1, fence}
  end
  hand_to(head)
else
  waiting()
end
if not redis.call('zscore', KEYS[3], ARGV[1]) then
  local last = redis.call('zrange', KEYS[3], -1, -1, 'withscores')[2]
  redis.call('zadd', KEYS[3], (tonumber(last) or 0) + 1, ARGV[1])
end
keep(ARGV[1])
return {0, redis.call('pttl', KEYS[1])}
"""
)

# {1, the waiter it went to or nil} if it was ours and is released: handed to the first live waiter (for
# WAITER_TTL_MS, until it confirms), who hears of it on the lock's channel ("<its owner> <its fencing
# token>": the owner's label may hold spaces, the fencing token is the last word); free otherwise. {0}
# if it was not ours.
RELEASE = Script(
    _PRELUDE
    + """
if redis.call('get', KEYS[1]) ~= ARGV[1] then
  return {0}
end
return {1, hand_to(first())}
"""
)

# A waiter leaves without the lock (gave up, cancelled, or its attempt's outcome is unknown): out of the
# queue, and a lock handed to it meanwhile (or taken by the unknown attempt) is passed on, never left to
# nobody. 1 if it held the lock.
LEAVE = Script(
    _PRELUDE
    + """
leave(ARGV[1])
local held = redis.call('get', KEYS[1])
if held == ARGV[1] or not held then
  hand_to(first())
end
if held == ARGV[1] then return 1 end
return 0
"""
)

# A waiter keeps its place: 1 if it has one, 0 if it was dropped (its locker stalled) and must queue again.
TOUCH = Script(
    _PRELUDE
    + """
if not redis.call('zscore', KEYS[3], ARGV[1]) then
  return 0
end
keep(ARGV[1])
return 1
"""
)


# KEYS[1] lock; ARGV[1] owner, ARGV[2] TTL in ms. 1 if it was ours and has its full TTL again.
EXTEND = Script("""
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
""")


# KEYS[1] lock; ARGV[1] owner. Remaining ms if it is ours, else -2.
REMAINING = Script("""
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pttl', KEYS[1])
end
return -2
""")


# KEYS[1] lock, KEYS[2] fence counter. {1 if held, the holder's remaining ms or -2, the counter or '',
# the holder's owner or ''}. A lock handed to a waiter that has not confirmed yet counts as held (by
# that waiter).
INSPECT = Script("""
local held = redis.call('get', KEYS[1])
local fence = redis.call('get', KEYS[2]) or ''
if held then
  return {1, redis.call('pttl', KEYS[1]), fence, held}
end
return {0, -2, fence, ''}
""")


def ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def owner(token: str, holder: str) -> str:
    """What the scripts store and compare for one obtain: its token (hex, no space), a space, its label."""
    return f"{token} {holder}"


def holder_of(owner: str) -> str | None:
    """The label of a stored owner; ``None`` for a value without one (a lock of an older release, or a
    value written by hand)."""
    _, space, holder = owner.partition(" ")
    return holder if space and holder else None


def owner_of_notice(message: str) -> str:
    """Whom a release's message ("<owner> <fencing token>") hands the lock to; its label may hold spaces."""
    return message.rpartition(" ")[0]


class Keys:
    __slots__ = ("all", "fence", "lock")

    def __init__(self, namespace: str, key: str) -> None:
        # The braces make a Cluster hash tag: every key of a lock lives in the slot of the user's key. A
        # "}" in the key would end the tag early (or leave it empty, so that each key hashed whole, into
        # different slots): it is written "%7D", and "%" as "%25" so that no two keys share a name.
        tag = key.replace("%", "%25").replace("}", "%7D")
        self.lock = f"{namespace}:{{{tag}}}"
        self.fence = self.lock + ":fence"
        #: What the queue scripts take: the lock, its fence counter, its queue and its waiters' deadlines.
        self.all = (self.lock, self.fence, self.lock + ":queue", self.lock + ":waiters")
