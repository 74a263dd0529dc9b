"""The durable SQL ledger: every request record and rating, in SQLite or PostgreSQL.

    ledger = Ledger(url, models=config.models, redis_url=...)   # redis_url None: in-memory state
    await ledger.start()          # migrate (retried while the database is down), start the writer
    ledger.offer(record)          # in-memory state only: the Redis streams feed it otherwise
    await ledger.recent(limit=20) # queries: recent / get / spend / overview
    await ledger.aclose()

See docs/ledger.md. Table layout: `tables.py`; migrations: `migrations/`; writing: `writer.py`;
reading: `queries.py`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from router.ledger import queries
from router.ledger.schema import connect, parse_url, safe_url, upgrade
from router.ledger.writer import BufferFeed, StreamFeed, Writer
from router.state.records import FeedbackRecord, RequestRecord

__all__ = ["Ledger", "LedgerUnavailable", "build_ledger", "disabled", "parse_url", "safe_url"]

OFF = {"", "none", "off", "false", "no", "disabled"}
log = logging.getLogger("moe_router.ledger")


def disabled(url: str | None) -> bool:
    return url is None or url.strip().lower() in OFF


class LedgerUnavailable(Exception):
    """The ledger database cannot answer right now (down, or not migrated yet)."""


class Ledger:
    def __init__(
        self,
        url: str,
        *,
        models: Sequence[Any] = (),
        redis_url: str | None = None,
        prefix: str = "moe:",
        batch: int = 200,
        interval_s: float = 0.5,
        claim_idle_s: float = 60.0,
        max_buffer: int = 1_000_000,
    ):
        self.url = parse_url(url)
        self.where = safe_url(self.url)  # for logs and errors: never the password
        self.models = list(models)
        self.redis_url, self.prefix = redis_url, prefix
        self.batch, self.interval_s, self.claim_idle_s = batch, interval_s, claim_idle_s
        self._buffer = BufferFeed(batch, interval_s, max_buffer) if redis_url is None else None
        self._engine: AsyncEngine | None = None
        self._migrated = False
        self.writer: Writer | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            self._engine = connect(self.url.render_as_string(hide_password=False))
        return self._engine

    async def migrate(self) -> None:
        """Bring the schema to head (a no-op when it is there already)."""
        await upgrade(self.engine)
        self._migrated = True

    async def open(self) -> Ledger:
        """For readers (export): migrate now, raising if the database cannot be reached."""
        try:
            await self.migrate()
        except Exception as e:  # noqa: BLE001 - one clear error, never the URL's password
            raise LedgerUnavailable(f"ledger database {self.where} unreachable: {type(e).__name__}") from e
        return self

    async def start(self) -> None:
        """Start writing in the background; a database that is down is waited for, not fatal."""
        if self.writer is not None:
            return
        feed = (
            self._buffer
            if self._buffer is not None
            else StreamFeed(self.redis_url, self.prefix, self.batch, self.interval_s, self.claim_idle_s)
        )
        self.writer = Writer(self.engine, feed, self.where)
        self.writer.start(self.migrate)

    def offer(self, item: RequestRecord | FeedbackRecord) -> None:
        """Queue a record or rating for writing (in-memory state); returns at once."""
        if self._buffer is not None:
            self._buffer.offer(item)

    @property
    def backlog(self) -> int:
        """Records waiting in this replica's buffer (in-memory state; 0 with Redis)."""
        return len(self._buffer.items) if self._buffer is not None else 0

    async def aclose(self, timeout_s: float = 10.0) -> None:
        if self.writer is not None:
            await self.writer.aclose(timeout_s)
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    # ---- queries (the admin API and the console call these) -------------------------------------
    async def _read(self, fn, *args, **kw):
        if not self._migrated:
            await self.open()
        try:
            async with self.engine.connect() as conn:
                return await fn(conn, *args, **kw)
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001
            raise LedgerUnavailable(f"ledger database {self.where} unreachable: {type(e).__name__}") from e

    async def recent(
        self,
        *,
        limit: int = 50,
        key: str | None = None,
        model: str | None = None,
        policy: str | None = None,
        status: str | None = None,
        since: float | None = None,
        before: float | None = None,
        prompt: str | None = None,
    ) -> list[dict]:
        """Newest first; each row the record's fields (no `learn`) plus `rating` (mean of each
        rater's latest rating, or None). `limit` is capped at 500; `prompt`: a text the kept
        prompt contains (any case)."""
        return await self._read(
            queries.recent,
            limit=limit,
            key=key,
            model=model,
            policy=policy,
            status=status,
            since=since,
            before=before,
            prompt=prompt,
        )

    async def get(self, request_id: str) -> dict | None:
        """One row as in `recent`, plus `feedback`: [{rater, rating, source, comment, created}]."""
        return await self._read(queries.get, request_id)

    async def spend(
        self, *, group_by: str, since: float | None = None, until: float | None = None
    ) -> list[dict]:
        """Rows {group, requests, errors, cost_usd, prompt_tokens, completion_tokens} per key, model
        or UTC day ("YYYY-MM-DD"); ValueError for another `group_by`."""
        return await self._read(queries.spend, group_by=group_by, since=since, until=until)

    async def overview(self, *, since: float, bucket_s: int = 60) -> dict:
        """{"buckets": [...], "totals": {...}} (see `queries.overview`); ValueError for a
        non-positive `bucket_s` or a window of more than 10,000 buckets."""
        return await self._read(
            queries.overview, self.models, since=since, bucket_s=bucket_s, now=time.time()
        )

    async def answered(self) -> AsyncIterator[tuple[RequestRecord, float | None]]:
        """Answered requests, oldest first, with their mean rating (`moe-router export`)."""
        if not self._migrated:
            await self.open()
        async with self.engine.connect() as conn:
            async for item in queries.answered(conn):
                yield item


def build_ledger(config: Any, store: Any) -> Ledger | None:
    """The ledger a gateway's config asks for (None when `ledger: none`), fed by `store`: the
    Redis streams with Redis state, the in-memory log's writes otherwise."""
    if disabled(config.ledger):
        return None
    from router.state.log import MemoryLog

    redis_url = store.url if store.kind == "redis" else None
    ledger = Ledger(
        config.ledger, models=config.models, redis_url=redis_url, prefix=getattr(store, "prefix", "moe:")
    )
    if redis_url is None and isinstance(store.log, MemoryLog):
        store.log.on_write = ledger.offer
    elif ledger.url.get_backend_name() == "sqlite":
        log.warning(
            "ledger: SQLite (%s) with Redis state: each replica writes its share of the records to its "
            "own file; give replicas one PostgreSQL database (ledger: postgresql+asyncpg://...)",
            ledger.where,
        )
    return ledger
