"""The spend ledger, the request index (for feedback joins) and feedback.

Redis: every event is appended to the `moe:ledger` stream (`kind` = reserve | request), every
feedback to `moe:feedback`; request records are also kept by id for `request_ttl_s` (config
`log.request_ttl_s`) so feedback can find them. Streams are capped (approximately) at
`max_entries` (`log.max_entries`). A request record is appended once per id: only when its index
key is new (a settlement replayed after a lost answer, or flushed after an outage, finds it there).

Ratings: one per (request, rater). `rate` stores a rating and returns the one it replaced, in one
atomic step (`SET ... GET` on Redis), so concurrent ratings on different replicas each replace
exactly the previous one: what learns from them can take the old rating back out.
"""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from router.state.records import FeedbackRecord, RequestRecord

REQUEST_TTL_S = 7 * 86400


class RequestLog(Protocol):
    async def record_request(self, record: RequestRecord) -> None: ...
    async def record_event(self, kind: str, data: dict[str, Any]) -> None: ...
    async def get_request(self, request_id: str) -> RequestRecord | None: ...
    async def record_feedback(self, feedback: FeedbackRecord) -> None: ...
    async def rate(self, feedback: FeedbackRecord) -> FeedbackRecord | None:
        """Record `feedback` as its rater's rating of the request; the rating it replaced, if any."""

    def iter_requests(self) -> AsyncIterator[RequestRecord]: ...
    def iter_feedback(self) -> AsyncIterator[FeedbackRecord]: ...
    def iter_events(self) -> AsyncIterator[dict[str, Any]]: ...


class MemoryLog:
    """`on_write`, when set, is handed every request record and rating as it is stored (the SQL
    ledger's feed with in-memory state; with Redis the ledger reads the streams instead)."""

    def __init__(self, max_entries: int = 100_000):
        self.on_write: Callable[[RequestRecord | FeedbackRecord], None] | None = None
        self._requests: OrderedDict[str, RequestRecord] = OrderedDict()
        self._ratings: OrderedDict[tuple[str, str], FeedbackRecord] = OrderedDict()
        self._events: deque[dict[str, Any]] = deque(maxlen=max_entries)
        self._feedback: deque[FeedbackRecord] = deque(maxlen=max_entries)
        self.max_entries = max_entries

    async def record_request(self, record: RequestRecord) -> None:
        self._requests[record.id] = record
        self._events.append({"kind": "request", **record.to_dict()})
        if self.on_write is not None:
            self.on_write(record)
        while len(self._requests) > self.max_entries:
            self._requests.popitem(last=False)

    async def record_event(self, kind: str, data: dict[str, Any]) -> None:
        self._events.append({"kind": kind, **data})

    async def get_request(self, request_id: str) -> RequestRecord | None:
        return self._requests.get(request_id)

    async def record_feedback(self, feedback: FeedbackRecord) -> None:
        self._feedback.append(feedback)
        if self.on_write is not None:
            self.on_write(feedback)

    async def rate(self, feedback: FeedbackRecord) -> FeedbackRecord | None:
        key = (feedback.request_id, feedback.rater)
        previous = self._ratings.pop(key, None)
        self._ratings[key] = feedback
        while len(self._ratings) > self.max_entries:
            self._ratings.popitem(last=False)
        self._feedback.append(feedback)
        if self.on_write is not None:
            self.on_write(feedback)
        return previous

    async def iter_requests(self) -> AsyncIterator[RequestRecord]:
        for r in list(self._requests.values()):
            yield r

    async def iter_feedback(self) -> AsyncIterator[FeedbackRecord]:
        for f in list(self._feedback):
            yield f

    async def iter_events(self) -> AsyncIterator[dict[str, Any]]:
        for e in list(self._events):
            yield e


# KEYS: the ledger stream, the record's index key. ARGV: max length, the record's JSON, TTL.
_RECORD = """
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'EX', ARGV[3]) then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'kind', 'request', 'data', ARGV[2])
  return 1
end
return 0
"""


class RedisLog:
    def __init__(
        self, redis, prefix: str = "moe:", max_entries: int = 1_000_000, request_ttl_s: int = REQUEST_TTL_S
    ):
        self.redis = redis
        self.p = prefix
        self.max_entries = max_entries
        self.request_ttl_s = request_ttl_s
        self._record = redis.register_script(_RECORD)

    @property
    def stream_key(self) -> str:
        """Key layout: the ledger stream (reserve and request events)."""
        return f"{self.p}ledger"

    def record_key(self, request_id: str) -> str:
        """Key layout: a request's record by id (for feedback; also its once-only marker)."""
        return f"{self.p}req:{request_id}"

    async def record_request(self, record: RequestRecord) -> None:
        data = json.dumps(record.to_dict())
        keys = [self.stream_key, self.record_key(record.id)]
        await self._record(keys=keys, args=[self.max_entries, data, self.request_ttl_s])

    async def record_event(self, kind: str, data: dict[str, Any]) -> None:
        await self.redis.xadd(
            self.stream_key,
            {"kind": kind, "data": json.dumps(data)},
            maxlen=self.max_entries,
            approximate=True,
        )

    async def get_request(self, request_id: str) -> RequestRecord | None:
        raw = await self.redis.get(self.record_key(request_id))
        return RequestRecord.from_dict(json.loads(raw)) if raw else None

    async def record_feedback(self, feedback: FeedbackRecord) -> None:
        await self.redis.xadd(
            f"{self.p}feedback",
            {"data": json.dumps(feedback.to_dict())},
            maxlen=self.max_entries,
            approximate=True,
        )

    async def rate(self, feedback: FeedbackRecord) -> FeedbackRecord | None:
        data = json.dumps(feedback.to_dict())
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(
                f"{self.p}rating:{feedback.request_id}:{feedback.rater}",
                data,
                ex=self.request_ttl_s,
                get=True,
            )
            pipe.xadd(f"{self.p}feedback", {"data": data}, maxlen=self.max_entries, approximate=True)
            previous, _ = await pipe.execute()
        return FeedbackRecord.from_dict(json.loads(previous)) if previous else None

    async def _stream(self, name: str) -> AsyncIterator[dict[bytes, bytes]]:
        start = "-"
        while True:
            page = await self.redis.xrange(f"{self.p}{name}", min=start, count=1000)
            for _, fields in page:
                yield fields
            if len(page) < 1000:
                return
            start = "(" + page[-1][0].decode()

    async def iter_requests(self) -> AsyncIterator[RequestRecord]:
        async for f in self._stream("ledger"):
            if f[b"kind"] == b"request":
                yield RequestRecord.from_dict(json.loads(f[b"data"]))

    async def iter_feedback(self) -> AsyncIterator[FeedbackRecord]:
        async for f in self._stream("feedback"):
            yield FeedbackRecord.from_dict(json.loads(f[b"data"]))

    async def iter_events(self) -> AsyncIterator[dict[str, Any]]:
        async for f in self._stream("ledger"):
            yield {"kind": f[b"kind"].decode(), **json.loads(f[b"data"])}
