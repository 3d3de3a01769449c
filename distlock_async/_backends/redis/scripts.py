"""What the Redis backend keeps on the server: the names of a lock's keys and the Lua scripts that change them.

Locks, semaphores and elections share one queue mechanism (the prelude below); each lives in a *space*
of keys of its own beside the user's name ``<name>``, escaped into the Cluster hash tag ``{<tag>}``:

- a lock: ``ns:{<tag>}`` (the holder's token, with the TTL), ``:fence``, ``:queue``, ``:waiters``;
- the permits of a semaphore: ``ns:{<tag>}:permits`` (sorted set: holder token -> its deadline in the
  server's ms), ``ns:{<tag>}:permits:fence``, ``:permits:queue``, ``:permits:waiters`` and
  ``:permits:tokens`` (hash: holder token -> ``"<fencing token> <holder label>"``);
- an election: the same five keys with ``:leader`` instead of ``:permits``; at most one holder, the
  leader, whose ``:leader:tokens`` entry is ``"<fencing token> <value>"``.

The tag ends at the first ``}``, which the escaping keeps out of ``<tag>``; so what follows it tells the
spaces apart, and no key of one space of a name is a key of another space or of another name: a lock
named ``x:permits`` is ``ns:{x:permits}``, never ``ns:{x}:permits``. Every key of a name, whatever its
space, lives in the slot of ``<tag>``. Each space's key is also its pub/sub channel.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

__all__ = [
    "COORD_EXTEND",
    "COORD_LEAVE",
    "COORD_OBTAIN",
    "COORD_RELEASE",
    "COORD_REMAINING",
    "EXTEND",
    "INSPECT",
    "LEADER",
    "LEADER_SPACE",
    "LEAVE",
    "LOCKS",
    "OBTAIN",
    "PERMITS",
    "PERMIT_SPACE",
    "PROCLAIM",
    "RELEASE",
    "REMAINING",
    "TOUCH",
    "WAITER_TTL_MS",
    "Keys",
    "Script",
    "Space",
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
-- The next fencing token of the name (KEYS[2] is its counter).
local function next_fence(ttl)
  local floor = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local fence = tonumber(redis.call('get', KEYS[2]) or '0') + 1
  if fence < floor then fence = floor end
  redis.call('set', KEYS[2], string.format('%d', fence), 'PX', math.max(tonumber(ttl), 60000))
  return fence
end
local function grant(owner, ttl)
  redis.call('set', KEYS[1], owner, 'PX', ttl)
  return next_fence(ttl)
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


# --- semaphores and elections ------------------------------------------------------------------------
# The same queue as a lock's (the prelude's waiting/leave/keep), served by rank rather than by hand-off: a
# contender may hold while the live holders plus the live waiters queued ahead of it are fewer than its
# limit (an election is the limit 1). KEYS[1] holders (zset: token -> deadline in server ms), KEYS[2]
# fence counter, KEYS[3] queue and KEYS[4] waiters' deadlines (as for a lock; a waiter's member is
# "<token>/<limit>", so that whoever serves the queue knows each waiter's limit), KEYS[5] tokens (hash:
# holder token -> "<fencing token> <value>"). ARGV[1] token, ARGV[2] WAITER_TTL_MS, ARGV[3] limit, ARGV[4]
# "1" if observers follow the name (an election), ARGV[5] TTL in ms, ARGV[6] value (a candidate's; a
# permit's holder label, which the tokens hash keeps for PERMITS to show).
#
# A change that may let waiters hold (a release, a waiter leaving) publishes "<token> 0" for each waiter
# that fits now on KEYS[1]; a change of who leads or of the value publishes "* 0" for the observers. (The
# shape of a lock's "<token> <fencing token>": nothing is handed over, so no fencing token, and whoever
# reads the first or the last word of a lock's message reads these alike.) An expiry
# announces nothing: every Busy reply says when the next holder or waiter ahead may expire.
_COORD_PRELUDE = (
    _PRELUDE
    + """
local me = ARGV[1] .. '/' .. ARGV[3]
-- The live holders' count, the expired ones dropped.
local function holders()
  local gone = redis.call('zrangebyscore', KEYS[1], '-inf', now)
  if #gone > 0 then
    redis.call('zrem', KEYS[1], unpack(gone))
    redis.call('hdel', KEYS[5], unpack(gone))
  end
  return redis.call('zcard', KEYS[1])
