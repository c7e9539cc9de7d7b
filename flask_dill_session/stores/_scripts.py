"""The Redis store's Lua scripts: each step of a request is one of them, so Redis applies it
whole or not at all. Names are the scripts'; replies are documented with each."""

from __future__ import annotations

import math
from typing import Any

# Replies of OPEN: {status, server time (ms), ...}; of WRITE and STRIKE: the status alone.
LATE = -2  # past the deadline: nothing done (and the lock released if ours)
LOST = -1  # the lock is no longer ours: nothing written
BUSY = 0  # OPEN: held by another request
GONE = 0  # WRITE, STRIKE: the session was deleted meanwhile, nothing written
DONE = 1  # OPEN: locked, the blob and the strike count follow; WRITE, STRIKE: written
ABSENT = 2  # OPEN: no such session, no lock taken


def ms(seconds: float) -> int:
    """A TTL in whole milliseconds, at least 1 (``PX 0`` is an error in Redis)."""
    return max(1, math.ceil(seconds * 1000))


def count(value: Any) -> int:
    """A strike count as stored (digits), 0 if absent or malformed."""
    if value is None:  # nearly always: no strikes (and raising costs more than the rest)
        return 0
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Orphaned locks. The first try to open a session sends plain commands, no script
# (:meth:`~._lock.SessionLock.acquire`): ``SET lock token NX GET PX lease``, whatever the
# time, with a token that names its deadline and lease, ``<hex>.<deadline ms>.<lease ms>``.
# Taken after the deadline (a stalled Redis ran it once the client had given up), such a
# lock is orphaned: OPEN reads when it was taken from its TTL (now - lease + PTTL) and takes
# it over. The 1 ms margin covers a server that reads the TTL against the script's start.
# A lock taken in time is not taken over: its client checks ``TIME`` against the deadline,
# or computed the deadline with an offset learned in the last second and keeps the lock
# only if the reply came sooner than the timeout less the offset's possible error (only a
# clock step within that second could misplace it: then the holder's write is refused,
# never applied over another's). Tokens without a deadline (OPEN's own) are never
# orphaned.

# KEYS: session, lock, strikes. ARGV: token, lease (ms), deadline (ms in the server's clock;
# 0: none). The lock may already hold this token: a copy of this call the client sent before.
# A busy lock is answered before anything else is read (waiters poll), unless it was taken
# after its request had given up (orphaned, above): then it is taken over. One MGET reads
# the session and its strike count (each call from Lua costs about as much as a command): a
# key of another type reads as absent, so such a session is absent and such a strike count
# (or one that is not a number) is 0.
OPEN = (
    NOW
    + """
if ARGV[3] ~= '0' and now > tonumber(ARGV[3]) then
    return {-2, now}
end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then
    local deadline, lease = string.match(holder, '^%x+%.(%d+)%.(%d+)$')
    if not deadline or deadline == '0'
        or now - tonumber(lease) + redis.call('PTTL', KEYS[2]) <= tonumber(deadline) + 1 then
        return {0, now}
    end
end
local read = redis.call('MGET', KEYS[1], KEYS[3])
if not read[1] then
    if holder then
        redis.call('DEL', KEYS[2])
    end
    return {2, now}
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return {1, now, read[1], tonumber(read[2]) or 0}
"""
)

# KEYS: session, lock, and strikes if strikes were read (to delete them). ARGV: token, blob,
# ttl (ms), the least lease the lock must have left (ms; '0': any). Each key or argument
# costs Redis about 4% of the call: the strike count goes only where there is one.
# Releases the lock if ours, then writes unless the lock has less of its lease left than
# that (so was held too long: the client gave up, :meth:`~._lock.SessionLock.least_left`)
# or the session is gone. The lock's own TTL tells the time: no ``TIME``, no offset. One
# ``GETDEL`` reads and releases the lock (each call from Lua costs about as much as a
# command); a lock that is not ours is put back as it was.
WRITE = """
local left = redis.call('PTTL', KEYS[2])
local holder = redis.call('GETDEL', KEYS[2])
if holder ~= ARGV[1] then
    if holder and left == -1 then
        redis.call('SET', KEYS[2], holder)
    elseif holder then
        redis.call('SET', KEYS[2], holder, 'PX', math.max(left, 1))
    end
    return -1
end
if ARGV[4] ~= '0' and left < tonumber(ARGV[4]) then
    return -2
end
if redis.call('SET', KEYS[1], ARGV[2], 'XX', 'PX', ARGV[3]) then
    if KEYS[3] then
        redis.call('DEL', KEYS[3])
    end
    return 1
end
return 0
"""

# KEYS: session, lock, strikes. ARGV: token ('' = none), ttl (ms), reset ('1': strikes were
# read, delete them; '0': none).
# Refresh the expiry, reset the strikes if any were read, release the lock if ours.
TOUCH = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) == ARGV[1] then
    redis.call('DEL', KEYS[2])
end
if ARGV[3] ~= '0' then
    redis.call('DEL', KEYS[3])
end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""

# KEYS: session, lock, strikes. ARGV: token ('' = none), ttl (ms), count.
# Unless the lock is no longer ours, release it and, if the session still exists, store
# the count and move both expiries. Replies LOST, GONE or DONE.
STRIKE = """
if ARGV[1] ~= '' then
    if redis.call('GET', KEYS[2]) ~= ARGV[1] then
        return -1
    end
    redis.call('DEL', KEYS[2])
end
if redis.call('EXISTS', KEYS[1]) == 0 then
    return 0
end
redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: session, lock, strikes. ARGV: token. Delete the session and its strikes, release the
# lock if ours.
DELETE = """
redis.call('DEL', KEYS[1], KEYS[3])
if redis.call('GET', KEYS[2]) == ARGV[1] then
    redis.call('DEL', KEYS[2])
end
return 1
"""

# KEYS: session, lock, strikes, quarantine. ARGV: token ('' = none), blob as read, ttl (ms).
# Move the blob aside (dropping its strikes) only if it is still the one that was read;
# release the lock if ours.
QUARANTINE = """
local moved = 0
if redis.call('TYPE', KEYS[1]).ok == 'string' and redis.call('GET', KEYS[1]) == ARGV[2] then
    redis.call('RENAME', KEYS[1], KEYS[4])
    redis.call('PEXPIRE', KEYS[4], ARGV[3])
    redis.call('DEL', KEYS[3])
    moved = 1
end
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) == ARGV[1] then
    redis.call('DEL', KEYS[2])
end
return moved
"""

# KEYS: a session key of an earlier release (or of a fallback secret). Take the blob away:
# reply {blob, ttl in ms (-1: none)} and delete the key, or false if it holds no string.
# One request takes it; a concurrent one finds nothing, so a session logged out after its
# move cannot be brought back by a request that read it before.
TAKE = """
if redis.call('TYPE', KEYS[1]).ok ~= 'string' then
    return false
end
local blob = redis.call('GET', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1])
return {blob, ttl}
"""

# KEYS: lock. ARGV: token. Release the lock if it holds the token; 1 if it did.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""
