"""Writing records to the ledger database off the request path, in batches, losing none.

Two feeds, one writer:

- `BufferFeed` (in-memory state): settlement and ratings append to a deque (no await on the
  request path); the writer takes up to `batch` items every `interval_s` (sooner when a batch is
  full) and removes them only once they are committed. The deque is capped at `max_buffer`
  items: past it, new items are refused, counted and logged (an outage that long loses them).
- `StreamFeed` (Redis state): the `ledger` and `feedback` streams the gateway already writes are
  read through one consumer group shared by every replica (`XREADGROUP`), so each entry goes to
  one replica; it is acknowledged (`XACK`) only after its batch is committed. Entries a replica
  took and never acknowledged (it died) are claimed by another after `claim_idle_s` (`XAUTOCLAIM`).
  The group is created at id 0: a stream that existed before the ledger did is imported whole.
  Like the buffer feed it batches: after a read that did not fill a batch, the next read waits
  until `interval_s` has passed (at low traffic one transaction per interval, not per request;
  measured in docs/benchmarks.md "Replicas on Redis").

Writes are idempotent upserts (requests by id, ratings by (request, rater), newest wins), so an
entry delivered twice is harmless; a batch also keeps one record per id and counts the others
(`duplicates`: the gateway appends one entry per id, so a count above zero means a stream entry
was redelivered, or something upstream applied a request twice). While the database is down the writer retries with backoff
(0.5 s doubling to 10 s) and nothing is acknowledged or removed: records wait in the deque or in
the stream. A batch the database refuses for its data (not for being down) is written row by row
and the rows it still refuses are logged and skipped, so one bad record cannot stop the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from router.ledger.rows import upsert
from router.state.records import FeedbackRecord, RequestRecord

log = logging.getLogger("moe_router.ledger")

Item = RequestRecord | FeedbackRecord
GROUP = "ledger-writers"
MAX_DELAY_S = 10.0


@dataclass
class Batch:
    by_id: dict[str, RequestRecord] = field(default_factory=dict)  # one record per id (the last)
    ratings: list[FeedbackRecord] = field(default_factory=list)
    acks: dict[str, list[bytes]] = field(default_factory=dict)  # stream -> entry ids (Redis feed)
    size: int = 0  # items taken from the feed (the buffer feed removes this many once written)
    duplicates: int = 0  # records whose id was already in the batch

    @property
    def records(self) -> list[RequestRecord]:
        return list(self.by_id.values())

    def add(self, item: Item) -> None:
        if isinstance(item, RequestRecord):
            self.duplicates += item.id in self.by_id
            self.by_id[item.id] = item
        else:
            self.ratings.append(item)


class BufferFeed:
    def __init__(self, batch: int, interval_s: float, max_buffer: int):
        self.batch, self.interval_s, self.max_buffer = batch, interval_s, max_buffer
        self.items: deque[Item] = deque()
        self.refused = 0
        self._full = asyncio.Event()

    def offer(self, item: Item) -> None:
        if len(self.items) >= self.max_buffer:
            self.refused += 1
            if self.refused == 1 or self.refused % 10_000 == 0:
                log.error("ledger buffer full (%d records): %d records lost", self.max_buffer, self.refused)
            return
        self.items.append(item)
        if len(self.items) >= self.batch:
            self._full.set()

    async def take(self, closing: bool) -> Batch:
        if len(self.items) < self.batch and not closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self.interval_s)
        self._full.clear()
        b = Batch()
        for i, item in enumerate(self.items):
            if i == self.batch:
                break
            b.add(item)
            b.size += 1
        return b

    async def done(self, b: Batch) -> None:
        for _ in range(b.size):
            self.items.popleft()

    async def aclose(self) -> None:
        pass


class StreamFeed:
    def __init__(self, redis_url: str, prefix: str, batch: int, interval_s: float, claim_idle_s: float):
        import redis.asyncio as aioredis

        self.redis = aioredis.from_url(redis_url, socket_timeout=interval_s + 10, socket_connect_timeout=5)
        self.streams = {f"{prefix}ledger": "ledger", f"{prefix}feedback": "feedback"}
        self.batch, self.interval_s, self.claim_idle_s = batch, interval_s, claim_idle_s
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._grouped = False
        self._next_claim = 0.0
        self._next_read = 0.0  # after a partial batch: gather until then
        self.trimmed = 0  # entries the stream cap removed before they were written

    async def _groups(self) -> None:
        from redis.exceptions import ResponseError

        for stream in self.streams:
            try:
                await self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise
        self._grouped = True

    async def take(self, closing: bool) -> Batch:
        if closing:
            return Batch()
        if not self._grouped:
            await self._groups()
        b = Batch()
        wait = self._next_read - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        if time.monotonic() >= self._next_claim:
            self._next_claim = time.monotonic() + self.claim_idle_s / 2
            for stream in self.streams:
                await self._claim(stream, b)
            if b.size:
                return b
        got = await self.redis.xreadgroup(
            GROUP,
            self.consumer,
            {s: ">" for s in self.streams},
            count=self.batch,
            block=int(self.interval_s * 1000),
        )
        for stream, entries in got or []:
            self._parse(stream.decode() if isinstance(stream, bytes) else stream, entries, b)
        self._next_read = time.monotonic() + self.interval_s if 0 < b.size < self.batch else 0.0
        return b

    async def _claim(self, stream: str, b: Batch) -> None:
        """Take over entries another consumer read and never acknowledged (it stopped)."""
        ms = int(self.claim_idle_s * 1000)
        res = await self.redis.xautoclaim(stream, GROUP, self.consumer, ms, start_id="0-0", count=self.batch)
        entries = res[1]
        deleted = res[2] if len(res) > 2 else []
        if deleted:
            self.trimmed += len(deleted)
            log.error(
                "%d ledger entries were trimmed from %s (log.max_entries) before reaching the database",
                len(deleted),
                stream,
            )
        if entries:
            log.warning("claimed %d unacknowledged ledger entries of %s", len(entries), stream)
        self._parse(stream, entries, b)

    def _parse(self, stream: str, entries, b: Batch) -> None:
        kind = self.streams[stream]
        for entry_id, fields in entries:
            b.acks.setdefault(stream, []).append(entry_id)
            b.size += 1
            if not fields:  # Redis 6.2 reports a trimmed claimed entry with no fields
                self.trimmed += 1
                continue
            try:
                if kind == "feedback":
                    b.ratings.append(FeedbackRecord.from_dict(json.loads(fields[b"data"])))
                elif fields.get(b"kind") == b"request":
                    b.add(RequestRecord.from_dict(json.loads(fields[b"data"])))
            except (KeyError, ValueError, TypeError) as e:
                log.error("skipping unreadable ledger entry %s of %s: %s", entry_id, stream, e)

    async def done(self, b: Batch) -> None:
        for stream, ids in b.acks.items():
            await self.redis.xack(stream, GROUP, *ids)

    async def aclose(self) -> None:
        await self.redis.aclose()


def _refused(e: BaseException) -> bool:
    """The database answered and refused the data (as opposed to being unreachable)."""
    return isinstance(e, sa_exc.DataError | sa_exc.IntegrityError) or (
        isinstance(e, sa_exc.StatementError) and not isinstance(e, sa_exc.DBAPIError)
    )


class Writer:
    def __init__(self, engine: AsyncEngine, feed: BufferFeed | StreamFeed, where: str):
        self.engine, self.feed, self.where = engine, feed, where
        self.written = 0
        self.skipped = 0
        self.duplicates = 0  # records seen twice in one batch (written once)
        self._closing = False
        self._down_since: float | None = None
        self._task: asyncio.Task | None = None

    def start(self, ready) -> None:
        """`ready`: awaited (retried until it succeeds) before the first write: the migration."""
        self._task = asyncio.create_task(self._run(ready))

    async def _run(self, ready) -> None:
        await self._retry("migrating", ready)
        while True:
            closing = self._closing
            try:
                b = await self.feed.take(closing)
            except Exception as e:  # noqa: BLE001 - Redis unreachable: the stream keeps the records
                log.warning("reading the ledger stream failed (%s); retrying", type(e).__name__)
                await asyncio.sleep(1.0)
                continue
            if b.size:
                if b.duplicates:
                    self.duplicates += b.duplicates
                    log.warning(
                        "ledger: %d request records arrived twice in one batch; written once", b.duplicates
                    )
                await self._retry("writing", lambda b=b: self._write(b))
                try:
                    await self.feed.done(b)
                except Exception as e:  # noqa: BLE001 - unacknowledged entries are redelivered: harmless
                    log.warning("acknowledging ledger entries failed (%s)", type(e).__name__)
            elif closing:
                return

    async def _retry(self, what: str, work) -> None:
        delay = 0.5
        while True:
            try:
                await work()
            except Exception as e:  # noqa: BLE001 - the database is down: wait, never drop
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    log.warning(
                        "ledger database %s unreachable while %s (%s: %s); records wait",
                        self.where,
                        what,
                        type(e).__name__,
                        str(e).splitlines()[0][:200] if str(e) else "",
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_DELAY_S)
                continue
            if self._down_since is not None:
                log.warning(
                    "ledger database %s reachable again after %.0f s",
                    self.where,
                    time.monotonic() - self._down_since,
                )
                self._down_since = None
            return

    async def _write(self, b: Batch) -> None:
        try:
            async with self.engine.begin() as conn:
                await upsert(conn, b.records, b.ratings)
        except Exception as e:
            if not _refused(e):
                raise
            await self._one_by_one(b)
        self.written += len(b.records) + len(b.ratings)

    async def _one_by_one(self, b: Batch) -> None:
        items: list[Item] = [*b.records, *b.ratings]
        for item in items:
            try:
                async with self.engine.begin() as conn:
                    if isinstance(item, RequestRecord):
                        await upsert(conn, [item], [])
                    else:
                        await upsert(conn, [], [item])
            except Exception as e:
                if not _refused(e):
                    raise
                self.skipped += 1
                what = item.id if isinstance(item, RequestRecord) else f"rating of {item.request_id}"
                log.error("the ledger database refused %s (%s); skipped", what, type(e).__name__)

    async def aclose(self, timeout_s: float) -> None:
        """Write what is waiting (up to `timeout_s`), then stop. With Redis, entries not yet read
        stay in the stream for the other replicas (or the next start)."""
        if self._task is None:
            return
        self._closing = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except TimeoutError:
            self._task.cancel()
            left = len(self.feed.items) if isinstance(self.feed, BufferFeed) else 0
            if left:
                log.error("ledger: %d records not written at shutdown (database unreachable)", left)
            else:
                log.warning("ledger writer stopped before its batch was written; it will be redelivered")
        except Exception:  # noqa: BLE001
            log.exception("ledger writer failed")
        await self.feed.aclose()