end
-- The holders' keys live as long as their last holder.
local function keep_holders()
  local last = redis.call('zrange', KEYS[1], -1, -1, 'withscores')[2]
  redis.call('pexpireat', KEYS[1], last)
  redis.call('pexpireat', KEYS[5], last)
end
local function changed()
  if ARGV[4] == '1' then redis.call('publish', KEYS[1], '* 0') end
end
-- Wake the waiters that may hold now, given ``held`` live holders; their tokens.
local function wake(held)
  local woken = {}
  if not waiting() then return woken end
  for i, member in ipairs(redis.call('zrange', KEYS[3], 0, -1)) do
    local token, limit = string.match(member, '^(.*)/(%d+)$')
    if held + i - 1 < tonumber(limit) then
      redis.call('publish', KEYS[1], token .. ' 0')
      woken[#woken + 1] = token
    end
  end
  return woken
end
-- Take ``token`` off the holders; whether it held.
local function drop(token)
  if redis.call('zrem', KEYS[1], token) == 0 then return false end
  redis.call('hdel', KEYS[5], token)
  changed()
  return true
end
"""
)

# {1, fencing token}: ours now. {0, ms until a holder or a waiter may expire, or -1}: not ours; we are in
# the queue, at the back the first time.
COORD_OBTAIN = Script(
    _COORD_PRELUDE
    + """
local held = holders()
local entry = redis.call('hget', KEYS[5], ARGV[1])
if entry then
  redis.call('zadd', KEYS[1], 'XX', now + tonumber(ARGV[5]), ARGV[1])
  keep_holders()
  return {1, tonumber(string.match(entry, '^(%d+)'))}
end
local position = 0
if waiting() then
  position = redis.call('zrank', KEYS[3], me) or redis.call('zcard', KEYS[3])
end
if held + position < tonumber(ARGV[3]) then
  leave(me)
  local fence = next_fence(ARGV[5])
  redis.call('zadd', KEYS[1], now + tonumber(ARGV[5]), ARGV[1])
  redis.call('hset', KEYS[5], ARGV[1], string.format('%d', fence) .. ' ' .. (ARGV[6] or ''))
  keep_holders()
  changed()
  return {1, fence}
end
if not redis.call('zscore', KEYS[3], me) then
  local last = redis.call('zrange', KEYS[3], -1, -1, 'withscores')[2]
  redis.call('zadd', KEYS[3], (tonumber(last) or 0) + 1, me)
end
keep(me)
local soonest = tonumber(redis.call('zrange', KEYS[1], 0, 0, 'withscores')[2])
if position > 0 then
  local waiter = tonumber(redis.call('zrange', KEYS[4], 0, 0, 'withscores')[2])
  if not soonest or waiter < soonest then soonest = waiter end
end
if not soonest then return {0, -1} end
return {0, soonest - now}
"""
)

# {1, the tokens of the waiters woken} if it was ours (live) and is released; {0} if not.
COORD_RELEASE = Script(
    _COORD_PRELUDE
    + """
local held = holders()
if not drop(ARGV[1]) then return {0} end
return {1, wake(held - 1)}
"""
)

# A contender leaves without holding (gave up, cancelled, or its attempt's outcome is unknown): out of the
# queue, and a permit or term that the unknown attempt took is given back. Whoever may hold now is woken.
# 1 if it held.
COORD_LEAVE = Script(
    _COORD_PRELUDE
    + """
local queued = redis.call('zrem', KEYS[3], me) == 1
leave(me)
local held = holders()
local had = drop(ARGV[1])
if had then held = held - 1 end
if had or queued then wake(held) end
if had then return 1 end
return 0
"""
)

# 1 if it was ours (live) and has its full TTL again; an expired holder is never brought back.
COORD_EXTEND = Script(
    _COORD_PRELUDE
    + """
holders()
if not redis.call('zscore', KEYS[1], ARGV[1]) then return 0 end
redis.call('zadd', KEYS[1], 'XX', now + tonumber(ARGV[5]), ARGV[1])
keep_holders()
return 1
"""
)

# KEYS[1] holders; ARGV[1] token. Remaining ms if it is ours, else -2.
COORD_REMAINING = Script("""
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = tonumber(redis.call('zscore', KEYS[1], ARGV[1]))
if deadline and deadline > now then return deadline - now end
return -2
""")

# The leader sets its value: 1 if it still leads, else 0.
PROCLAIM = Script(
    _COORD_PRELUDE
    + """
holders()
local entry = redis.call('hget', KEYS[5], ARGV[1])
if not entry then return 0 end
redis.call('hset', KEYS[5], ARGV[1], string.match(entry, '^(%d+)') .. ' ' .. ARGV[6])
changed()
return 1
"""
)

# KEYS[1] holders, KEYS[5] tokens of an election. {"<fencing token> <value>", remaining ms} of the live
# leader, or {} if nobody leads. Reads only.
LEADER = Script("""
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local top = redis.call('zrangebyscore', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
if #top == 0 then return {} end
return {redis.call('hget', KEYS[5], top[1]), tonumber(top[2]) - now}
""")

# KEYS: a semaphore's five keys (as COORD_OBTAIN's). {each live holder's "<fencing token> <holder label>"
# (false for a holder without one), the live waiters' count, the fence counter or ''}. Reads only:
# expired holders and waiters are skipped, not dropped.
PERMITS = Script("""
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local entries = {}
for i, token in ipairs(redis.call('zrangebyscore', KEYS[1], '(' .. now, '+inf')) do
  entries[i] = redis.call('hget', KEYS[5], token)
end
local waiting = redis.call('zcount', KEYS[4], '(' .. now, '+inf')
return {entries, waiting, redis.call('get', KEYS[2]) or ''}
""")

#: The suffixes of a name's spaces beside its lock (see the module docstring).
PERMIT_SPACE = ":permits"
LEADER_SPACE = ":leader"


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
    """The keys of a name in one space: its lock (``space`` empty), its permits or its election."""

    __slots__ = ("all", "fence", "lock")

    def __init__(self, namespace: str, key: str, space: str = "") -> None:
        # The braces make a Cluster hash tag: every key of a lock lives in the slot of the user's key. A
        # "}" in the key would end the tag early (or leave it empty, so that each key hashed whole, into
        # different slots): it is written "%7D", and "%" as "%25" so that no two keys share a name.
        tag = key.replace("%", "%25").replace("}", "%7D")
        #: The lock, or the holders of permits or of the leadership; also the space's pub/sub channel.
        self.lock = f"{namespace}:{{{tag}}}{space}"
        self.fence = self.lock + ":fence"
        #: What the queue scripts take: the lock, its fence counter, its queue and its waiters' deadlines
        #: (and for permits and leaders, the holders' fencing tokens and values).
        self.all: tuple[str, ...] = (self.lock, self.fence, self.lock + ":queue", self.lock + ":waiters")
        if space:
            self.all += (self.lock + ":tokens",)


@dataclass(frozen=True)
class Space:
    """What one kind of contender queues for, and how: a lock, or permits or a leadership counted against
    ``limit`` (an election: limit 1, with the candidate's ``value``, followed by observers)."""

    #: Beside the lock's keys: ``""`` (a lock), ``PERMIT_SPACE`` or ``LEADER_SPACE``.
    suffix: str = ""
    limit: int = 1
    #: What a holder's tokens entry carries after its fencing token: a candidate's value, or (set per
    #: contender, see ``labelled``) a permit's holder label.
    value: str = ""

    def labelled(self, holder: str) -> Space:
        """The space for one contender with ``holder``: permits store the label; the others stay as they are."""
        return replace(self, value=holder) if self.suffix == PERMIT_SPACE else self

    @property
    def coordination(self) -> bool:
        return bool(self.suffix)

    def keys(self, namespace: str, key: str) -> Keys:
        return Keys(namespace, key, self.suffix)

    def member(self, token: str) -> str:
        """The contender's entry in the queue and the waiters' deadlines."""
        return f"{token}/{self.limit}" if self.coordination else token

    def base(self, token: str) -> tuple[object, ...]:
        """The arguments every queue script of the space starts with."""
        if not self.coordination:
            return (token, WAITER_TTL_MS)
        return (token, WAITER_TTL_MS, self.limit, "1" if self.suffix == LEADER_SPACE else "0")

    @property
    def obtain(self) -> Script:
        return COORD_OBTAIN if self.coordination else OBTAIN

    @property
    def leave(self) -> Script:
        return COORD_LEAVE if self.coordination else LEAVE

    def obtain_args(self, token: str, ttl_ms: int) -> tuple[object, ...]:
        if not self.coordination:
            return (token, WAITER_TTL_MS, ttl_ms)
        return (*self.base(token), ttl_ms, self.value)


#: The space of locks.
LOCKS = Space()
