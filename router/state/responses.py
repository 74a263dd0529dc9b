"""Stored Responses-API responses as chains: each entry keeps only what its request added (the new
input turns) and its own response, plus a pointer to its parent (`previous_response_id`); the
conversation is assembled on read by walking the parents.

A full copy per response made storage grow with the square of a conversation's length, and let
one large response be copied by every small request that points at it (issue 24: 50 requests of
126 bytes at one 96 KB response grew Redis by 4.94 MB). Now each entry costs its own bytes.

Bytes are counted per owner (the caller's key scope): `put` refuses an entry that would take the
owner past its limit. An entry lives `ttl_s` after it was written; writing a child renews its
ancestors, so a chain lives as long as its newest response. Counting stays exact under expiry: the
owner's index (a sorted set of `id|size` by expiry time) gives back the bytes of what expired.

On Redis each operation is one script (one round trip, atomic); `ResilientResponses` makes an
outage a 503 for reads and a skipped write.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Protocol

from router.state.degrade import Outage, StateUnavailable

MAX_CHAIN = 10_000  # entries walked at most (a conversation longer than this is cut at its oldest)


@dataclass
class Entry:
    id: str
    owner: str
    parent: str | None
    size: int
    body: dict[str, Any]


@dataclass
class Stored:
    """What `put` did: `ok` False means the owner's limit refused it (`used` bytes, unchanged)."""

    ok: bool
    used: int


class StoredResponses(Protocol):
    async def put(self, entry: Entry, ttl_s: float, limit: int) -> Stored: ...
    async def chain(self, response_id: str) -> list[Entry]:
        """The entry and its ancestors, oldest first ([] if unknown). A chain whose oldest entry
        still names a parent is broken (that parent expired or was deleted)."""

    async def delete(self, response_id: str, owner: str) -> bool: ...
    async def used(self, owner: str) -> int: ...


def encode(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def entry_size(owner: str, parent: str | None, body_json: str) -> int:
    return len(body_json.encode()) + len(owner) + len(parent or "") + 64  # + the entry's bookkeeping


class MemoryResponses:
    """In process. Entries are kept in expiry order (one TTL for all: a write or a renewal moves an
    entry to the end), so pruning looks only at what expired; bytes are a running total per owner."""

    def __init__(self, max_items: int = 100_000, clock=time.monotonic):
        self._items: dict[str, tuple[float, Entry]] = {}
        self._used: dict[str, int] = {}
        self.max_items = max_items
        self._clock = clock

    def _prune(self) -> None:
        now = self._clock()
        while self._items:
            rid, (expiry, _) = next(iter(self._items.items()))
            if expiry >= now and len(self._items) <= self.max_items:
                break
            self._drop(rid)

    def _drop(self, rid: str) -> None:
        _, e = self._items.pop(rid)
        left = self._used.get(e.owner, 0) - e.size
        if left > 0:
            self._used[e.owner] = left
        else:
            self._used.pop(e.owner, None)

    def _live(self, rid: str | None) -> Entry | None:
        got = self._items.get(rid) if rid is not None else None
        return got[1] if got is not None and got[0] >= self._clock() else None

    async def put(self, entry: Entry, ttl_s: float, limit: int) -> Stored:
        self._prune()
        if entry.id in self._items:
            self._drop(entry.id)
        used = self._used.get(entry.owner, 0)
        if limit and used + entry.size > limit:
            return Stored(False, used)
        expiry = self._clock() + ttl_s
        self._items[entry.id] = (expiry, entry)
        self._used[entry.owner] = used + entry.size
        parent = self._live(entry.parent)
        for _ in range(MAX_CHAIN):  # renewed: moved to the end, as a fresh write
            if parent is None:
                break
            del self._items[parent.id]
            self._items[parent.id] = (expiry, parent)
            parent = self._live(parent.parent)
        return Stored(True, used + entry.size)

    async def chain(self, response_id: str) -> list[Entry]:
        self._prune()
        out: list[Entry] = []
        e = self._live(response_id)
        while e is not None and len(out) < MAX_CHAIN:
            out.append(e)
            e = self._live(e.parent)
        return out[::-1]

    async def delete(self, response_id: str, owner: str) -> bool:
        self._prune()
        e = self._live(response_id)
        if e is None or e.owner != owner:
            return False
        self._drop(response_id)
        return True

    async def used(self, owner: str) -> int:
        self._prune()
        return self._used.get(owner, 0)


# KEYS: the owner's index (zset of "id|size" by expiry ms) and byte counter.
_PRUNE = """
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #gone > 0 then
  local freed = 0
  for _, m in ipairs(gone) do freed = freed + tonumber(string.match(m, '|(%d+)$')) end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  redis.call('DECRBY', KEYS[2], freed)
end
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
"""

# KEYS: index, counter, entry. ARGV: id, owner, parent ('' none), size, body, ttl ms, limit (0: none),
# entry key prefix. Returns {stored 0/1, bytes used after}.
_PUT = (
    _PRUNE
    + """
local size, ttl, limit = tonumber(ARGV[4]), tonumber(ARGV[6]), tonumber(ARGV[7])
if limit > 0 and used + size > limit then return {0, used} end
local expiry = now + ttl
redis.call('HSET', KEYS[3], 'owner', ARGV[2], 'parent', ARGV[3], 'size', size, 'body', ARGV[5])
redis.call('PEXPIRE', KEYS[3], ttl)
redis.call('ZADD', KEYS[1], expiry, ARGV[1] .. '|' .. size)
redis.call('INCRBY', KEYS[2], size)
local id, n = ARGV[3], 0
while id ~= '' and n < """
    + str(MAX_CHAIN)
    + """ do
  local k = ARGV[8] .. id
  local got = redis.call('HMGET', k, 'parent', 'size')
  if not got[2] then break end
  redis.call('PEXPIRE', k, ttl)
  redis.call('ZADD', KEYS[1], 'XX', expiry, id .. '|' .. got[2])
  id, n = got[1], n + 1
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return {1, used + size}
"""
)

# ARGV: entry key prefix, id. Returns a flat list: id, owner, parent, size, body per entry, newest first.
_CHAIN = (
    """
local out, id, n = {}, ARGV[2], 0
while id ~= '' and n < """
    + str(MAX_CHAIN)
    + """ do
  local got = redis.call('HMGET', ARGV[1] .. id, 'owner', 'parent', 'size', 'body')
  if not got[1] then break end
  for _, v in ipairs({id, got[1], got[2], got[3], got[4]}) do out[#out + 1] = v end
  id, n = got[2], n + 1
end
return out
"""
)

# KEYS: index, counter, entry. ARGV: id, owner. Returns 1 if deleted.
_DELETE = (
    _PRUNE
    + """
local got = redis.call('HMGET', KEYS[3], 'owner', 'size')
if got[1] ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[3])
if redis.call('ZREM', KEYS[1], ARGV[1] .. '|' .. got[2]) == 1 then redis.call('DECRBY', KEYS[2], got[2]) end
return 1
"""
)

_USED = _PRUNE + "\nreturn used\n"


class RedisResponses:
    """Keys: `<prefix>resp:<id>` (a hash: owner, parent, size, body), `<prefix>respidx:<owner>`
    and `<prefix>respbytes:<owner>` (owner hashed: scopes are free text)."""

    def __init__(self, redis, prefix: str = "moe:"):
        self.redis = redis
        self.entries = prefix + "resp:"
        self.p = prefix
        self._put = redis.register_script(_PUT)
        self._chain = redis.register_script(_CHAIN)
        self._delete = redis.register_script(_DELETE)
        self._used = redis.register_script(_USED)

    def _owner_keys(self, owner: str) -> list[str]:
        h = hashlib.sha256(owner.encode()).hexdigest()[:24]
        return [f"{self.p}respidx:{h}", f"{self.p}respbytes:{h}"]

    async def put(self, entry: Entry, ttl_s: float, limit: int) -> Stored:
        keys = [*self._owner_keys(entry.owner), self.entries + entry.id]
        args = [
            entry.id,
            entry.owner,
            entry.parent or "",
            entry.size,
            encode(entry.body),
            max(1, int(ttl_s * 1000)),
            int(limit),
            self.entries,
        ]
        ok, used = await self._put(keys=keys, args=args)
        return Stored(bool(ok), int(used))

    async def chain(self, response_id: str) -> list[Entry]:
        flat = await self._chain(keys=[], args=[self.entries, response_id])
        out = []
        for i in range(0, len(flat), 5):
            rid, owner, parent, size, body = (
                v.decode() if isinstance(v, bytes) else v for v in flat[i : i + 5]
            )
            out.append(Entry(rid, owner, parent or None, int(size), json.loads(body)))
        return out[::-1]

    async def delete(self, response_id: str, owner: str) -> bool:
        keys = [*self._owner_keys(owner), self.entries + response_id]
        return bool(await self._delete(keys=keys, args=[response_id, owner]))

    async def used(self, owner: str) -> int:
        return int(await self._used(keys=self._owner_keys(owner), args=[]))


class ResilientResponses:
    """Stored responses through an outage: reads and deletes say so (StateUnavailable, a 503),
    writes are skipped (the response is answered, not stored: a later `previous_response_id` to
    it is a 404), and the byte count reads as 0 (nothing is refused for a count it cannot read)."""

    def __init__(self, primary: StoredResponses, outage: Outage):
        self.primary, self.outage = primary, outage

    @staticmethod
    async def _unknown():
        raise StateUnavailable("stored responses are unreachable right now; retry shortly")

    async def put(self, entry: Entry, ttl_s: float, limit: int) -> Stored:
        async def skipped() -> Stored:
            return Stored(False, 0)

        return await self.outage.call("responses.put", lambda: self.primary.put(entry, ttl_s, limit), skipped)

    async def chain(self, response_id: str) -> list[Entry]:
        return await self.outage.call(
            "responses.chain", lambda: self.primary.chain(response_id), self._unknown
        )

    async def delete(self, response_id: str, owner: str) -> bool:
        return await self.outage.call(
            "responses.delete", lambda: self.primary.delete(response_id, owner), self._unknown
        )

    async def used(self, owner: str) -> int:
        async def zero() -> int:
            return 0

        return await self.outage.call("responses.used", lambda: self.primary.used(owner), zero)
